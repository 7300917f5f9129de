"""Collection archives: one file that holds a whole collection, to move or keep it.

An archive is a tar file of regular files only:

- ``collection.json``: the format, the collection's name, index spec, dimension, model
  version (its embedding space), creation time, and its counts;
- ``items/NNNNNN.jsonl`` and ``items/NNNNNN.f32``: the items, a chunk at a time, in the
  order they were added (id, modality, metadata, text, image digest and type, creation
  time), and their vectors as little-endian float32 rows;
- ``images/<sha256>``: each stored image file once;
- ``MANIFEST.json`` last: the SHA-256 and size of every other member.

Writing reads the collection in one SQLite read transaction (a consistent view while
writes go on) and streams: memory holds one chunk. The file is written under a temporary
name, fsynced and renamed, so a crash leaves no half archive. Reading verifies every
member against the manifest, and the manifest against the member list, before anything
is written; restoring fills a hidden collection and swaps it in under its name in one
transaction, so a crash leaves the data dir as it was (the hidden copy is dropped on the
next start) or with the whole collection.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from index.archive_check import (
    CHUNK,
    FORMAT,
    ArchiveError,
    ArchiveInfo,
    Rules,
    Stopped,
    open_tar,
    records,
    vectors,
    verify,
)
from index.blobs import fsync_dir
from index.catalogue.base import Conn
from index.catalogue.rows import STORED_COLUMNS, stored_item_from_row
from index.collections import COLLECTION_NAME, COLLECTION_NAME_RULE, CollectionStore
from index.errors import CollectionExists, StoreError
from index.live import SHADOW_PREFIX
from index.types import Modality, NewItem, StoredItem


# --- writing -------------------------------------------------------------------------------------
class _Writer:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.manifest: dict[str, dict[str, Any]] = {}

    def add_bytes(self, name: str, data: bytes) -> None:
        self.manifest[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def add_file(self, name: str, path: Path) -> None:
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
            f.seek(0)
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = size, int(time.time()), 0o644
            self.tar.addfile(info, f)
        self.manifest[name] = {"sha256": digest.hexdigest(), "size": size}


def write_archive(
    store: CollectionStore, name: str, dest: Path, should_stop: Callable[[], bool] = lambda: False
) -> ArchiveInfo:
    """Write collection ``name`` of ``store`` (a ``CollectionStore``) to ``dest``. Partial
    files in its folder, left by a process killed while writing, are removed first (one
    archive is written at a time: jobs run one after another, and one process holds a data
    dir)."""
    c = store.get(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(".*.partial"):  # left by a process killed mid-way
        stale.unlink(missing_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with store.db.read_transaction() as conn:  # one consistent view throughout
            counts = dict.fromkeys((m.value for m in Modality), 0)
            for modality, n in conn.execute(
                "SELECT modality, COUNT(*) FROM items WHERE collection = ? GROUP BY modality",
                (name,),
            ):
                counts[modality] = n
            info = ArchiveInfo(
                name, c.spec, c.dim, c.model_version, c.created_at, sum(counts.values()), counts
            )
            with (
                tmp.open("wb") as raw,
                tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                w = _Writer(tar)
                header = {
                    "format": FORMAT,
                    "collection": name,
                    "index_spec": c.spec,
                    "dim": c.dim,
                    "model_version": c.model_version,
                    "created_at": c.created_at,
                    "archived_at": time.time(),
                    "counts": counts,
                }
                w.add_bytes("collection.json", json.dumps(header).encode())
                images: set[str] = set()
                for n, rows in enumerate(_chunks(conn, name)):
                    if should_stop():
                        raise Stopped("stopped")
                    w.add_bytes(f"items/{n:06d}.jsonl", "".join(_line(r) for r in rows).encode())
                    vectors = np.stack([r.embedding for r in rows]).astype("<f4")
                    w.add_bytes(f"items/{n:06d}.f32", vectors.tobytes())
                    for r in rows:
                        digest = r.content_sha256
                        if r.modality is Modality.IMAGE and digest and digest not in images:
                            path = store.blobs.path(digest)
                            if not path.exists():
                                raise StoreError(
                                    f"the image of {r.id!r} went while archiving (deleted"
                                    " meanwhile?); archive again"
                                )
                            w.add_file(f"images/{digest}", path)
                            images.add(digest)
                manifest = {"format": FORMAT, "members": w.manifest}
                w.add_bytes("MANIFEST.json", json.dumps(manifest).encode())
                tar.close()
                raw.flush()
                os.fsync(raw.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return info
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _unreadable_is_refused() -> Iterator[None]:
    """What cannot be read once verified (bytes that are not UTF-8, a member cut short)
    is a reason the job gives, not an internal error."""
    try:
        yield
    except (tarfile.TarError, UnicodeDecodeError, EOFError) as exc:
        raise ArchiveError(f"the archive cannot be read: {exc}") from None


def archive_estimate(store: CollectionStore, name: str) -> int:
    """About how many bytes an archive of collection ``name`` takes (its vectors, records
    and distinct images), for the disk check before one is written."""
    c = store.get(name)
    conn = store.db.reader()
    n, records = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(LENGTH(id) + LENGTH(metadata) + COALESCE(LENGTH(text), 0)"
        " + 256), 0) FROM items WHERE collection = ?",
        (name,),
    ).fetchone()
    images = 0
    for (digest,) in conn.execute(
        "SELECT DISTINCT content_sha256 FROM items WHERE collection = ?"
        " AND content_sha256 IS NOT NULL",
        (name,),
    ):
        with contextlib.suppress(OSError):
            images += store.blobs.path(digest).stat().st_size + 1024
    return int(n * c.dim * 4 + records + images + 64 * 1024)


def _chunks(conn: Conn, name: str) -> Iterator[list[StoredItem]]:
    after = -1
    while True:
        rows = conn.execute(
            f"SELECT {STORED_COLUMNS} FROM items WHERE collection = ? AND label > ?"
            " ORDER BY label LIMIT ?",
            (name, after, CHUNK),
        ).fetchall()
        if not rows:
            return
        after = int(rows[-1][0])
        yield [stored_item_from_row(r) for r in rows]


def _line(r: StoredItem) -> str:
    record = {
        "id": r.id,
        "modality": r.modality.value,
        "metadata": r.metadata,
        "text": r.text,
        "content_sha256": r.content_sha256,
        "media_type": r.media_type,
        "created_at": r.created_at,
    }
    return json.dumps(record, ensure_ascii=False) + "\n"


# --- reading -------------------------------------------------------------------------------------
Vectors = Callable[[list[NewItem], np.ndarray], np.ndarray]  # items, archived -> to store
__all__ = ["ArchiveError", "ArchiveInfo", "Rules", "Stopped", "restore_archive", "write_archive"]


def restore_archive(
    store: CollectionStore,
    f: IO[bytes],
    name: str,
    space: tuple[str, int],
    rules: Rules,
    reembed: Vectors | None = None,
    on_chunk: Callable[[int], None] = lambda done: None,
) -> ArchiveInfo:
    """Create collection ``name`` from the archive ``f`` (verified first, see
    ``index.archive_check``) in ``space`` (a model version and its dimension): the
    archive's own, or another when ``reembed`` gives each chunk's vectors in it.
    ``on_chunk`` hears the items restored so far. ``CollectionExists`` if ``name`` is taken."""
    model_version, dim = space
    info, _ = verify(f, rules, None if reembed else dim)
    if reembed is None and model_version != info.model_version:
        raise ArchiveError(
            f"the archive is of the embedding space {info.model_version!r}, this server's is "
            f"{model_version!r}: restore with reembed to encode its images and texts again"
        )
    if not COLLECTION_NAME.match(name):
        raise ValueError(COLLECTION_NAME_RULE)
    if store.exists(name):
        raise CollectionExists(f"collection {name!r} already exists")
    try:  # the archive's index, if this store's backend builds it; else the default one
        spec = store.backends.check(dim, info.index_spec)
    except (StoreError, ValueError):
        spec = store.backends.check(dim, None)
    shadow = f"{SHADOW_PREFIX}restore.{name}.{uuid.uuid4().hex[:8]}"
    with store.locked() as writer:
        writer.add_collection(shadow, uuid.uuid4().hex, spec, dim, model_version, info.created_at)
    try:
        counts = dict.fromkeys((m.value for m in Modality), 0)
        with open_tar(f) as tar, _unreadable_is_refused():
            for n in range(info.chunks):
                items = records(tar, n, rules, counts)
                archived = vectors(tar, n, len(items), info.dim)
                rows = archived if reembed is None else reembed(items, archived)
                if rules.should_stop():
                    raise Stopped("stopped")
                store.upsert(shadow, items, rows, model_version)
                on_chunk(sum(counts.values()))
        if counts != info.counts:
            raise ArchiveError(f"the archive's header counts {info.counts}, it holds {counts}")
        with store.locked() as writer:
            if writer.live(name) is not None:
                raise CollectionExists(f"collection {name!r} was created meanwhile")
            writer.replace({name: shadow})
        store.mark_changed(name)  # its indexes are dumped under the new name
        store.dumps.remove_folder(shadow)
        return info
    except BaseException:
        if store.exists(shadow):
            store.delete_collection(shadow)
        raise
