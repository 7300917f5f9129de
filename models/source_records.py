"""What a corpus on disk is read as: records (an image file or a text, with metadata) and
the formats a source comes in (``models.sources`` reads them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models.import_root import SourceError, open_under

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
FORMATS = ("jsonl", "csv", "parquet", "folder", "webdataset")
Format = Literal["jsonl", "csv", "parquet", "folder", "webdataset"]
RecordKind = Literal["image", "text"]
# What a caption file may hold at most, to bound memory; jobs apply XMODAL_MAX_TEXT_CHARS.
MAX_CAPTION_CHARS = 1_000_000
_SUFFIX_FORMATS: tuple[tuple[str, Format], ...] = (
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
    (".csv", "csv"),
    (".parquet", "parquet"),
    (".tar", "webdataset"),
)


@dataclass(frozen=True)
class FileRef:
    """Bytes on disk under the import root ``root``: a whole file, or one member of an
    uncompressed tar shard."""

    path: str
    root: str
    offset: int = 0
    size: int | None = None

    def read(self, limit: int) -> bytes:
        """Read at most ``limit`` bytes; raise ``ValueError`` for anything larger and
        ``OSError`` for a file that is missing or not under the root once opened."""
        with open_under(self.root, self.path) as f:
            if self.size is None:
                size = os.fstat(f.fileno()).st_size
            else:
                size = self.size
                f.seek(self.offset)
            if size > limit:
                raise ValueError(f"file is {size} bytes; the limit is {limit}")
            return f.read(size)


@dataclass(frozen=True)
class SourceRecord:
    seq: int  # position in the source: resuming skips every record below the cursor
    id: str
    kind: RecordKind
    image: FileRef | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # known bad before any decoding (bad line, path outside root)


def detect_format(path: Path) -> Format:
    if path.is_dir():
        if any(p.suffix == ".tar" for p in path.iterdir()) and not _has_images(path):
            return "webdataset"
        return "folder"
    name = path.name.lower()
    for suffix, fmt in _SUFFIX_FORMATS:
        if name.endswith(suffix):
            return fmt
    raise SourceError(f"cannot tell the format of {path.name!r}; give one of {', '.join(FORMATS)}")


def _has_images(path: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
