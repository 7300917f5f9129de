"""Corpora on disk as ordered streams of records: manifests, folders, WebDataset shards.

Every path is resolved under one import root, and anything that resolves outside it
(through ``..`` or a symlink) is refused: the source itself with ``SourceError``, a file a
manifest names as a failed record. Every file is opened through ``open_under``, which
checks the opened descriptor as well (see ``models.import_root``). Records come out in a
stable order with stable ids, so a job can resume by skipping the records it already
finished, and a re-run of the same source maps every record onto the same id.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from models.import_root import SourceError, check_relative, open_under, reason, resolve_under
from models.source_records import (
    FORMATS,
    IMAGE_SUFFIXES,
    MAX_CAPTION_CHARS,
    FileRef,
    Format,
    SourceRecord,
    detect_format,
)

__all__ = [
    "FORMATS",
    "FileRef",
    "Format",
    "Source",
    "SourceError",
    "SourceRecord",
    "detect_format",
    "open_source",
    "resolve_under",
]

_RESERVED = {"id", "image", "text"}


@dataclass
class Source:
    """An opened source: ``records()`` enumerates it, the same way every time."""

    root: Path
    path: Path
    format: Format

    def records(self) -> Iterator[SourceRecord]:
        readers = {
            "jsonl": self._jsonl,
            "csv": self._csv,
            "parquet": self._parquet,
            "folder": self._folder,
            "webdataset": self._webdataset,
        }
        for seq, record in enumerate(readers[self.format]()):
            yield replace(record, seq=seq)

    def count(self) -> int:
        return sum(1 for _ in self.records())

    def open_text(self, path: Path) -> io.TextIOWrapper:
        """A text file under the root, checked once opened (see ``open_under``)."""
        return io.TextIOWrapper(
            open_under(self.root, path), encoding="utf-8", errors="replace", newline=""
        )

    # --- manifests ----------------------------------------------------------------------------
    def _rows_to_records(
        self, rows: Iterator[tuple[int, dict[str, Any] | str]]
    ) -> Iterator[SourceRecord]:
        for line, row in rows:
            if isinstance(row, str):  # the reader could not parse this row
                yield SourceRecord(0, f"{self.path.name}:{line}", "text", error=row)
                continue
            yield from self._row_records(line, row)

    def _row_records(self, line: int, row: dict[str, Any]) -> Iterator[SourceRecord]:
        image = _blank_to_none(row.get("image"))
        text = _blank_to_none(row.get("text"))
        given_id = _blank_to_none(row.get("id"))
        metadata = {k: v for k, v in row.items() if k not in _RESERVED and v is not None}
        where = f"{self.path.name} line {line}"
        if image is None and text is None:
            yield SourceRecord(
                0,
                given_id or f"{self.path.name}:{line}",
                "text",
                error=f"{where}: neither an image nor a text",
            )
            return
        if image is not None:
            image_id = str(given_id) if given_id is not None else str(image)
            try:
                ref: FileRef | None = FileRef(
                    str(resolve_under(self.root, str(image))), str(self.root)
                )
                error = None
            except SourceError as exc:
                ref, error = None, f"{where}: {exc}"
            yield SourceRecord(0, image_id, "image", image=ref, metadata=metadata, error=error)
            if text is not None:
                yield SourceRecord(
                    0,
                    f"{image_id}#text",
                    "text",
                    text=str(text),
                    metadata={**metadata, "image_id": image_id},
                )
        else:
            text_id = str(given_id) if given_id is not None else _text_id(str(text))
            yield SourceRecord(0, text_id, "text", text=str(text), metadata=metadata)

    def _jsonl(self) -> Iterator[SourceRecord]:
        def rows() -> Iterator[tuple[int, dict[str, Any] | str]]:
            with self.open_text(self.path) as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    value, why = _json(line)
                    if why is not None:
                        yield n, f"{self.path.name} line {n}: invalid JSON ({why})"
                        continue
                    yield (
                        n,
                        value
                        if isinstance(value, dict)
                        else f"{self.path.name} line {n}: not an object",
                    )

        return self._rows_to_records(rows())

    def _csv(self) -> Iterator[SourceRecord]:
        def rows() -> Iterator[tuple[int, dict[str, Any] | str]]:
            with self.open_text(self.path) as f:
                reader = csv.DictReader(f)
                while True:
                    try:
                        row = next(reader)
                    except StopIteration:
                        return
                    except csv.Error as exc:  # e.g. a field over the csv module's limit
                        yield reader.line_num, f"{self.path.name} line {reader.line_num}: {exc}"
                        continue
                    yield reader.line_num, {k: v for k, v in row.items() if k is not None}

        return self._rows_to_records(rows())

    def _parquet(self) -> Iterator[SourceRecord]:
        import pyarrow.parquet as pq

        def rows() -> Iterator[tuple[int, dict[str, Any] | str]]:
            with open_under(self.root, self.path) as f:
                try:
                    reader = pq.ParquetFile(f)
                except Exception as exc:  # pyarrow raises its own error types
                    raise SourceError(f"cannot read {self.path.name} as Parquet: {exc}") from exc
                n = 0
                for batch in reader.iter_batches(batch_size=4096):
                    for row in batch.to_pylist():
                        n += 1
                        yield n, row

        return self._rows_to_records(rows())

    # --- folders ------------------------------------------------------------------------------
    def _folder(self) -> Iterator[SourceRecord]:
        base = self.path
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            dirnames.sort()
            names = set(filenames)
            # The walk enters no linked folder, so a file that is not a link itself lies
            # in the folder's own resolved path: resolved once, not once per file.
            try:
                real_dir: Path | None = resolve_under(
                    self.root, str(Path(dirpath).relative_to(self.root))
                )
            except SourceError:
                real_dir = None  # each file says why below
            for name in sorted(filenames):
                stem, suffix = os.path.splitext(name)
                if suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                full = Path(dirpath) / name
                rel = full.relative_to(base).as_posix()
                try:
                    ref: FileRef | None = FileRef(
                        str(self._resolved(full, real_dir)), str(self.root)
                    )
                    error = None
                except SourceError as exc:
                    ref, error = None, f"{rel}: {exc}"
                yield SourceRecord(0, rel, "image", image=ref, metadata={"path": rel}, error=error)
                caption = stem + ".txt"
                if caption in names:
                    yield self._caption_record(Path(dirpath) / caption, rel)

    def _resolved(self, full: Path, real_dir: Path | None) -> Path:
        relative = str(full.relative_to(self.root))
        if real_dir is None or os.path.islink(full):
            return resolve_under(self.root, relative)
        check_relative(relative)
        return real_dir / full.name

    def _caption_record(self, path: Path, image_id: str) -> SourceRecord:
        rel = path.relative_to(self.path).as_posix()
        try:
            resolved = resolve_under(self.root, str(path.relative_to(self.root)))
            with self.open_text(resolved) as f:
                text = f.read(MAX_CAPTION_CHARS + 1).strip()
        except (SourceError, OSError) as exc:
            return SourceRecord(0, rel, "text", error=f"{rel}: {reason(exc)}")
        if len(text) > MAX_CAPTION_CHARS:
            return SourceRecord(0, rel, "text", error=f"{rel}: over {MAX_CAPTION_CHARS} characters")
        if not text:
            return SourceRecord(0, rel, "text", error=f"{rel}: empty caption")
        return SourceRecord(0, rel, "text", text=text, metadata={"path": rel, "image_id": image_id})

    # --- WebDataset shards ----------------------------------------------------------------------
    def _webdataset(self) -> Iterator[SourceRecord]:
        shards = (
            sorted(p for p in self.path.iterdir() if p.suffix == ".tar")
            if self.path.is_dir()
            else [self.path]
        )
        for shard in shards:
            yield from self._shard(shard)

    def _shard(self, shard: Path) -> Iterator[SourceRecord]:
        with contextlib.ExitStack() as stack:
            try:
                # The shard is checked once opened, like every file (a link out of the root).
                f = stack.enter_context(open_under(self.root, shard))
                tar = stack.enter_context(tarfile.open(fileobj=f, mode="r:"))
            except (tarfile.TarError, OSError) as exc:
                yield SourceRecord(
                    0,
                    shard.name,
                    "image",
                    error=f"{shard.name}: not a readable tar shard ({reason(exc)})",
                )
                return
            group: list[tarfile.TarInfo] = []
            key = None
            try:
                for member in tar:
                    if not member.isfile():
                        continue
                    member_key = _sample_key(member.name)
                    if member_key != key and group:
                        yield from self._sample(shard, tar, key or "", group)
                        group = []
                    key = member_key
                    group.append(member)
            except tarfile.TarError as exc:
                yield SourceRecord(
                    0,
                    f"{shard.name}:{key}",
                    "image",
                    error=f"{shard.name}: truncated or corrupt shard ({reason(exc)})",
                )
            if group:
                yield from self._sample(shard, tar, key or "", group)

    def _sample(
        self, shard: Path, tar: tarfile.TarFile, key: str, members: list[tarfile.TarInfo]
    ) -> Iterator[SourceRecord]:
        by_ext = {m.name[len(key) :].lstrip(".").lower(): m for m in members}
        image_member = next(
            (
                by_ext[e]
                for e in ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
                if e in by_ext
            ),
            None,
        )
        metadata: dict[str, Any] = {"shard": shard.name, "key": key}
        if "json" in by_ext and by_ext["json"].size <= MAX_CAPTION_CHARS:
            # Bad sidecar metadata does not sink a good image.
            extra, _ = _json(_member_bytes(tar, by_ext["json"]))
            if isinstance(extra, dict):
                metadata.update({k: v for k, v in extra.items() if k not in _RESERVED})
        text = None
        if "txt" in by_ext:
            if by_ext["txt"].size > MAX_CAPTION_CHARS * 4:  # UTF-8: up to 4 bytes a character
                yield SourceRecord(
                    0,
                    f"{key}#text",
                    "text",
                    error=f"{key}.txt: over {MAX_CAPTION_CHARS} characters",
                )
            else:
                raw = _member_bytes(tar, by_ext["txt"])
                text = raw.decode("utf-8", errors="replace").strip() or None
        if image_member is not None:
            ref = FileRef(str(shard), str(self.root), image_member.offset_data, image_member.size)
            yield SourceRecord(0, key, "image", image=ref, metadata=metadata)
            if text is not None:
                yield SourceRecord(
                    0, f"{key}#text", "text", text=text, metadata={**metadata, "image_id": key}
                )
        elif text is not None:
            yield SourceRecord(0, key, "text", text=text, metadata=metadata)


def open_source(root: Path, relative: str, fmt: str | None = None) -> Source:
    """Resolve ``relative`` under ``root`` and work out its format (``SourceError`` if not)."""
    if not relative or not relative.strip():
        raise SourceError("source is empty: give a path relative to the import root")
    if fmt is not None and fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt[:40]!r}; give one of {', '.join(FORMATS)}")
    path = resolve_under(root, relative)
    shown = relative if len(relative) <= 200 else relative[:200] + "..."
    try:
        if not path.exists():
            raise SourceError(f"{shown!r} does not exist under the import root")
        chosen = cast(Format, fmt) if fmt is not None else detect_format(path)
        if chosen == "folder" and not path.is_dir():
            raise SourceError(f"{shown!r} is not a folder")
        if chosen in ("jsonl", "csv", "parquet") and not path.is_file():
            raise SourceError(f"{shown!r} is not a manifest file")
    except OSError as exc:
        raise SourceError(
            f"{shown!r} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    return Source(root.resolve(), path, chosen)


def _blank_to_none(value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and value != value:  # NaN from a Parquet/CSV null
        return None
    return value


def _text_id(text: str) -> str:
    return "text-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _sample_key(name: str) -> str:
    directory, base = os.path.split(name)
    stem = base.split(".", 1)[0]
    return f"{directory}/{stem}" if directory else stem


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(member)
    return f.read() if f is not None else b""


def _json(text: str | bytes) -> tuple[Any, str | None]:
    """A record's JSON, or why not: invalid, nested deeper than Python's parser goes, a
    number past Python's digit limit, bytes that are not UTF-8. One record's problem,
    never the job's."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as exc:
        return None, exc.msg
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as exc:  # an integer of thousands of digits, bytes not UTF-8
        return None, str(exc)[:200]
