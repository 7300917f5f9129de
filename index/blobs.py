"""Content-addressed file storage for uploaded images."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never
    half of either, and the new one survives a crash once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class BlobStore:
    """Files named by the SHA-256 of their bytes under ``root/ab/cd/abcd...``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes, digest: str | None = None) -> str:
        digest = digest or sha256_hex(data)
        target = self.path(digest)
        if not target.exists():
            atomic_write(target, data)
        return digest

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
