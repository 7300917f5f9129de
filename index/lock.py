"""One process at a time per data dir: two stores on one dir would each keep indexes the
other never sees."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from index.errors import DataDirInUse

LOCK_FILE = ".lock"


def lock_data_dir(data_dir: Path) -> int:
    """An exclusive lock on ``data_dir`` for as long as the store is open (the kernel drops
    it when the process dies, kill -9 included); ``DataDirInUse`` if another holds it."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DataDirInUse(
            f"the data dir {data_dir.resolve()} is in use by another xmodal process (a running"
            " server?); stop it, or work through it with --server URL"
        ) from None
    return fd
