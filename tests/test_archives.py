"""Safe tar extraction on every Python the project meets (the image's Debian 3.11.2 has no extraction filter)."""
from __future__ import annotations

import sys
import tarfile

import pytest

import image_checks
from conftest import run_imgcls
from imgcls.archives import safe_extract_tar
from imgcls.errors import UserError


@pytest.fixture(params=["with data_filter", "python 3.11.2"])
def python_flavour(request, monkeypatch):
    """The dev env's tarfile as it is, and as Debian's 3.11.2 has it: no data_filter, no filter= argument."""
    if request.param == "python 3.11.2":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        original = tarfile.TarFile.extractall

        def extractall_3_11_2(self, path=".", members=None, *, numeric_owner=False, **unexpected):
            if unexpected:
                raise TypeError(f"TarFile.extractall() got an unexpected keyword argument {next(iter(unexpected))!r}")
            return original(self, path, members, numeric_owner=numeric_owner)

        monkeypatch.setattr(tarfile.TarFile, "extractall", extractall_3_11_2)
    return request.param


@pytest.mark.parametrize("check", image_checks.CHECKS, ids=lambda c: c.__name__)
def test_image_checks(python_flavour, check, tmp_path):
    check(tmp_path)


def test_size_limit_refuses_a_tar_bomb_before_writing(python_flavour, tmp_path):
    archive = image_checks.model_archive(tmp_path / "packed")
    with pytest.raises(UserError, match="GiB once extracted"):
        safe_extract_tar(archive, tmp_path / "out", max_bytes=1000)
    assert not list((tmp_path / "out").iterdir())


def test_not_a_tar_is_a_clear_error(tmp_path):
    bogus = tmp_path / "model.tar.gz"
    bogus.write_bytes(b"PK\x03\x04 a zip, not a tar")
    with pytest.raises(UserError, match="not a readable tar archive"):
        safe_extract_tar(bogus, tmp_path / "out")


def test_serve_refuses_a_hostile_model_archive_with_one_line(tmp_path):
    archive = image_checks.hostile_archive(tmp_path / "model.tar.gz", "symlink_absolute")
    # refused before anything listens, so the port does not matter
    proc = run_imgcls("serve", "--model-dir", archive, "--port", "18089", check=False, timeout=120)
    assert proc.returncode == 1
    assert "serve failed: archive member 'evil' is a symbolic link to an absolute path" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_the_script_runs_without_pytest(tmp_path):
    import subprocess
    proc = subprocess.run([sys.executable, image_checks.__file__], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and f"image checks: {len(image_checks.CHECKS)} passed" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="this Python has no extraction filter")
def test_a_refusal_by_pythons_filter_is_our_one_line_error(monkeypatch, tmp_path):
    """Should the filter refuse what our checks let through, the user still gets one line, not a traceback."""
    import imgcls.archives as archives
    monkeypatch.setattr(archives._ArchiveTree, "check", lambda self, member: None)
    monkeypatch.setattr(archives, "_inside", lambda root, name: root)
    archive = image_checks.hostile_archive(tmp_path / "model.tar.gz", "symlink_out")
    with pytest.raises(UserError, match=r"could not be extracted \('evil' would link to") as refused:
        safe_extract_tar(archive, tmp_path / "out")
    assert "\n" not in str(refused.value)


def test_a_huge_member_name_is_shown_bounded(tmp_path):
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("x" * 5000)
        info.type = tarfile.FIFOTYPE
        tf.addfile(info)
    with pytest.raises(UserError, match="is a device, fifo") as refused:
        safe_extract_tar(path, tmp_path / "out")
    assert len(str(refused.value)) < 300
