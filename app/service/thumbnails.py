"""Downscaled copies of stored images for result grids, made once and kept on disk.

A thumbnail is keyed by the image's content hash and its size, so an item replaced with
other content gets a new one, and the same picture stored under two ids shares one.
Sizes come from a fixed set, which bounds the cache at a few files per image.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from models.images import decode_image

SIZES = (64, 128, 256, 512)


class ThumbnailCache:
    def __init__(self, root: Path, max_pixels: int) -> None:
        self.root = root
        self.max_pixels = max_pixels

    def path(self, digest: str, size: int) -> Path:
        return self.root / str(size) / digest[:2] / f"{digest}.jpg"

    def get(self, digest: str, size: int, original: Callable[[], bytes]) -> bytes:
        """The cached thumbnail, or one made from ``original()`` (called only on a miss)
        and cached."""
        path = self.path(digest, size)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = render(original(), size, self.max_pixels)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A cache, not a record: write-then-rename so no reader sees half a file, no fsync.
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return data

    def forget(self, digests: Sequence[str]) -> None:
        """Drop the thumbnails of images that are gone."""
        for digest in digests:
            for size in SIZES:
                with contextlib.suppress(FileNotFoundError):
                    self.path(digest, size).unlink()

    def sweep(self, referenced: set[str]) -> int:
        """Drop thumbnails of images no item refers to; returns how many."""
        gone = 0
        for path in self.root.glob("*/??/*.jpg"):
            if path.stem not in referenced:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    gone += 1
        return gone


def render(original: bytes, size: int, max_pixels: int) -> bytes:
    """A JPEG whose longer side is at most ``size`` (never enlarged), EXIF orientation
    applied and transparency flattened onto white."""
    image = decode_image(original, max_pixels, draft_size=size).image
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True, progressive=True)
    return out.getvalue()
