"""Durable collections: items in the catalogue (the source of truth), vectors in a vector
backend. Create, list and delete collections; upsert, delete and read items; search one
modality with optional metadata filters. Writes commit to the catalogue first, then update
the in-memory indexes under the collection's lock, so an acknowledged write survives a
crash and is searchable once the call returns. Dumps and recovery live in
``index.vectors.dumps``, a move to another model version in ``index.migration``, filters
in ``index.catalogue.filters``, following other servers in ``index.follow``. All methods
block; callers on an event loop run them in an executor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np

from index.catalogue.base import Conn
from index.catalogue.rows import ITEM_COLUMNS, item_from_row, stored_versions
from index.errors import (
    CollectionExists,
    CollectionMoved,
    DimensionMismatch,
    UnknownCollection,
    UnknownItem,
)
from index.filter_tree import Filter, as_tree
from index.follow import Follower
from index.live import SHADOW_PREFIX, LiveCollection
from index.lock import lock_data_dir
from index.search import (
    Allowed,
    allowed_labels,
    check_model,
    item_vector,
    items_by_label,
    lexical_search,
    search_collection,
    tree_of,
    vectors_after,
)
from index.state import open_state
from index.types import CollectionInfo, Hit, Item, Modality, NewItem, StoredVersion
from index.values import check_item
from index.vectors.backend import BackendFactory
from index.vectors.faiss_backends import FaissBackends
from index.writes import LockedWriter, digest_of

log = logging.getLogger(__name__)

DUMP_EVERY = 10_000  # an index is dumped after this many changes, besides the interval
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
COLLECTION_NAME_RULE = (
    "collection names are 1-64 characters of letters, digits, '_', '.', '-', "
    "starting with a letter or digit"
)


class CollectionStore:
    def __init__(
        self,
        data_dir: Path | str,
        *,
        backends: BackendFactory | None = None,
        store_images: bool = True,
        index_dump_every: int = DUMP_EVERY,
        database_url: str | None = None,
        shared_dir: Path | str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """``shared_dir``: where the image files and the SQLite catalogue are, when other
        servers reach them too (then this store follows their writes); unset, the data dir
        holds them for this server alone. A PostgreSQL catalogue is shared either way.
        ``progress`` hears which collection's indexes are being built, for a readiness
        probe to show."""
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock_data_dir(self.data_dir)
        self.index_dir = self.data_dir / "indexes"
        self.backends = backends = backends or FaissBackends()
        try:
            root = Path(shared_dir) if shared_dir is not None else self.data_dir
            self.state = open_state(
                root,
                self.index_dir,
                backends,
                store_images,
                index_dump_every,
                database_url,
                shared=shared_dir is not None,
            )
            # Read-only views of the state for the store's callers (the same objects).
            self.db, self.blobs, self.store_images = self.state.db, self.state.blobs, store_images
            self.garbage = self.state.garbage
            self.dumps = self.state.dumps
            # What serves and what cannot, as views: only the state's writer changes them.
            self.collections = MappingProxyType(self.state.collections)
            self.broken = MappingProxyType(self.state.broken)
            self._writer = LockedWriter(self.state)
            self._follower = Follower(self.state)
            self._closed = False
            self.state.drop_unfinished()
            self.state.load(progress)
        except BaseException:
            self.backends.close()
            os.close(self._lock)
            raise

    def close(self) -> None:
        """Dump what changed and release everything."""
        if self._closed:
            return
        self.dumps.wait_idle()
        self.dump(only_dirty=True)
        self._closed = True
        self.backends.close()
        self.db.close()
        os.close(self._lock)  # and with it the lock

    def dump(self, only_dirty: bool = False) -> int:
        """Write every (or every changed) index to disk; returns how many were written."""
        return self.dumps.write_all(list(self.collections.values()), only_dirty)

    def follow(self, held: bool = False) -> bool:
        """Bring this server level with writes other servers made to a shared catalogue
        (``index.follow``); whether anything changed. ``held``: the caller holds the
        write lock (``locked``)."""
        return self._follower.step(held)

    def wait_idle(self) -> None:
        """Wait for background training and compaction (tests, shutdown)."""
        self.dumps.wait_idle()

    # --- collections ------------------------------------------------------------------------
    def create_collection(
        self, name: str, dim: int, model_version: str, index_spec: str | None = None
    ) -> CollectionInfo:
        if not COLLECTION_NAME.match(name):
            raise ValueError(COLLECTION_NAME_RULE)
        spec = self.backends.check(dim, index_spec)
        with self.db.write_lock:
            if name in self.collections or name in self.broken:
                raise CollectionExists(f"collection {name!r} already exists")
            uid, now = uuid.uuid4().hex, time.time()
            self._writer.add_collection(name, uid, spec, dim, model_version, now)
        return self.get_collection(name)

    def list_collections(self) -> list[CollectionInfo]:
        names = [n for n in self.collections if not n.startswith(SHADOW_PREFIX)]
        return [self.get_collection(name) for name in sorted([*names, *self.broken])]

    def get_collection(self, name: str) -> CollectionInfo:
        """What a collection holds, a broken one included (with its ``error``)."""
        broken = self.broken.get(name)
        return broken if broken is not None else self.current(name, strict=False).info()

    def serving(self, name: str) -> CollectionInfo:
        """``get_collection`` for a collection about to be used: a broken one raises."""
        return self.current(name, strict=False).info()

    def current(self, name: str, strict: bool = True) -> LiveCollection:
        """``get``, with any index that missed a change (its backend failed it, or the
        catalogue went away around a commit) caught up from the catalogue first; if that
        fails too, the reason is raised (``strict``) or logged (what it says of itself)."""
        c = self.get(name)
        behind = [m for m, side in c.sides.items() if side.lagging]
        if behind:
            try:
                self.dumps.apply(c, behind, lambda m, side: None)  # catches lagging sides up
            except Exception:
                if strict:
                    raise
        return c

    def delete_collection(self, name: str) -> None:
        """Delete a collection, its items, its image files no other item uses, its
        snapshots, and cancel its jobs."""
        with self.locked() as writer:
            writer.delete_collection(name)

    @contextlib.contextmanager
    def locked(self) -> Iterator[LockedWriter]:
        """Hold the write lock: no other write lands until the block ends."""
        with self.db.write_lock:
            yield self._writer

    def model_version_of(self, name: str) -> str:
        """``name``'s model version, lock-free (fit for the event loop); raises as ``get``."""
        return self.get(name).model_version

    def get(self, name: str) -> LiveCollection:
        """The collection serving under ``name``; on a shared catalogue, one another
        server created since this one last followed is opened here and now (a client
        that created it through another server writes to it next)."""
        try:
            return self.state.get(name)
        except UnknownCollection:
            if not self.state.shared or not self._follower.open_one(name):
                raise
        return self.state.get(name)

    def exists(self, name: str) -> bool:
        """Whether ``name`` is taken, by a collection serving, hidden or broken."""
        return name in self.collections or name in self.broken

    def mark_changed(self, name: str) -> None:
        """Have ``name``'s indexes written to disk at the next dump (they moved under
        this name: a swap, a restore)."""
        for side in self.get(name).sides.values():
            side.dirty += 1

    def is_current(self, c: LiveCollection) -> bool:
        """Whether ``c`` still serves under its name (not deleted, not swapped)."""
        return self.collections.get(c.name) is c

    # --- items ------------------------------------------------------------------------------
    def upsert(
        self,
        name: str,
        items: Sequence[NewItem],
        vectors: np.ndarray,
        model_version: str,
        extra: Callable[[Conn], None] | None = None,
        uid: str | None = None,
    ) -> list[str]:
        """Store ``items`` with their ``vectors`` (row i belongs to item i); an existing id
        is replaced. Returns the ids once they are durable and searchable. ``extra`` runs
        inside the same transaction (a job recording its progress with its items). With
        ``uid``, only into that incarnation of the collection: not into one deleted and
        created again under the same name since the caller looked."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        c = self.get(name)
        if vectors.ndim != 2 or vectors.shape != (len(items), c.dim):
            raise DimensionMismatch(
                f"expected {len(items)} vectors of dimension {c.dim}, got shape {vectors.shape}"
            )
        check_model(c, model_version)
        for it in items:
            check_item(it.id, it.text, it.metadata)
        self.backends.check_items(items)
        if not items and extra is None:
            return []
        # Image files are written and fsynced before the global write lock is taken: other
        # writers do not wait on this request's disk.
        if self.store_images:
            for it in items:
                if it.content is not None:
                    self.blobs.put(it.content, digest_of(it))

        def write(writer: LockedWriter) -> LiveCollection:
            c = self.get(name)  # may have been deleted (or replaced) while we waited
            if uid is not None and c.uid != uid:
                raise UnknownCollection(f"collection {name!r} was deleted (and created again)")
            check_model(c, model_version)
            writer.upsert(c, items, vectors, model_version, extra)
            return c

        c = self._write(write)
        self.dumps.after_write(c, self.is_current)
        return [it.id for it in items]

    def delete_item(self, name: str, item_id: str) -> None:
        def delete(writer: LockedWriter) -> LiveCollection:
            c = self.get(name)
            writer.delete(c, item_id)
            return c

        c = self._write(delete)
        self.dumps.after_write(c, self.is_current)

    def _write(self, write: Callable[[LockedWriter], LiveCollection]) -> LiveCollection:
        """``write`` under the write lock; on a shared catalogue, once more after
        following, when another server replaced or deleted the collection meanwhile (the
        second try then sees the collection as it is, or that it is gone)."""
        try:
            with self.locked() as writer:
                return write(writer)
        except CollectionMoved:
            self.follow()
        with self.locked() as writer:
            return write(writer)

    def get_item(self, name: str, item_id: str) -> Item:
        self.get(name)
        row = (
            self.db.reader()
            .execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE collection = ? AND id = ?",
                (name, item_id),
            )
            .fetchone()
        )
        if row is None:
            raise UnknownItem(f"item {item_id!r} is not in collection {name!r}")
        return item_from_row(row)

    def existing(self, name: str, ids: Sequence[str]) -> dict[str, StoredVersion]:
        """What is stored under each of ``ids`` that exists."""
        self.get(name)
        return stored_versions(self.db.reader(), name, ids)

    def get_item_content(self, name: str, item_id: str) -> tuple[bytes, str, str]:
        """The stored image of an image item: its bytes, media type and SHA-256."""
        item = self.get_item(name, item_id)
        if item.content_sha256 is None or item.modality is not Modality.IMAGE:
            raise UnknownItem(f"item {item_id!r} has no stored image")
        try:
            data = self.blobs.get(item.content_sha256)
        except FileNotFoundError as exc:
            raise UnknownItem(f"the stored image of {item_id!r} is missing") from exc
        return data, item.media_type or "application/octet-stream", item.content_sha256

    # --- search -----------------------------------------------------------------------------
    def search(
        self,
        name: str,
        target: Modality,
        xq: np.ndarray,
        k: int,
        *,
        model_version: str,
        where: Filter | Allowed | None = None,
        with_vectors: bool = False,
        deadline: float | None = None,
    ) -> list[list[Hit]]:
        """Best ``k`` items of modality ``target`` for each query row (``index.search``);
        the filter's reads stop at ``deadline`` (``time.monotonic()``; ``Interrupted``).
        A filter several rankings share is read once beforehand (``allowed``)."""
        try:
            return search_collection(
                self.current(name),
                self.db,
                self.is_current,
                target,
                xq,
                k,
                model_version=model_version,
                where=tree_of(where),
                with_vectors=with_vectors,
                deadline=deadline,
                still_stored=self._follower.still_stored if self.state.shared else None,
            )
        except CollectionMoved:
            self.follow()  # then the caller embeds again for the version there now
            raise

    def lexical(
        self,
        name: str,
        text: str,
        depth: int,
        where: Filter | Allowed | None = None,
        deadline: float | None = None,
    ) -> list[Hit]:
        """The best ``depth`` texts for the words of ``text``, by BM25
        (``index.catalogue.lexical``), read until ``deadline`` at the latest."""
        return lexical_search(self.get(name), self.db, text, depth, tree_of(where), deadline)

    def allowed(
        self,
        name: str,
        where: Filter,
        modalities: Sequence[Modality],
        deadline: float | None = None,
    ) -> Allowed | None:
        """What ``where`` keeps of the collection's items of ``modalities``, read once for
        the rankings of a search that share it (None: no filter)."""
        tree = as_tree(where)
        if tree is None:
            return None
        return allowed_labels(self.get(name), self.db, tree, modalities, deadline)

    def size(self, name: str, modality: Modality) -> int:
        """How many items of ``modality`` the collection holds (from its index: no read)."""
        return int(self.get(name).sides[modality].index.ntotal)

    def item_vector(
        self, name: str, item_id: str, model_version: str
    ) -> tuple[Modality, np.ndarray]:
        """The modality and stored vector of one item."""
        return item_vector(self.get(name), self.db, item_id, model_version)

    def vectors_after(
        self, name: str, modality: Modality, after: int, limit: int
    ) -> tuple[list[int], list[str], np.ndarray]:
        """Stored vectors in label order, ``limit`` at a time (``index.search``)."""
        return vectors_after(self.get(name), self.db, modality, after, limit)

    def items_by_label(self, name: str, labels: Sequence[int]) -> dict[int, Item]:
        """Items by their row label (the integer ids of the clip-retrieval API)."""
        self.get(name)
        return items_by_label(self.db, name, labels)
