"""Durable collections: items in SQLite (the source of truth), vectors in FAISS.

Every acknowledged write is committed to SQLite in WAL mode with ``synchronous=FULL``
before the call returns, so it survives ``kill -9`` (and power loss). The FAISS indexes
live in memory; snapshots of them are written now and then (temp file, fsync, rename)
together with two watermarks: the highest item label and the highest tombstone sequence
they contain. On start each snapshot is loaded and caught up from SQLite (labels added
and tombstones written after the watermarks); a missing, stale or unreadable snapshot is
rebuilt from the stored embeddings.

Labels are SQLite AUTOINCREMENT row ids and are never reused: replacing an item inserts a
new row and leaves a tombstone for the old label, so catch-up needs no ordering.

Concurrency: one lock serialises writers (SQLite has one writer anyway); each collection
has a readers-writer lock so searches share an index and only index mutations exclude
them. All methods block; callers on an event loop run them in an executor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from index.blobs import BlobStore, atomic_write, sha256_hex
from index.errors import (
    CollectionExists,
    DimensionMismatch,
    InvalidFilter,
    ModelMismatch,
    UnknownCollection,
    UnknownItem,
)
from index.rwlock import RWLock
from index.types import (
    CollectionInfo,
    Hit,
    Item,
    Modality,
    NewItem,
    StoredItem,
    StoredVersion,
)
from index.vector_index import VectorIndex, gpu_count, new_gpu_resources, normalize_spec

log = logging.getLogger(__name__)

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SHADOW_PREFIX = "."  # no user name starts with it: re-embedding copies live under it
_CHUNK = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    index_spec TEXT NOT NULL,
    dim INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    label INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    modality TEXT NOT NULL,
    metadata TEXT NOT NULL,
    text TEXT,
    content_sha256 TEXT,
    media_type TEXT,
    embedding BLOB NOT NULL,
    raw_embedding BLOB,
    model_version TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (collection, id)
);
CREATE INDEX IF NOT EXISTS items_by_modality ON items (collection, modality, label);
CREATE INDEX IF NOT EXISTS items_by_content ON items (content_sha256);
CREATE TABLE IF NOT EXISTS tombstones (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    modality TEXT NOT NULL,
    label INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_by_collection ON tombstones (collection, modality, seq);
"""

_ITEM_COLUMNS = (
    "id, modality, metadata, text, content_sha256, media_type, model_version, created_at"
)


@dataclass
class _Side:
    """One modality of one collection: its index and what the index already contains."""

    index: VectorIndex
    label_mark: int = 0  # highest item label applied to the index
    tomb_mark: int = 0  # highest tombstone seq applied to the index
    dirty: int = 0  # changes since the last snapshot
    busy: bool = False  # a background snapshot or rebuild owns this side


@dataclass
class _Collection:
    name: str
    uid: str
    spec: str
    dim: int
    model_version: str
    created_at: float
    sides: dict[Modality, _Side]
    lock: RWLock = field(default_factory=RWLock)
    gpu: bool = False

    @contextlib.contextmanager
    def searching(self) -> Iterator[None]:
        # FAISS CPU indexes take concurrent searches; GPU resources do not.
        with self.lock.write() if self.gpu else self.lock.read():
            yield


class CollectionStore:
    def __init__(
        self,
        data_dir: Path | str,
        *,
        store_images: bool = True,
        use_gpu: bool | None = None,
        snapshot_every: int = 10_000,
        nprobe: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.index_dir = self.data_dir / "indexes"
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.store_images = store_images
        self.snapshot_every = snapshot_every
        self.nprobe = nprobe
        want_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
        self._gpu_resources: Any = None
        if want_gpu:
            self._gpu_resources = new_gpu_resources()
        self._db_path = self.data_dir / "xmodal.sqlite3"
        self._writer = self._connect()
        self._writer.executescript(_SCHEMA)
        columns = {row[1] for row in self._writer.execute("PRAGMA table_info(items)")}
        if "raw_embedding" not in columns:  # a database from before mapped versions
            self._writer.execute("ALTER TABLE items ADD COLUMN raw_embedding BLOB")
        self._write_lock = threading.Lock()
        self._busy_lock = threading.Lock()
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_conns_lock = threading.Lock()
        self._collections: dict[str, _Collection] = {}
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._drop_shadows()
        for row in self._writer.execute(
            "SELECT name, uid, index_spec, dim, model_version, created_at FROM collections"
        ).fetchall():
            self._collections[row[0]] = self._open_collection(*row)

    # --- connections ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._db_path, isolation_level=None, check_same_thread=False, timeout=30
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._connect()
            self._readers.conn = conn
            with self._reader_conns_lock:
                self._reader_conns.append(conn)
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A durable write transaction on the store's database, serialised with item writes
        (for state that lives beside the items, such as jobs)."""
        with self._write_lock, self._transaction() as conn:
            yield conn

    def read_connection(self) -> sqlite3.Connection:
        """This thread's read-only view of the database."""
        return self._reader()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Run under ``_write_lock``: one IMMEDIATE transaction, committed durably."""
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Snapshot what changed and release everything."""
        if self._closed:
            return
        for t in list(self._threads):
            t.join()
        self.snapshot(only_dirty=True)
        self._closed = True
        self._writer.close()
        with self._reader_conns_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    # --- collections ------------------------------------------------------------------------
    def create_collection(
        self, name: str, dim: int, model_version: str, index_spec: str | None = None
    ) -> CollectionInfo:
        if not COLLECTION_NAME.match(name):
            raise ValueError(
                "collection names are 1-64 characters of letters, digits, '_', '.', '-', "
                "starting with a letter or digit"
            )
        spec = normalize_spec(index_spec)
        VectorIndex(dim, spec)  # raises InvalidIndexSpec before anything is written
        with self._write_lock:
            if name in self._collections:
                raise CollectionExists(f"collection {name!r} already exists")
            uid, now = uuid.uuid4().hex, time.time()
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO collections"
                    " (name, uid, index_spec, dim, model_version, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (name, uid, spec, dim, model_version, now),
                )
            self._collections[name] = self._new_collection(name, uid, spec, dim, model_version, now)
        return self.get_collection(name)

    def list_collections(self) -> list[CollectionInfo]:
        names = [n for n in sorted(self._collections) if not n.startswith(SHADOW_PREFIX)]
        return [self.get_collection(name) for name in names]

    def get_collection(self, name: str) -> CollectionInfo:
        c = self._get(name)
        with c.lock.read():
            return CollectionInfo(
                name=c.name,
                index_spec=c.spec,
                dim=c.dim,
                model_version=c.model_version,
                created_at=c.created_at,
                counts={m: s.index.ntotal for m, s in c.sides.items()},
                trained={m: s.index.trained for m, s in c.sides.items()},
            )

    def delete_collection(self, name: str) -> None:
        with self._write_lock:
            c = self._get(name)
            with self._transaction() as conn:
                digests = _delete_rows(conn, name)
            with c.lock.write():
                del self._collections[name]
            self._collect_garbage(digests)
            for m in Modality:
                with contextlib.suppress(FileNotFoundError):
                    self._snapshot_path(name, m).unlink()
            with contextlib.suppress(OSError):
                (self.index_dir / name).rmdir()

    def _get(self, name: str) -> _Collection:
        c = self._collections.get(name)
        if c is None:
            raise UnknownCollection(f"collection {name!r} does not exist")
        return c

    # --- items ------------------------------------------------------------------------------
    def upsert(
        self,
        name: str,
        items: Sequence[NewItem],
        vectors: np.ndarray,
        model_version: str,
        extra: Callable[[sqlite3.Connection], None] | None = None,
    ) -> list[str]:
        """Store ``items`` with their ``vectors`` (row i belongs to item i); an existing id
        is replaced. Returns the ids once they are durable and searchable. ``extra`` runs
        inside the same transaction (a job recording its progress with its items)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        c = self._get(name)
        if vectors.ndim != 2 or vectors.shape != (len(items), c.dim):
            raise DimensionMismatch(
                f"expected {len(items)} vectors of dimension {c.dim}, got shape {vectors.shape}"
            )
        self._check_model(c, model_version)
        if not items and extra is None:
            return []
        with self._write_lock:
            c = self._get(name)  # may have been deleted while we waited
            self._upsert_locked(c, items, vectors, model_version, extra)
        self._after_write(c)
        return [it.id for it in items]

    def _upsert_locked(
        self,
        c: _Collection,
        items: Sequence[NewItem],
        vectors: np.ndarray,
        model_version: str,
        extra: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """``upsert`` for a caller that holds ``_write_lock``."""
        name = c.name
        now = time.time()
        digests = [_digest(it) if self.store_images else None for it in items]
        for row, (it, digest) in enumerate(zip(items, digests, strict=True)):
            if it.content is not None and digest is not None:
                self.blobs.put(it.content, digest)
            elif digest is not None and not self.blobs.exists(digest):
                # Written by a worker, then collected by a concurrent delete of another
                # item with the same bytes: keep the item, say it has no image.
                log.warning("stored image of %r vanished before its commit", it.id)
                digests[row] = None
        replaced: list[tuple[Modality, int, str | None]] = []
        added: list[tuple[Modality, int, int]] = []  # modality, label, row in vectors
        with self._transaction() as conn:
            for row, (it, digest) in enumerate(zip(items, digests, strict=True)):
                old = _find(conn, name, it.id)
                if old is not None:
                    conn.execute("DELETE FROM items WHERE label = ?", (old[0],))
                    conn.execute(
                        "INSERT INTO tombstones (collection, modality, label) VALUES (?, ?, ?)",
                        (name, old[1], old[0]),
                    )
                    replaced.append((Modality(old[1]), int(old[0]), old[2]))
                raw = it.raw_embedding
                cur = conn.execute(
                    "INSERT INTO items (collection, id, modality, metadata, text,"
                    " content_sha256, media_type, embedding, raw_embedding, model_version,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        it.id,
                        it.modality.value,
                        json.dumps(it.metadata, ensure_ascii=False, separators=(",", ":")),
                        it.text,
                        digest,
                        it.media_type if digest is not None else None,
                        vectors[row].tobytes(),
                        None if raw is None else np.asarray(raw, np.float32).tobytes(),
                        model_version,
                        it.created_at or now,
                    ),
                )
                assert cur.lastrowid is not None
                added.append((it.modality, int(cur.lastrowid), row))
            if extra is not None:
                extra(conn)
            tomb_mark = self._max_tombstone(conn)
        with c.lock.write():
            for m in Modality:
                side = c.sides[m]
                gone = [label for mod, label, _ in replaced if mod is m]
                side.index.remove(np.array(gone, dtype=np.int64))
                mine = [(label, row) for mod, label, row in added if mod is m]
                if mine:
                    labels = np.array([label for label, _ in mine], dtype=np.int64)
                    side.index.add(labels, vectors[[row for _, row in mine]])
                    side.label_mark = max(side.label_mark, int(labels.max()))
                if gone:
                    side.tomb_mark = max(side.tomb_mark, tomb_mark)
                side.dirty += len(gone) + len(mine)
        self._collect_garbage([d for _, _, d in replaced if d is not None])

    def delete_item(self, name: str, item_id: str) -> None:
        with self._write_lock:
            c = self._get(name)
            self._delete_locked(c, item_id)
        self._after_write(c)

    def _delete_locked(self, c: _Collection, item_id: str) -> None:
        with self._transaction() as conn:
            old = _find(conn, c.name, item_id)
            if old is None:
                raise UnknownItem(f"item {item_id!r} is not in collection {c.name!r}")
            conn.execute("DELETE FROM items WHERE label = ?", (old[0],))
            cur = conn.execute(
                "INSERT INTO tombstones (collection, modality, label) VALUES (?, ?, ?)",
                (c.name, old[1], old[0]),
            )
            assert cur.lastrowid is not None
        side = c.sides[Modality(old[1])]
        with c.lock.write():
            side.index.remove(np.array([old[0]], dtype=np.int64))
            side.tomb_mark = max(side.tomb_mark, int(cur.lastrowid))
            side.dirty += 1
        if old[2] is not None:
            self._collect_garbage([old[2]])

    def get_item(self, name: str, item_id: str) -> Item:
        self._get(name)
        row = (
            self._reader()
            .execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE collection = ? AND id = ?",
                (name, item_id),
            )
            .fetchone()
        )
        if row is None:
            raise UnknownItem(f"item {item_id!r} is not in collection {name!r}")
        return _item(row)

    def existing(self, name: str, ids: Sequence[str]) -> dict[str, StoredVersion]:
        """What is stored under each of ``ids`` that exists."""
        self._get(name)
        out: dict[str, StoredVersion] = {}
        conn = self._reader()
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                "SELECT id, modality, content_sha256, text, model_version FROM items"
                f" WHERE collection = ? AND id IN ({marks})",
                [name, *chunk],
            ):
                out[row[0]] = StoredVersion(Modality(row[1]), row[2], row[3], row[4])
        return out

    def get_item_content(self, name: str, item_id: str) -> tuple[bytes, str]:
        item = self.get_item(name, item_id)
        if item.content_sha256 is None:
            raise UnknownItem(f"item {item_id!r} has no stored image")
        try:
            return self.blobs.get(
                item.content_sha256
            ), item.media_type or "application/octet-stream"
        except FileNotFoundError as exc:
            raise UnknownItem(f"the stored image of {item_id!r} is missing") from exc

    def _collect_garbage(self, digests: Sequence[str]) -> None:
        """Remove image files no item refers to any more (call under ``_write_lock``)."""
        for digest in set(digests):
            still = self._writer.execute(
                "SELECT 1 FROM items WHERE content_sha256 = ? LIMIT 1", (digest,)
            ).fetchone()
            if still is None:
                self.blobs.delete(digest)

    @staticmethod
    def _max_tombstone(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT MAX(seq) FROM tombstones").fetchone()
        return int(row[0] or 0)

    # --- search -----------------------------------------------------------------------------
    def search(
        self,
        name: str,
        target: Modality,
        xq: np.ndarray,
        k: int,
        *,
        model_version: str,
        where: dict[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """Best ``k`` items of modality ``target`` for each query row, best first;
        ``where`` keeps only items whose metadata has each key equal to its value."""
        c = self._get(name)
        self._check_model(c, model_version)
        allowed = self._filter_labels(name, target, where) if where else None
        rows: dict[int, tuple[Any, ...]] = {}
        with c.searching():
            if self._collections.get(name) is not c:
                # Swapped for a re-embedded copy since we looked it up: the caller embeds
                # the query again for the version now there.
                raise ModelMismatch(f"collection {name!r} moved to another model version")
            results = c.sides[target].index.search(xq, k, allowed=allowed)
            # Rows are read under the lock too, so a swap cannot delete them in between.
            wanted = sorted({int(x) for r in results for x in r.labels})
            conn = self._reader()
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                sql = "SELECT label, id, modality, metadata, text FROM items"
                sql += f" WHERE label IN ({marks})"
                for row in conn.execute(sql, chunk):
                    rows[int(row[0])] = row
        hits: list[list[Hit]] = []
        for r in results:
            found = []
            for label, score in zip(r.labels, r.scores, strict=True):
                row = rows.get(int(label))
                if row is None:  # deleted between the index search and this read
                    continue
                found.append(
                    Hit(row[1], float(score), Modality(row[2]), json.loads(row[3]), row[4])
                )
            hits.append(found)
        return hits

    def _filter_labels(self, name: str, modality: Modality, where: dict[str, Any]) -> np.ndarray:
        clauses: list[str] = []
        params: list[Any] = []
        for key, value in where.items():
            path = '$."' + str(key).replace('"', '""') + '"'
            if value is None:
                clauses.append("json_type(metadata, ?) = 'null'")
                params.append(path)
            elif isinstance(value, (str, int, float, bool)):
                clauses.append("json_extract(metadata, ?) = ?")
                params.extend([path, value])
            else:
                raise InvalidFilter(
                    f"filter value for {key!r} must be a string, number, boolean or null"
                )
        sql = "SELECT label FROM items WHERE collection = ? AND modality = ? AND " + " AND ".join(
            clauses
        )
        rows = self._reader().execute(sql, [name, modality.value, *params]).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    @staticmethod
    def _check_model(c: _Collection, model_version: str) -> None:
        if model_version != c.model_version:
            raise ModelMismatch(
                f"collection {c.name!r} holds vectors of model {c.model_version!r}, but the server "
                f"runs {model_version!r}; serve that model or re-create the collection"
            )

    # --- moving collections to another model version -------------------------------------------
    def marks(self, name: str) -> tuple[int, int]:
        """The highest item label and tombstone seq of ``name``: where a copy is up to."""
        self._get(name)
        conn = self._reader()
        label = conn.execute(
            "SELECT MAX(label) FROM items WHERE collection = ?", (name,)
        ).fetchone()[0]
        seq = conn.execute(
            "SELECT MAX(seq) FROM tombstones WHERE collection = ?", (name,)
        ).fetchone()[0]
        return int(label or 0), int(seq or 0)

    def items_after(self, name: str, after_label: int, limit: int = 512) -> list[StoredItem]:
        """Up to ``limit`` items of ``name`` with labels above ``after_label``, in label order."""
        rows = self._reader().execute(
            "SELECT label, id, modality, metadata, text, content_sha256, media_type, embedding,"
            " raw_embedding, created_at FROM items WHERE collection = ? AND label > ?"
            " ORDER BY label LIMIT ?",
            (name, after_label, limit),
        )
        return [
            StoredItem(
                label=int(r[0]),
                id=r[1],
                modality=Modality(r[2]),
                metadata=json.loads(r[3]),
                text=r[4],
                content_sha256=r[5],
                media_type=r[6],
                embedding=np.frombuffer(r[7], dtype=np.float32),
                raw_embedding=None if r[8] is None else np.frombuffer(r[8], dtype=np.float32),
                created_at=r[9],
            )
            for r in rows
        ]

    def ids_only_in(self, name: str, other: str) -> list[str]:
        """Ids that ``name`` holds and ``other`` does not (deleted from ``other`` since
        ``name`` copied them)."""
        rows = self._reader().execute(
            "SELECT id FROM items WHERE collection = ?"
            " EXCEPT SELECT id FROM items WHERE collection = ?",
            (name, other),
        )
        return [r[0] for r in rows]

    def create_shadow(self, name: str, model_version: str) -> str:
        """A hidden, empty copy of ``name``'s configuration for ``model_version``'s vectors."""
        c = self._get(name)
        shadow = f"{SHADOW_PREFIX}{name}.{uuid.uuid4().hex[:8]}"
        uid, now = uuid.uuid4().hex, time.time()
        with self._write_lock:
            with self._transaction() as conn:
                conn.execute(
                    "INSERT INTO collections"
                    " (name, uid, index_spec, dim, model_version, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (shadow, uid, c.spec, c.dim, model_version, c.created_at),
                )
            self._collections[shadow] = self._new_collection(
                shadow, uid, c.spec, c.dim, model_version, now
            )
        return shadow

    def copy_into(
        self,
        shadow: str,
        items: Sequence[NewItem],
        vectors: np.ndarray,
        model_version: str,
        remove: Sequence[str] = (),
        locked: bool = False,
    ) -> None:
        """Write re-embedded items into a shadow and remove ids from it (``locked``: the
        caller holds the write lock, as ``swap``'s ``before`` does)."""

        def write() -> None:
            c = self._get(shadow)
            if items:
                self._upsert_locked(c, items, vectors, model_version)
            for item_id in remove:
                with contextlib.suppress(UnknownItem):
                    self._delete_locked(c, item_id)

        if locked:
            write()
        else:
            with self._write_lock:
                write()

    def drop_shadow(self, shadow: str) -> None:
        if shadow.startswith(SHADOW_PREFIX) and shadow in self._collections:
            self.delete_collection(shadow)

    def swap(
        self,
        names: Sequence[str],
        before: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        """Replace each collection ``name`` by its shadow, all in one transaction. ``before``
        runs first under the write lock (the last catch-up: no write can slip in), ``after``
        once the swap is done, still under it (switching the model that embeds new items)."""
        digests: list[str] = []
        with self._write_lock:
            if before is not None:
                before()
            pairs = [(n, self.shadow_of(n)) for n in names]
            olds = [self._get(n) for n, _ in pairs]
            with contextlib.ExitStack() as stack:
                for old in olds:  # in-flight searches finish on the old vectors first
                    stack.enter_context(old.lock.write())
                with self._transaction() as conn:
                    for name, shadow in pairs:
                        digests += _delete_rows(conn, name)
                        for table, column in (
                            ("items", "collection"),
                            ("tombstones", "collection"),
                            ("collections", "name"),
                        ):
                            conn.execute(
                                f"UPDATE {table} SET {column} = ? WHERE {column} = ?",
                                (name, shadow),
                            )
                for name, shadow in pairs:
                    moved = self._collections.pop(shadow)
                    moved.name = name
                    self._collections[name] = moved
            if after is not None:
                after()
            self._collect_garbage(digests)
        for name, shadow in pairs:
            for m in Modality:  # the moved indexes are snapshotted under their new name
                self._collections[name].sides[m].dirty += 1
            with contextlib.suppress(OSError):
                shutil.rmtree(self.index_dir / shadow)
            for m in Modality:
                with contextlib.suppress(FileNotFoundError):
                    self._snapshot_path(name, m).unlink()

    def shadow_of(self, name: str) -> str:
        prefix = f"{SHADOW_PREFIX}{name}."
        found = [n for n in self._collections if n.startswith(prefix)]
        if len(found) != 1:
            raise UnknownCollection(f"collection {name!r} has {len(found)} re-embedded copies")
        return found[0]

    def _drop_shadows(self) -> None:
        """Copies left by an activation that did not finish: it starts over."""
        with self._transaction() as conn:
            shadows = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM collections WHERE name LIKE ?", (SHADOW_PREFIX + "%",)
                )
            ]
            for shadow in shadows:
                _delete_rows(conn, shadow)
        for shadow in shadows:
            log.info("dropped %s, left by an unfinished activation", shadow)
            with contextlib.suppress(OSError):
                shutil.rmtree(self.index_dir / shadow)

    # --- snapshots, training, compaction ------------------------------------------------------
    def _snapshot_path(self, name: str, modality: Modality) -> Path:
        return self.index_dir / name / f"{modality.value}.xmidx"

    def snapshot(self, only_dirty: bool = False) -> int:
        """Write every (or every changed) index to disk; returns how many were written."""
        written = 0
        for c in list(self._collections.values()):
            for m, side in c.sides.items():
                if (only_dirty and not side.dirty) or not self._claim(side):
                    continue
                try:
                    self._snapshot_side(c, m)
                finally:
                    side.busy = False
                written += 1
        return written

    def _snapshot_side(self, c: _Collection, m: Modality) -> None:
        with c.lock.read():
            side = c.sides[m]
            meta = {"uid": c.uid, "label_mark": side.label_mark, "tomb_mark": side.tomb_mark}
            data = side.index.to_bytes(meta)
            dirty_then = side.dirty
        atomic_write(self._snapshot_path(c.name, m), data)
        with c.lock.write():
            side.dirty -= dirty_then
        with self.transaction() as conn:
            # Tombstones the snapshot already reflects are needed by no one.
            conn.execute(
                "DELETE FROM tombstones WHERE collection = ? AND modality = ? AND seq <= ?",
                (c.name, m.value, meta["tomb_mark"]),
            )

    def _after_write(self, c: _Collection) -> None:
        for m, side in c.sides.items():
            if side.index.needs_training() or side.index.needs_compaction():
                if self._claim(side):
                    self._spawn(self._rebuild_side, c, m)
            elif side.dirty >= self.snapshot_every and self._claim(side):
                self._spawn(self._snapshot_in_background, c, m)

    def _claim(self, side: _Side) -> bool:
        """Mark ``side`` busy for one background snapshot or rebuild; False if it already is."""
        with self._busy_lock:
            if side.busy:
                return False
            side.busy = True
            return True

    def _snapshot_in_background(self, c: _Collection, m: Modality) -> None:
        try:
            if self._collections.get(c.name) is c:
                self._snapshot_side(c, m)
        except Exception:
            log.exception("snapshot of %s/%s failed; SQLite still has every item", c.name, m.value)
        finally:
            c.sides[m].busy = False

    def _spawn(self, fn: Any, *args: Any) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        t = threading.Thread(target=fn, args=args, daemon=True, name=f"xmodal-{fn.__name__}")
        self._threads.append(t)
        t.start()

    def wait_idle(self) -> None:
        """Wait for background training and compaction (tests, shutdown)."""
        for t in list(self._threads):
            t.join()

    def _rebuild_side(self, c: _Collection, m: Modality) -> None:
        """Train or compact one index away from the lock, then swap it in caught up."""
        side = c.sides[m]
        try:
            label_mark, tomb_mark = side.label_mark, side.tomb_mark
            labels, xb = self._load_vectors(c.name, m, c.dim, max_label=label_mark)
            fresh = VectorIndex.build(
                c.dim, c.spec, labels, xb, gpu_resources=self._gpu_resources, nprobe=self.nprobe
            )
            with self._write_lock, c.lock.write():
                if self._collections.get(c.name) is not c:
                    return
                label_mark, tomb_mark = self._catch_up(
                    c.name, m, fresh, label_mark, tomb_mark, present=labels
                )
                c.sides[m] = _Side(fresh, label_mark, tomb_mark, side.dirty + 1)
            log.info("rebuilt %s/%s index (%s, %d vectors)", c.name, m.value, c.spec, fresh.ntotal)
        except Exception:
            log.exception("rebuilding %s/%s failed; the old index keeps serving", c.name, m.value)
            side.busy = False

    def _catch_up(
        self,
        name: str,
        m: Modality,
        index: VectorIndex,
        label_mark: int,
        tomb_mark: int,
        present: np.ndarray | None = None,
    ) -> tuple[int, int]:
        """Apply to ``index`` the tombstones after ``tomb_mark`` and the items after
        ``label_mark``; returns the new marks. ``present``, when known, lists the labels the
        index holds, so tombstones of rows it never saw are not applied."""
        conn = self._reader()
        tombs = conn.execute(
            "SELECT seq, label FROM tombstones WHERE collection = ? AND modality = ? AND seq > ?",
            (name, m.value, tomb_mark),
        ).fetchall()
        gone = [label for _, label in tombs if label <= label_mark]
        if present is not None:
            gone = [int(x) for x in np.intersect1d(np.array(gone, dtype=np.int64), present)]
        index.remove(np.array(gone, dtype=np.int64))
        tomb_mark = max([tomb_mark, *(seq for seq, _ in tombs)])
        labels, xb = self._load_vectors(name, m, index.d, min_label=label_mark)
        index.add(labels, xb)
        if len(labels):
            label_mark = int(labels.max())
        if index.needs_training():
            index.install_trained(index.train_template(index.training_sample(index.sample_cap)))
        return label_mark, tomb_mark

    def _load_vectors(
        self, name: str, m: Modality, dim: int, *, min_label: int = 0, max_label: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        sql = (
            "SELECT label, embedding FROM items WHERE collection = ? AND modality = ? AND label > ?"
        )
        params: list[Any] = [name, m.value, min_label]
        if max_label is not None:
            sql += " AND label <= ?"
            params.append(max_label)
        labels: list[int] = []
        chunks: list[bytes] = []
        for label, blob in self._reader().execute(sql + " ORDER BY label", params):
            labels.append(label)
            chunks.append(blob)
        if not labels:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        xb = np.frombuffer(b"".join(chunks), dtype=np.float32).reshape(len(labels), -1)
        return np.array(labels, dtype=np.int64), xb

    # --- start-up ---------------------------------------------------------------------------
    def _new_collection(
        self, name: str, uid: str, spec: str, dim: int, model_version: str, created_at: float
    ) -> _Collection:
        sides = {
            m: _Side(VectorIndex(dim, spec, gpu_resources=self._gpu_resources, nprobe=self.nprobe))
            for m in Modality
        }
        return _Collection(
            name,
            uid,
            spec,
            dim,
            model_version,
            created_at,
            sides,
            gpu=any(s.index.on_gpu for s in sides.values()),
        )

    def _open_collection(
        self, name: str, uid: str, spec: str, dim: int, model_version: str, created_at: float
    ) -> _Collection:
        c = self._new_collection(name, uid, spec, dim, model_version, created_at)
        for m in Modality:
            started = time.monotonic()
            index, label_mark, tomb_mark, how = self._load_snapshot(c, m)
            if index is None:
                labels, xb = self._load_vectors(name, m, dim)
                index = VectorIndex.build(
                    dim,
                    spec,
                    labels,
                    xb,
                    gpu_resources=self._gpu_resources,
                    nprobe=self.nprobe,
                )
                label_mark = int(labels.max()) if len(labels) else 0
                tomb_mark = self._max_tombstone(self._writer)
                how = "rebuilt from SQLite"
            else:
                label_mark, tomb_mark = self._catch_up(name, m, index, label_mark, tomb_mark)
            c.sides[m] = _Side(index, label_mark, tomb_mark, dirty=0 if how == "snapshot" else 1)
            log.info(
                "collection %s/%s: %d vectors, %s in %.2f s",
                name,
                m.value,
                index.ntotal,
                how,
                time.monotonic() - started,
            )
        c.gpu = any(s.index.on_gpu for s in c.sides.values())
        return c

    def _load_snapshot(
        self, c: _Collection, m: Modality
    ) -> tuple[VectorIndex | None, int, int, str]:
        path = self._snapshot_path(c.name, m)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, 0, 0, "no snapshot"
        try:
            index, meta = VectorIndex.from_bytes(
                data, gpu_resources=self._gpu_resources, nprobe=self.nprobe
            )
        except Exception as exc:  # any unreadable snapshot is rebuilt, never trusted
            log.warning("snapshot %s unreadable (%s); rebuilding from SQLite", path, exc)
            return None, 0, 0, "unreadable snapshot"
        if meta.get("uid") != c.uid or index.spec != c.spec or index.d != c.dim:
            log.warning("snapshot %s belongs to another collection or spec; rebuilding", path)
            return None, 0, 0, "stale snapshot"
        return index, int(meta["label_mark"]), int(meta["tomb_mark"]), "snapshot"


def _digest(item: NewItem) -> str | None:
    if item.content is not None:
        return sha256_hex(item.content)
    return item.content_sha256


def _delete_rows(conn: sqlite3.Connection, name: str) -> list[str]:
    """Delete a collection's rows; returns the image digests its items referred to."""
    digests = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT content_sha256 FROM items"
            " WHERE collection = ? AND content_sha256 IS NOT NULL",
            (name,),
        )
    ]
    conn.execute("DELETE FROM items WHERE collection = ?", (name,))
    conn.execute("DELETE FROM tombstones WHERE collection = ?", (name,))
    conn.execute("DELETE FROM collections WHERE name = ?", (name,))
    return digests


def _find(conn: sqlite3.Connection, name: str, item_id: str) -> tuple[int, str, str | None] | None:
    """The label, modality and image digest of an item, if it exists."""
    row: tuple[int, str, str | None] | None = conn.execute(
        "SELECT label, modality, content_sha256 FROM items WHERE collection = ? AND id = ?",
        (name, item_id),
    ).fetchone()
    return row


def _item(row: Sequence[Any]) -> Item:
    return Item(
        id=row[0],
        modality=Modality(row[1]),
        metadata=json.loads(row[2]),
        text=row[3],
        content_sha256=row[4],
        media_type=row[5],
        model_version=row[6],
        created_at=row[7],
    )
