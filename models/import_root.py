"""The one check every file a job reads goes through: it must lie under the import root.

A path given by a user (a job's source, a manifest's image column) is first checked as a
string (no NUL, component and total lengths the file system takes, valid unicode), then
resolved with every link followed and refused if it lands outside the root. That check
alone leaves a race: a file swapped for a symlink between the check and the open. So
files are opened with ``O_NOFOLLOW`` (a final symlink is refused) and ``O_NONBLOCK`` (a
FIFO cannot hang the reader), and the opened descriptor itself is checked: a regular file
whose real path (``/proc/self/fd``) lies under the root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from models.errors import ModelError

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
_PROC_FD = Path("/proc/self/fd")


class SourceError(ModelError):
    """The source as a whole cannot be read: outside the root, missing, unknown format."""


class OutsideRoot(OSError):
    """An opened file that is not a regular file under the import root."""


def reason(exc: BaseException) -> str:
    """Why a file operation failed, without the server's path of the file (an ``OSError``
    with an errno puts it in its text): what job reports and API errors may show."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def check_relative(relative: str) -> None:
    """A path string the file system can take, or ``SourceError`` saying why not."""
    if "\x00" in relative:
        raise SourceError("the path holds a NUL character")
    try:
        encoded = relative.encode("utf-8")
    except UnicodeEncodeError:
        raise SourceError("the path is not valid unicode") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise SourceError(f"the path is longer than {MAX_PATH_BYTES} bytes")
    if any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        raise SourceError(f"a path component is longer than {MAX_NAME_BYTES} bytes")


def resolve_under(root: Path, relative: str) -> Path:
    """``root/relative`` with every link resolved, refusing anything outside ``root``."""
    check_relative(relative)
    base = root.resolve()
    try:
        target = (base / relative).resolve()
    except (OSError, RuntimeError) as exc:  # a link loop, an unreadable directory
        raise SourceError(f"{_short(relative)!r} cannot be resolved: {reason(exc)}") from None
    if target != base and base not in target.parents:
        raise SourceError(f"{_short(relative)!r} resolves outside the import root")
    return target


def open_under(root: str | Path, path: str | Path) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file under ``root`` once opened
    (``OutsideRoot``, an ``OSError``, otherwise)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OutsideRoot(f"{Path(path).name} is not a regular file")
        real = _real_path(fd, path)
        base = Path(root).resolve()
        if base not in real.parents:
            raise OutsideRoot(f"{Path(path).name} lies outside the import root")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _real_path(fd: int, path: str | Path) -> Path:
    """Where the descriptor really points (Linux), else the path resolved now and checked
    to be the same file."""
    link = _PROC_FD / str(fd)
    try:
        return Path(os.readlink(link))
    except OSError:
        resolved = Path(path).resolve()
        opened, now = os.fstat(fd), os.stat(resolved)
        if (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino):
            raise OutsideRoot(f"{Path(path).name} changed while it was opened") from None
        return resolved


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."
