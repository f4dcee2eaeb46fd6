"""Fetch a dataset zip (dogImages by default) and unpack it into the train/valid/test layout.

The zip is streamed to a temp file next to its final place and renamed only once it is complete
(and its checksum matches), then unpacked into a staging folder and moved into place in one rename.
So an interrupted run never leaves something that a later run mistakes for a finished dataset.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from .archives import safe_extract_zip
from .errors import UserError

log = logging.getLogger(__name__)

DOG_IMAGES_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
# The published checksum of dogImages.zip is not known here, so it is not verified by default;
# pass --sha256 HEX (or sha256=...) to have the download checked.
DOG_IMAGES_SHA256: str | None = None

SPLITS = ("train", "valid", "test")
DEFAULT_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20
PLAIN_PROGRESS_STEP_PERCENT = 20      # without a TTY: a log line at 20%, 40%, ... 100%
UNKNOWN_SIZE_LOG_EVERY_BYTES = 100 << 20  # without Content-Length: a line every 100 MiB


def is_complete_dataset(folder: Path) -> bool:
    return all((folder / split).is_dir() for split in SPLITS)


def _missing_splits(folder: Path) -> list[str]:
    return [split for split in SPLITS if not (folder / split).is_dir()]


def _archive_name(url: str) -> str:
    """Local file name of the zip: the URL's last path part, always ending in .zip."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "dataset"
    return name if name.lower().endswith(".zip") and len(name) > 4 else name + ".zip"


def _dataset_name(url: str) -> str:
    """The folder name the archive is expected to unpack to: dogImages.zip -> dogImages."""
    return _archive_name(url)[: -len(".zip")]


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise UserError(f"--sha256 must be 64 hexadecimal characters, got {sha256!r}")
    return digest


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


class _Progress:
    """A tqdm bar for people at a terminal; a few plain log lines for CloudWatch and CI logs."""

    def __init__(self, total: int | None, label: str, enabled: bool):
        self.total = total
        self.label = label
        self.done = 0
        self._bar = None
        self._plain = False
        self._next_log = 0
        if not enabled:
            return
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)
        else:
            self._plain = True
            self._next_log = PLAIN_PROGRESS_STEP_PERCENT if total else UNKNOWN_SIZE_LOG_EVERY_BYTES

    def update(self, nbytes: int) -> None:
        self.done += nbytes
        if self._bar is not None:
            self._bar.update(nbytes)
        elif self._plain and self.total:
            percent = 100 * self.done // self.total
            if percent >= self._next_log:
                log.info("%s: %d%% (%.1f of %.1f MiB)", self.label, percent, self.done / 2**20, self.total / 2**20)
                while self._next_log <= percent:
                    self._next_log += PLAIN_PROGRESS_STEP_PERCENT
        elif self._plain and self.done >= self._next_log:
            log.info("%s: %.1f MiB", self.label, self.done / 2**20)
            self._next_log += UNKNOWN_SIZE_LOG_EVERY_BYTES

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _fetch(url: str, target: Path, expected_sha256: str | None, timeout: float, progress: bool) -> None:
    """Stream `url` to `target` via a temp file in the same folder; rename only when complete and verified."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise UserError(f"download of {url}: only http and https URLs are fetched")
    request = urllib.request.Request(url, headers={"User-Agent": "imgcls-download/1"})  # noqa: S310 - scheme checked above
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        hasher = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked above
            except urllib.error.HTTPError as e:
                e.close()
                raise UserError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
            except urllib.error.URLError as e:
                raise UserError(f"download of {url} failed: {e.reason}") from None
            except (TimeoutError, OSError) as e:
                raise UserError(f"download of {url} failed: {e}") from None
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                log.info("downloading %s (%s) to %s", url,
                         f"{total / 2**20:.1f} MiB" if total is not None else "size unknown", target)
                bar = _Progress(total, target.name, progress)
                try:
                    while chunk := response.read(CHUNK_BYTES):
                        out.write(chunk)
                        hasher.update(chunk)
                        bar.update(len(chunk))
                except (TimeoutError, OSError) as e:
                    raise UserError(f"download of {url} failed after {bar.done} bytes: {e}") from None
                finally:
                    bar.close()
            if total is not None and bar.done != total:
                raise UserError(f"download of {url} is incomplete: got {bar.done} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        actual = hasher.hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise UserError(f"checksum mismatch for {url}: expected sha256 {expected_sha256}, got {actual}")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _find_unpacked_root(staging: Path) -> Path:
    """The folder holding train/valid/test: the archive's top level or its single top folder."""
    if is_complete_dataset(staging):
        return staging
    # Zips made on macOS carry a __MACOSX/ folder of resource forks; never a dataset.
    candidates = [p for p in sorted(staging.iterdir())
                  if p.is_dir() and not p.name.startswith((".", "__MACOSX")) and is_complete_dataset(p)]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        names = ", ".join(p.name for p in candidates)
        raise UserError(f"archive holds several datasets ({names}); expected one folder with {'/'.join(SPLITS)}")
    top = ", ".join(sorted(p.name for p in staging.iterdir())) or "nothing"
    raise UserError(f"archive has no folder with {', '.join(s + '/' for s in SPLITS)} (top level: {top})")


def _unpack(archive: Path, dest: Path, default_name: str) -> Path:
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".unpack-"))
    try:
        try:
            safe_extract_zip(archive, staging)
        except zipfile.BadZipFile as e:
            raise UserError(f"{archive} is a damaged zip archive: {e}") from None
        unpacked = _find_unpacked_root(staging)
        final = dest / (default_name if unpacked == staging else unpacked.name)
        if final.exists():
            raise UserError(f"{final} already exists but is not a complete dataset "
                            f"(missing {', '.join(_missing_splits(final))}); delete it or choose another --dest")
        # One rename: the dataset folder appears complete or not at all.
        os.replace(unpacked, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_dataset(url: str, dest: str | Path, sha256: str | None = None, progress: bool = True, *,
                     timeout: float = DEFAULT_TIMEOUT_S, keep_archive: bool = False) -> Path:
    """Download the zip at `url` into `dest`, check it, unpack it; return the dataset root (holds train/valid/test).

    Nothing is downloaded when `dest` or `dest/<archive name without .zip>` already is a complete dataset.
    A finished zip left in `dest` by an earlier run (for example one whose unpacking ran out of disk) is
    reused rather than downloaded again. The zip is deleted after unpacking unless `keep_archive`.
    Raises UserError on HTTP and network errors, a checksum mismatch, or an archive that is not a safe zip.
    """
    expected = _normalise_sha256(sha256)
    dest = Path(dest).expanduser().resolve()
    name = _dataset_name(url)
    for existing in (dest / name, dest):
        if is_complete_dataset(existing):
            log.info("dataset already present at %s; not downloading", existing)
            return existing
    if (dest / name).exists():
        raise UserError(f"{dest / name} already exists but is not a complete dataset "
                        f"(missing {', '.join(_missing_splits(dest / name))}); delete it or choose another --dest")
    dest.mkdir(parents=True, exist_ok=True)

    archive = dest / _archive_name(url)
    if archive.is_file():
        log.info("reusing %s from an earlier download", archive)
        if expected is not None:
            actual = _file_sha256(archive)
            if actual != expected:
                archive.unlink()
                raise UserError(f"checksum mismatch for {archive}: expected sha256 {expected}, got {actual} "
                                "(file removed; run again to download it afresh)")
        downloaded_now = False
    else:
        _fetch(url, archive, expected, timeout, progress)
        downloaded_now = True

    try:
        if not zipfile.is_zipfile(archive):
            raise UserError(f"{archive.name} from {url} is not a zip archive"
                            + ("" if downloaded_now else f" (delete {archive} to download afresh)"))
        root = _unpack(archive, dest, name)
    except UserError:
        # A body that is no zip (an HTML error page served with 200, say) must not be reused next time.
        if downloaded_now:
            archive.unlink(missing_ok=True)
        raise
    if not keep_archive:
        archive.unlink(missing_ok=True)
    log.info("dataset ready at %s", root)
    return root


# --- command line: `imgcls download-data` -------------------------------------------------------

def add_download_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--dest", required=True, type=Path,
                        help="folder to download into; the dataset lands in DEST/<name>, e.g. DEST/dogImages")
    parser.add_argument("--url", default=DOG_IMAGES_URL, help="zip archive to fetch (default: the dogImages dataset)")
    parser.add_argument("--sha256", default=DOG_IMAGES_SHA256, metavar="HEX",
                        help="expected SHA-256 of the zip; the download is rejected when it differs")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds to wait for the server on connect and on each read")
    parser.add_argument("--keep-archive", action="store_true", help="keep the zip after unpacking it")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar or lines")
    return parser


def run_download(args: argparse.Namespace) -> int:
    """Run `download-data` from parsed arguments; prints the dataset root on stdout. UserError propagates."""
    root = download_dataset(args.url, args.dest, args.sha256, progress=args.progress,
                            timeout=args.timeout, keep_archive=args.keep_archive)
    print(root)
    return 0


def main_download(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m imgcls.download --dest DIR`."""
    parser = add_download_arguments(argparse.ArgumentParser(prog="imgcls download-data",
                                                            description="Download and unpack a dataset zip."))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_download(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main_download())
