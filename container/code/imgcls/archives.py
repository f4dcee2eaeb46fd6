"""Safe archive extraction: no path traversal, no links out of the target, no device files."""
from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

from .errors import UserError


def _inside(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UserError(f"archive member {name!r} would be written outside {root}")
    return target


def safe_extract_tar(archive: str | Path, dest: str | Path) -> Path:
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            _inside(dest, member.name)
        # The "data" filter also rejects absolute links, links out of dest and special files.
        tf.extractall(dest, filter="data")
    return dest


def safe_extract_zip(archive: str | Path, dest: str | Path) -> Path:
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _inside(dest, info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UserError(f"archive member {info.filename!r} is a symbolic link")
        zf.extractall(dest)
    return dest
