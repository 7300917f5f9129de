"""Content-addressed file storage for uploaded images."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import cast


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never
    half of either, and (``durable``) the new one survives a crash once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2): everything written to one file system, on disk in one call."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return cast(Callable[[int], int], libc.syncfs)
    except (OSError, AttributeError):
        return None


_SYNCFS = _syncfs()


class BlobStore:
    """Files named by the SHA-256 of their bytes under ``root/ab/cd/abcd...``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes, digest: str | None = None, durable: bool = True) -> str:
        """Store ``data``; not ``durable``: on disk only after ``make_durable`` (a batch
        job writes a chunk's files, then syncs them at once before its commit)."""
        digest = digest or sha256_hex(data)
        target = self.path(digest)
        if not target.exists():
            atomic_write(target, data, durable)
        return digest

    def make_durable(self, digests: Sequence[str]) -> None:
        """Files written with ``durable=False`` survive a crash once this returns: one
        syncfs of the blob store's file system where there is one (a file per fsync costs
        about a millisecond each), else each file and folder fsynced."""
        if not digests:
            return
        if _SYNCFS is not None:
            fd = os.open(self.root, os.O_RDONLY)
            try:
                if _SYNCFS(fd) == 0:
                    return
            finally:
                os.close(fd)
        folders = set()
        for digest in digests:
            path = self.path(digest)
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                os.fsync(f.fileno())
            folders.add(path.parent)
        for folder in folders:
            fsync_dir(folder)

    def get(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def older_than(self, seconds: float) -> Iterator[str]:
        """The digests of files written more than ``seconds`` ago."""
        cutoff = time.time() - seconds
        for path in self.root.glob("??/??/*"):
            name = path.name
            if len(name) != 64 or name.startswith("."):
                continue  # a temporary file of a write in progress
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    yield name
