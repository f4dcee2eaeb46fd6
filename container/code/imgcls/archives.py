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


MAX_LINK_DEPTH = 40  # as Linux's own limit on nested symbolic links
MAX_NAME_SHOWN = 200


def _shown(name: str) -> str:
    """A member name for a message: printable, and bounded (a PAX header can carry any length)."""
    return printable(name if len(name) <= MAX_NAME_SHOWN else name[:MAX_NAME_SHOWN] + "...")


def _inside(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UserError(f"archive member {_shown(name)!r} would be written outside {root}")
    return target


def _parts(name: str) -> tuple[str, ...]:
    return tuple(part for part in name.split("/") if part not in ("", "."))


class _ArchiveTree:
    """The tree the archive will leave once extracted, built from its member list before anything is written.

    Links are resolved lexically through the archive's own links, never through the disk: on disk
    nothing exists yet, so a link checked there looks inside even when a chain of links, taken
    together, climbs out (l1 -> l0/.., l0 -> .). Each path is defined once (a link replaced by a
    file or a directory would be written through), so the tree checked is the tree written.
    """

    def __init__(self) -> None:
        self.kinds: dict[tuple[str, ...], str] = {}  # path -> "file" | "dir" | "link"
        self.links: dict[tuple[str, ...], tuple[str, ...]] = {}  # link path -> its target, as written

    def add(self, member: tarfile.TarInfo) -> None:
        name, shown = member.name, _shown(member.name)
        if name.startswith("/") or ".." in name.split("/"):
            raise UserError(f"archive member {shown!r}: absolute paths and '..' are not allowed")
        path = _parts(name)
        if not path:
            return  # "." itself: the destination
        kind = "link" if member.issym() else "dir" if member.isdir() else "file"
        if member.issym() and member.linkname.startswith("/"):
            raise UserError(f"archive member {shown!r} is a symbolic link to an absolute path")
        if member.islnk():
            target = _parts(member.linkname)
            if member.linkname.startswith("/") or ".." in member.linkname.split("/"):
                raise UserError(f"archive member {shown!r} is a hard link out of the archive")
            if self.kinds.get(target) != "file":
                raise UserError(f"archive member {shown!r} is a hard link to something that is not an earlier file of the archive")
        elif not (member.isreg() or member.isdir() or member.issym()):
            raise UserError(f"archive member {shown!r} is a device, fifo or other special file")
        previous = self.kinds.get(path)
        if previous is not None and (previous != kind or kind == "link"):
            raise UserError(f"archive member {shown!r} replaces an earlier {previous} of the same name")
        self.kinds[path] = kind
        if member.issym():
            self.links[path] = path[:-1] + tuple(member.linkname.split("/"))

    def check(self, member: tarfile.TarInfo) -> None:
        """Once every member is known: nothing is written through a link, and every link stays inside."""
        path, shown = _parts(member.name), _shown(member.name)
        if any(path[:i] in self.links for i in range(1, len(path))):
            raise UserError(f"archive member {shown!r} is written through a symbolic link of the archive")
        if member.islnk() and any(_parts(member.linkname)[:i] in self.links for i in range(1, len(_parts(member.linkname)))):
            raise UserError(f"archive member {shown!r} is a hard link through a symbolic link of the archive")
        if member.issym() and self.resolve(self.links[path], shown) is None:
            raise UserError(f"archive member {shown!r} is a symbolic link that leads outside the archive")

    def resolve(self, parts: tuple[str, ...], shown: str, depth: int = 0) -> tuple[str, ...] | None:
        """Where a path leads inside the extracted tree, or None when it climbs above it."""
        where: tuple[str, ...] = ()
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                if not where:
                    return None
                where = where[:-1]
                continue
            where += (part,)
            if where in self.links:
                if depth >= MAX_LINK_DEPTH:
                    raise UserError(f"archive member {shown!r}: symbolic links nest more than {MAX_LINK_DEPTH} deep (a loop?)")
                resolved = self.resolve(self.links[where], shown, depth + 1)
                if resolved is None:
                    return None
                where = resolved
        return where


def _checked_members(tf: tarfile.TarFile, archive: str | Path, dest: Path, max_bytes: int) -> list[tarfile.TarInfo]:
    tree, members, total = _ArchiveTree(), [], 0
    for member in tf:
        if len(members) >= MAX_MEMBERS:
            raise UserError(f"{archive}: more than {MAX_MEMBERS} members")
        total += member.size
        if total > max_bytes:
            raise UserError(f"{archive}: more than {max_bytes / 2**30:.1f} GiB once extracted")
        tree.add(member)
        members.append(member)
    for member in members:
        tree.check(member)
        _inside(dest, member.name)  # and what the destination already holds
    return members


def _without_privileges(member: tarfile.TarInfo) -> tarfile.TarInfo:
    safe = copy.copy(member)
    safe.mode = (member.mode & 0o755) | (0o644 if member.isreg() else 0o755)  # no setuid, no world-write
    safe.uid, safe.gid, safe.uname, safe.gname = os.getuid(), os.getgid(), "", ""
    return safe


def safe_extract_tar(archive: str | Path, dest: str | Path, max_bytes: int = MAX_TOTAL_BYTES) -> Path:
    """Extract a (gzipped) tar into `dest`, or raise UserError naming the first member refused; nothing is written then."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        tf = tarfile.open(archive)
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"{archive}: not a readable tar archive ({printable(exc)})") from None
    with tf:
        try:
            members = [_without_privileges(m) for m in _checked_members(tf, archive, dest, max_bytes)]
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(f"{archive}: damaged tar archive ({printable(exc)})") from None
        try:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            else:  # Python < 3.11.4: the checks above do what the filter would
                tf.extractall(dest, members=members)  # noqa: S202 - every member was checked above
        except (tarfile.TarError, EOFError, OSError) as exc:  # the filter's refusals (FilterError) included
            raise UserError(f"{archive}: could not be extracted ({_shown(str(exc))})") from None
    return dest


def safe_extract_zip(archive: str | Path, dest: str | Path) -> Path:
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _inside(dest, info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UserError(f"archive member {_shown(info.filename)!r} is a symbolic link")
        zf.extractall(dest)  # noqa: S202 - every member was checked above
    return dest
