"""Safe archive extraction: no path traversal, no links out of the target, no device files, no tar bombs.

Python's own "data" extraction filter arrived in 3.11.4; the image's Debian Python is 3.11.2,
whose `extractall` has no `filter=` at all. So every member is checked here first, on any
Python, and the filter is added where it exists.
"""
from __future__ import annotations

import copy
import os
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from .errors import UserError
from .metrics import printable

MAX_MEMBERS = 100_000
MAX_TOTAL_BYTES = 64 * 2**30  # far above any model artifact; refuses a tar bomb before writing it


def _inside(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UserError(f"archive member {printable(name)!r} would be written outside {root}")
    return target


def _check_tar_member(dest: Path, member: tarfile.TarInfo, links: set[str]) -> None:
    name = member.name
    shown = printable(name)
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts:
        raise UserError(f"archive member {shown!r}: absolute paths and '..' are not allowed")
    if any(str(PurePosixPath(*parts[:i])) in links for i in range(1, len(parts))):
        raise UserError(f"archive member {shown!r} is written through a symbolic link of the archive")
    _inside(dest, name)
    if member.issym():
        if member.linkname.startswith("/"):
            raise UserError(f"archive member {shown!r} is a symbolic link to an absolute path")
        _inside(dest, os.path.join(os.path.dirname(name), member.linkname))
        links.add(str(PurePosixPath(*parts)))
    elif member.islnk():
        if member.linkname.startswith("/") or ".." in PurePosixPath(member.linkname).parts:
            raise UserError(f"archive member {shown!r} is a hard link out of the archive")
        _inside(dest, member.linkname)
    elif not (member.isreg() or member.isdir()):
        raise UserError(f"archive member {shown!r} is a device, fifo or other special file")


def safe_extract_tar(archive: str | Path, dest: str | Path, max_bytes: int = MAX_TOTAL_BYTES) -> Path:
    """Extract a (gzipped) tar into `dest`, or raise UserError naming the first member refused; nothing is written then."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tf = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{archive}: not a readable tar archive ({printable(exc)})") from None
    with tf:
        members, links, total = [], set(), 0
        try:
            for member in tf:
                if len(members) >= MAX_MEMBERS:
                    raise UserError(f"{archive}: more than {MAX_MEMBERS} members")
                total += member.size
                if total > max_bytes:
                    raise UserError(f"{archive}: more than {max_bytes / 2**30:.1f} GiB once extracted")
                _check_tar_member(dest, member, links)
                safe = copy.copy(member)
                safe.mode = (member.mode & 0o755) | (0o644 if member.isreg() else 0o755)  # no setuid, no world-write
                safe.uid, safe.gid, safe.uname, safe.gname = os.getuid(), os.getgid(), "", ""
                members.append(safe)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(f"{archive}: damaged tar archive ({printable(exc)})") from None
        if hasattr(tarfile, "data_filter"):
            tf.extractall(dest, members=members, filter="data")
        else:  # Python < 3.11.4: the checks above do what the filter would
            tf.extractall(dest, members=members)  # noqa: S202 - every member was checked above
    return dest


def safe_extract_zip(archive: str | Path, dest: str | Path) -> Path:
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _inside(dest, info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UserError(f"archive member {printable(info.filename)!r} is a symbolic link")
        zf.extractall(dest)  # noqa: S202 - every member was checked above
    return dest
