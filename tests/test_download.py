"""imgcls.download against a real HTTP server on 127.0.0.1 serving generated zips."""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import shutil
import sys
import threading
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from imgcls.download import add_download_arguments, download_dataset, run_download
from imgcls.errors import UserError
from imgcls.sample_data import make_sample_dataset


class _Server:
    """Serves `routes` (path -> body bytes) and counts requests per path; anything else is a 404."""

    def __init__(self):
        self.routes: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] += 1
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, path: str, body: bytes) -> str:
        self.routes[path] = body
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def http_server():
    server = _Server()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _fresh_routes(http_server):
    http_server.routes.clear()
    http_server.hits.clear()


@pytest.fixture(scope="module")
def dataset_files(tmp_path_factory) -> dict[str, bytes]:
    """Relative path -> bytes of a tiny dataset in the dogImages layout."""
    root = make_sample_dataset(tmp_path_factory.mktemp("src") / "dogImages", num_classes=2,
                               per_class=(3, 2, 2), image_size=32)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def dog_zip(dataset_files) -> bytes:
    # Like the real dogImages.zip: everything under one top folder.
    return make_zip({f"dogImages/{name}": data for name, data in dataset_files.items()})


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_checks_sha256_and_unpacks_dataset(http_server, dog_zip, dataset_files, tmp_path):
    url = http_server.serve("/data/dogImages.zip", dog_zip)
    dest = tmp_path / "dest"

    root = download_dataset(url, dest, sha256=sha256_of(dog_zip).upper(), progress=False)

    assert root == dest.resolve() / "dogImages"
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "valid"]
    assert sorted(p.name for p in (root / "train").iterdir()) == ["001.Red_circle", "002.Blue_square"]
    unpacked = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert unpacked == dataset_files
    # No temp file, staging folder or zip is left next to the dataset.
    assert listing(dest) == ["dogImages"]


def test_dataset_at_top_level_of_zip_is_named_after_the_archive(http_server, dataset_files, tmp_path):
    url = http_server.serve("/flat.zip", make_zip(dataset_files))
    root = download_dataset(url, tmp_path, progress=False)
    assert root == tmp_path.resolve() / "flat"
    assert {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} == set(dataset_files)


def test_checksum_mismatch_names_both_hashes_and_leaves_nothing(http_server, dog_zip, tmp_path):
    url = http_server.serve("/dogImages.zip", dog_zip)
    wrong = "0" * 64
    with pytest.raises(UserError) as err:
        download_dataset(url, tmp_path / "dest", sha256=wrong, progress=False)
    message = str(err.value)
    assert "checksum mismatch" in message and wrong in message and sha256_of(dog_zip) in message
    assert "\n" not in message
    assert listing(tmp_path / "dest") == []


def test_http_404_is_a_user_error(http_server, tmp_path):
    url = http_server.base + "/missing/dogImages.zip"
    with pytest.raises(UserError, match=r"HTTP 404") as err:
        download_dataset(url, tmp_path / "dest", progress=False)
    assert url in str(err.value)
    assert listing(tmp_path / "dest") == []


def test_unreachable_server_is_a_user_error(tmp_path):
    # Port 9 (discard) on loopback: nothing listens there in the test environment.
    with pytest.raises(UserError, match=r"download of http://127\.0\.0\.1:9/x\.zip failed"):
        download_dataset("http://127.0.0.1:9/x.zip", tmp_path, progress=False, timeout=5)


def test_path_traversal_member_is_rejected(http_server, dataset_files, tmp_path):
    members = {f"dogImages/{name}": data for name, data in dataset_files.items()}
    members["../evil"] = b"owned"
    url = http_server.serve("/dogImages.zip", make_zip(members))
    dest = tmp_path / "a" / "dest"

    with pytest.raises(UserError, match=r"outside"):
        download_dataset(url, dest, progress=False)

    assert not any(p.name == "evil" for p in tmp_path.rglob("*"))
    assert listing(dest) == []  # neither the rejected zip nor a half-unpacked folder stays


def test_body_that_is_not_a_zip_is_rejected_and_removed(http_server, tmp_path):
    url = http_server.serve("/dogImages.zip", b"<html>Access denied</html>")
    with pytest.raises(UserError, match=r"is not a zip archive"):
        download_dataset(url, tmp_path, progress=False)
    assert listing(tmp_path) == []


def test_zip_without_splits_is_rejected(http_server, tmp_path):
    url = http_server.serve("/dogImages.zip", make_zip({"dogImages/train/a/x.jpg": b"x", "README": b"hi"}))
    with pytest.raises(UserError, match=r"no folder with train/, valid/, test/"):
        download_dataset(url, tmp_path, progress=False)
    assert listing(tmp_path) == []


def test_complete_dataset_is_not_downloaded_again(http_server, dog_zip, tmp_path):
    url = http_server.serve("/dogImages.zip", dog_zip)
    first = download_dataset(url, tmp_path, progress=False)
    marker = first / "train" / "kept.txt"
    marker.write_text("not overwritten")

    second = download_dataset(url, tmp_path, sha256=sha256_of(dog_zip), progress=False)

    assert second == first
    assert http_server.hits["/dogImages.zip"] == 1
    assert marker.read_text() == "not overwritten"


def test_dest_that_already_is_a_dataset_is_used_as_is(http_server, tmp_path):
    make_sample_dataset(tmp_path, num_classes=1, per_class=(1, 1, 1), image_size=16)
    root = download_dataset(http_server.base + "/dogImages.zip", tmp_path, progress=False)
    assert root == tmp_path.resolve()
    assert sum(http_server.hits.values()) == 0


def test_incomplete_dataset_folder_is_reported_before_downloading(http_server, dog_zip, tmp_path):
    url = http_server.serve("/dogImages.zip", dog_zip)
    (tmp_path / "dogImages" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match=r"dogImages already exists but is not a complete dataset \(missing valid, test\)"):
        download_dataset(url, tmp_path, progress=False)
    assert sum(http_server.hits.values()) == 0


def test_kept_archive_is_reused_instead_of_downloaded(http_server, dog_zip, tmp_path):
    url = http_server.serve("/dogImages.zip", dog_zip)
    root = download_dataset(url, tmp_path, progress=False, keep_archive=True)
    assert (tmp_path / "dogImages.zip").read_bytes() == dog_zip

    # Lose the unpacked folder (say unpacking failed); the server now refuses: the zip on disk suffices.
    shutil.rmtree(root)
    http_server.routes.clear()
    again = download_dataset(url, tmp_path, sha256=sha256_of(dog_zip), progress=False)

    assert again == root and (again / "valid").is_dir()
    assert http_server.hits["/dogImages.zip"] == 1
    assert listing(tmp_path) == ["dogImages"]  # reused zip removed after unpacking (keep_archive=False)


def test_progress_without_tty_logs_a_few_percent_lines(http_server, dog_zip, tmp_path, caplog):
    url = http_server.serve("/dogImages.zip", dog_zip)
    # The zip is smaller than one read chunk, so a single 100% line is expected; never a flood.
    with caplog.at_level(logging.INFO, logger="imgcls.download"):
        download_dataset(url, tmp_path, progress=True)
    percent_lines = [r.getMessage() for r in caplog.records if "%" in r.getMessage()]
    assert percent_lines and len(percent_lines) <= 5
    assert "100%" in percent_lines[-1]


def test_progress_at_a_terminal_draws_a_tqdm_bar(http_server, dog_zip, tmp_path, monkeypatch):
    class FakeTerminal(io.StringIO):
        def isatty(self):
            return True

    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    download_dataset(http_server.serve("/dogImages.zip", dog_zip), tmp_path, progress=True)
    drawn = terminal.getvalue()
    assert "dogImages.zip" in drawn and "100%" in drawn and "|" in drawn


def test_bad_sha256_argument_is_rejected_early(http_server, tmp_path):
    with pytest.raises(UserError, match=r"--sha256 must be 64 hexadecimal characters"):
        download_dataset(http_server.base + "/dogImages.zip", tmp_path, sha256="abc", progress=False)
    assert sum(http_server.hits.values()) == 0


def test_cli_arguments_drive_the_download(http_server, dog_zip, tmp_path, capsys):
    url = http_server.serve("/dogImages.zip", dog_zip)
    parser = add_download_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--dest", str(tmp_path), "--url", url, "--sha256", sha256_of(dog_zip), "--no-progress"])

    assert run_download(args) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path.resolve() / "dogImages")
    defaults = parser.parse_args(["--dest", "x"])
    assert defaults.url.endswith("/dogImages.zip") and defaults.sha256 is None and defaults.progress
