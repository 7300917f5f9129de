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

import hashlib
import io
import json
import os
import re
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from index.blobs import fsync_dir
from index.collections import COLLECTION_NAME, COLLECTION_NAME_RULE
from index.db import STORED_COLUMNS, stored_item_from_row
from index.errors import CollectionExists, StoreError
from index.live import SHADOW_PREFIX
from index.types import Modality, NewItem, StoredItem

FORMAT = "xmodal-collection-archive/1"
CHUNK = 1000
_MEMBER = re.compile(
    r"collection\.json|MANIFEST\.json|items/\d{6}\.(jsonl|f32)|images/[0-9a-f]{64}"
)
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


class ArchiveError(StoreError):
    """An archive that cannot be restored, with the reason (damaged, foreign, incomplete)."""


@dataclass(frozen=True)
class ArchiveInfo:
    collection: str
    index_spec: str
    dim: int
    model_version: str
    created_at: float
    items: int


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
    store: Any, name: str, dest: Path, should_stop: Callable[[], bool] = lambda: False
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
    conn = store.db._connect()  # a connection of its own: one read transaction throughout
    try:
        conn.execute("BEGIN")
        counts = dict.fromkeys((m.value for m in Modality), 0)
        for modality, n in conn.execute(
            "SELECT modality, COUNT(*) FROM items WHERE collection = ? GROUP BY modality",
            (name,),
        ):
            counts[modality] = n
        info = ArchiveInfo(name, c.spec, c.dim, c.model_version, c.created_at, sum(counts.values()))
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
                    raise InterruptedError("stopped")
                w.add_bytes(f"items/{n:06d}.jsonl", "".join(_line(r) for r in rows).encode())
                vectors = np.stack([r.embedding for r in rows]).astype("<f4")
                w.add_bytes(f"items/{n:06d}.f32", vectors.tobytes())
                for r in rows:
                    digest = r.content_sha256
                    if r.modality is Modality.IMAGE and digest and digest not in images:
                        path = store.blobs.path(digest)
                        if not path.exists():
                            raise StoreError(
                                f"the image of {r.id!r} went while archiving (deleted meanwhile?);"
                                " archive again"
                            )
                        w.add_file(f"images/{digest}", path)
                        images.add(digest)
            manifest = {"format": FORMAT, "members": w.manifest}
            w.add_bytes("MANIFEST.json", json.dumps(manifest).encode())
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        conn.execute("COMMIT")
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return info
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        conn.close()


def _chunks(conn: Any, name: str) -> Iterator[list[StoredItem]]:
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
def verify_archive(path: Path) -> tuple[ArchiveInfo, dict[str, Any]]:
    """The archive's collection and header, once every member matches the manifest
    (``ArchiveError`` with the reason otherwise). Reads the whole file once."""
    try:
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 (closed below, once it opened)
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"not an archive of a collection: {exc}") from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArchiveError(f"the archive is damaged: {exc}") from None
        names = [m.name for m in members]
        if "MANIFEST.json" not in names or "collection.json" not in names:
            raise ArchiveError("not an archive of a collection: no manifest or header")
        for m in members:
            if not m.isfile() or not _MEMBER.fullmatch(m.name):
                raise ArchiveError(f"the archive holds {m.name!r}, which no archive holds")
        if len(set(names)) != len(names):
            raise ArchiveError("the archive holds a member twice")
        manifest_member = tar.getmember("MANIFEST.json")
        if manifest_member.size > MAX_MANIFEST_BYTES:
            raise ArchiveError("the manifest is too large")
        manifest = _json(tar, manifest_member)
        listed = manifest.get("members") if isinstance(manifest, dict) else None
        if manifest.get("format") != FORMAT or not isinstance(listed, dict):
            raise ArchiveError(f"not an archive of this format ({FORMAT})")
        if set(listed) != set(names) - {"MANIFEST.json"}:
            missing = sorted(set(listed) - set(names))
            extra = sorted(set(names) - set(listed) - {"MANIFEST.json"})
            raise ArchiveError(
                f"the archive does not match its manifest (missing {missing[:3]}, "
                f"not listed {extra[:3]})"
            )
        for m in members:
            if m.name == "MANIFEST.json":
                continue
            expected = listed[m.name]
            digest = hashlib.sha256()
            f = tar.extractfile(m)
            assert f is not None
            size = 0
            for block in iter(lambda f=f: f.read(1 << 20), b""):  # type: ignore[misc]
                digest.update(block)
                size += len(block)
            if size != expected.get("size") or digest.hexdigest() != expected.get("sha256"):
                raise ArchiveError(f"{m.name} is damaged: its checksum does not match the manifest")
        header = _json(tar, tar.getmember("collection.json"))
    try:
        info = ArchiveInfo(
            str(header["collection"]),
            str(header["index_spec"]),
            int(header["dim"]),
            str(header["model_version"]),
            float(header["created_at"]),
            int(sum(header["counts"].values())),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ArchiveError("the archive's header is incomplete") from None
    return info, header


def _json(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    f = tar.extractfile(member)
    assert f is not None
    try:
        return json.loads(f.read())
    except ValueError:
        raise ArchiveError(f"{member.name} is not JSON") from None


Vectors = Callable[[list[NewItem], np.ndarray], np.ndarray]  # items, archived -> to store


def restore_archive(
    store: Any,
    path: Path,
    name: str,
    model_version: str,
    vectors: Vectors | None = None,
    on_chunk: Callable[[int], None] = lambda n: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> ArchiveInfo:
    """Create collection ``name`` from the archive at ``path`` (verified first), in
    ``model_version``: the archive's own, or another when ``vectors`` gives each chunk's
    vectors in it (re-encoding). ``CollectionExists`` if ``name`` is taken."""
    info, _ = verify_archive(path)
    if vectors is None and model_version != info.model_version:
        raise ArchiveError(
            f"the archive is of the embedding space {info.model_version!r}, this server's is "
            f"{model_version!r}: restore with reembed to encode its images and texts again"
        )
    if not COLLECTION_NAME.match(name):
        raise ValueError(COLLECTION_NAME_RULE)
    if name in store.collections or name in store.broken:
        raise CollectionExists(f"collection {name!r} already exists")
    try:  # the archive's index, if this store's backend builds it; else the default one
        spec = store.backends.check(info.dim, info.index_spec)
    except (StoreError, ValueError):
        spec = store.backends.check(info.dim, None)
    shadow = f"{SHADOW_PREFIX}restore.{name}.{uuid.uuid4().hex[:8]}"
    with store.locked() as writer:
        writer.add_collection(
            shadow, uuid.uuid4().hex, spec, info.dim, model_version, info.created_at
        )
    try:
        with tarfile.open(path, mode="r:") as tar:
            present = set(tar.getnames())
            n = 0
            while f"items/{n:06d}.jsonl" in present:
                if should_stop():
                    raise InterruptedError("stopped")
                items = _items(tar, n)
                archived = _vectors(tar, n, len(items), info.dim)
                rows = archived if vectors is None else vectors(items, archived)
                store.upsert(shadow, items, rows, model_version)
                on_chunk(len(items))
                n += 1
        with store.locked() as writer:
            if writer.live(name) is not None:
                raise CollectionExists(f"collection {name!r} was created meanwhile")
            writer.replace({name: shadow})
        for side in store.get(name).sides.values():
            side.dirty += 1  # its indexes are snapshotted under the new name
        store.snapshots.remove_folder(shadow)
        return info
    except BaseException:
        if shadow in store.collections:
            store.delete_collection(shadow)
        raise


def _items(tar: tarfile.TarFile, n: int) -> list[NewItem]:
    f = tar.extractfile(f"items/{n:06d}.jsonl")
    assert f is not None
    out = []
    for line in io.TextIOWrapper(f, encoding="utf-8"):
        try:
            r = json.loads(line)
            modality = Modality(r["modality"])
        except (ValueError, KeyError, TypeError):
            raise ArchiveError(f"items/{n:06d}.jsonl holds a record that cannot be read") from None
        content = None
        if modality is Modality.IMAGE and r.get("content_sha256"):
            blob = tar.extractfile(f"images/{r['content_sha256']}")
            if blob is None:
                raise ArchiveError(f"the image of {r['id']!r} is missing")
            content = blob.read()
        out.append(
            NewItem(
                str(r["id"]),
                modality,
                r.get("metadata") or {},
                text=r.get("text"),
                content=content,
                media_type=r.get("media_type"),
                content_sha256=r.get("content_sha256"),
                created_at=r.get("created_at"),
            )
        )
    return out


def _vectors(tar: tarfile.TarFile, n: int, count: int, dim: int) -> np.ndarray:
    f: IO[bytes] | None = tar.extractfile(f"items/{n:06d}.f32")
    assert f is not None
    data = f.read()
    if len(data) != count * dim * 4:
        raise ArchiveError(f"items/{n:06d}.f32 holds {len(data)} bytes, not {count} vectors")
    vectors = np.frombuffer(data, dtype="<f4").reshape(count, dim).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise ArchiveError(f"items/{n:06d}.f32 holds a number that is not finite")
    return vectors
