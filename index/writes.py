"""The store's write path, and what a caller holding the write lock may do.

Every change to a collection's items goes through ``LockedWriter``: the store's own
writes (``CollectionStore.upsert``, ``delete_item``, ``create_collection``,
``delete_collection``) take the write lock and call it, and so does a migration
(``index.migration``), which holds the lock across several steps: it adds hidden
collections, fills them, and swaps them in for their originals, without reaching into
the store's internals. Each change commits to SQLite first, then updates the in-memory
indexes under the collection's lock.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from index.blobs import sha256_hex
from index.catalogue.base import Conn
from index.catalogue.jobs import cancel_jobs_of
from index.catalogue.rows import delete_rows, dumps, find_item, find_items, max_tombstone
from index.errors import CatalogueUnavailable, CollectionMoved, UnknownItem
from index.live import LiveCollection, Side
from index.state import StoreState
from index.types import Modality, NewItem
from index.values import InvalidValue

log = logging.getLogger(__name__)


def check_finite(items: Sequence[NewItem], vectors: np.ndarray) -> None:
    rows = ~np.isfinite(vectors).all(axis=1) if len(vectors) else np.zeros(0, bool)
    bad = [it.id for it, row in zip(items, rows, strict=True) if row]
    bad += [
        it.id
        for it in items
        if it.raw_embedding is not None and not np.isfinite(it.raw_embedding).all()
    ]
    if bad:
        raise InvalidValue(
            f"the vector of {bad[0]!r} is not finite (NaN or infinity), and "
            f"{len(bad) - 1} more: the model gave them; nothing was stored"
        )


def digest_of(item: NewItem) -> str | None:
    """The SHA-256 of an item's image: given by the caller that read the bytes, or hashed
    here when it was not."""
    if item.content is not None and item.content_sha256 is None:
        return sha256_hex(item.content)
    return item.content_sha256


@contextlib.contextmanager
def uncertain(c: LiveCollection) -> Iterator[None]:
    """A write whose catalogue went away mid-transaction may have committed before the
    connection died (the answer to ``COMMIT`` lost): the collection's indexes then catch
    up from whatever the catalogue holds before their next change or search
    (``Side.lagging``), instead of guessing."""
    try:
        yield
    except CatalogueUnavailable:
        for side in c.sides.values():
            side.lagging = True
        raise


def still_there(state: StoreState, conn: Conn, c: LiveCollection) -> None:
    """On a shared catalogue, inside a write's transaction: ``CollectionMoved`` unless
    ``c`` is still the collection under its name (not replaced or deleted by another
    server), so no write lands in a collection of another model version."""
    if not state.shared:
        return
    row = conn.execute("SELECT uid FROM collections WHERE name = ?", (c.name,)).fetchone()
    if row is None or row[0] != c.uid:
        raise CollectionMoved(f"collection {c.name!r} was replaced or deleted by another server")


class LockedWriter:
    """Changes to collections, for a caller that holds the store's write lock
    (``CollectionStore.locked``)."""

    def __init__(self, state: StoreState) -> None:
        self.state = state

    def live(self, name: str) -> LiveCollection | None:
        """The collection serving (or hidden) under ``name``, if any."""
        return self.state.collections.get(name)

    def names(self) -> list[str]:
        return list(self.state.collections)

    def add_collection(
        self, name: str, uid: str, spec: str, dim: int, model_version: str, created_at: float
    ) -> LiveCollection:
        """Record a new, empty collection and serve it under ``name``. Its indexes come
        first: a server that sees the row (a follower) finds a shared backend's index
        there to join, instead of building one of its own over it."""
        store = self.state
        c = store.dumps.new(name, uid, spec, dim, model_version, created_at)
        try:
            with store.db.locked_transaction() as conn:
                conn.execute(
                    "INSERT INTO collections (name, uid, index_spec, dim, model_version,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, uid, spec, dim, model_version, created_at),
                )
                store.db.lexical_created(conn, name)
        except BaseException:
            c.drop_indexes()
            raise
        store.collections[name] = c
        return c

    def delete_collection(self, name: str) -> None:
        """Delete a collection, its items, its image files no other item uses, its
        snapshots, and cancel its jobs."""
        store = self.state
        c = None if name in store.broken else store.get(name)
        with store.db.locked_transaction() as conn:
            digests = delete_rows(store.db, conn, name)
            # Its label set too (kept by a swap, which deletes the rows of the name only).
            conn.execute("DELETE FROM label_sets WHERE collection = ?", (name,))
            cancel_jobs_of(conn, name, "its collection was deleted")
        if c is None:
            del store.broken[name]
        else:
            with c.lock.write():
                del store.collections[name]
            c.drop_indexes()
        store.garbage.collect(digests)
        store.dumps.remove_files(name)

    def replace(self, copies: Mapping[str, str]) -> list[str]:
        """Swap each hidden copy in for the collection it copies (name -> copy), in one
        transaction; returns the image digests of the replaced items, to collect once
        nothing refers to them. The caller holds the originals' locks."""
        store = self.state
        digests: list[str] = []
        with store.db.locked_transaction() as conn:
            for name, copy in copies.items():
                digests += delete_rows(store.db, conn, name)
                for table, column in (
                    ("items", "collection"),
                    ("item_fields", "collection"),
                    ("tombstones", "collection"),
                    ("collections", "name"),
                ):
                    conn.execute(
                        f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (name, copy)
                    )
                store.db.lexical_moved(conn, name, copy)
        for name, copy in copies.items():
            moved = store.collections.pop(copy)
            moved.name = name
            store.collections[name] = moved
        return digests

    def collect(self, digests: Sequence[str]) -> None:
        """Remove the image files of ``digests`` that no item refers to any more."""
        self.state.garbage.collect(digests)

    def upsert(
        self,
        c: LiveCollection,
        items: Sequence[NewItem],
        vectors: np.ndarray,
        model_version: str,
        extra: Callable[[Conn], None] | None = None,
    ) -> None:
        """Store ``items`` with their ``vectors`` in ``c``; an existing id is replaced.
        A non-finite vector (a model that diverged, an activation to a broken version)
        refuses the whole write: it would answer every search with NaN."""
        check_finite(items, vectors)
        store = self.state
        name = c.name
        now = time.time()
        digests = [digest_of(it) if store.store_images else None for it in items]
        for row, (it, digest) in enumerate(zip(items, digests, strict=True)):
            if digest is None or store.blobs.exists(digest):
                continue
            if it.content is not None:
                # Not written yet (a caller that holds the lock), or written before the lock
                # and collected meanwhile by a delete of another item with the same bytes.
                store.blobs.put(it.content, digest)
            else:
                # Written by a worker, then collected likewise: keep the item, say it has
                # no image.
                log.warning("stored image of %r vanished before its commit", it.id)
                digests[row] = None
        replaced: list[tuple[Modality, int, str | None]] = []
        # An id given twice in one call: the last one wins (the first would be replaced
        # at once, in the same transaction).
        last = {it.id: row for row, it in enumerate(items)}
        rows = sorted(last.values())
        with uncertain(c), store.db.locked_transaction() as conn:
            still_there(store, conn, c)
            olds = find_items(conn, name, [items[r].id for r in rows])
            if olds:
                old = list(olds.values())
                conn.executemany("DELETE FROM items WHERE label = ?", [(o[0],) for o in old])
                conn.executemany(
                    "INSERT INTO tombstones (collection, modality, label) VALUES (?, ?, ?)",
                    [(name, o[1], o[0]) for o in old],
                )
                replaced += [(Modality(o[1]), o[0], o[2]) for o in old]
            values = []
            for row in rows:
                it, digest, raw = items[row], digests[row], items[row].raw_embedding
                values.append(
                    (
                        name,
                        it.id,
                        it.modality.value,
                        dumps(it.metadata),
                        it.text,
                        digest,
                        it.media_type if digest is not None else None,
                        vectors[row].tobytes(),
                        None if raw is None else np.asarray(raw, np.float32).tobytes(),
                        model_version,
                        it.created_at or now,
                    )
                )
            new = store.db.insert_items(conn, values)
            added = [(items[r].modality, label, r) for r, label in zip(rows, new, strict=True)]
            fields = [
                (label, name, items[r].modality.value, items[r].metadata)
                for r, label in zip(rows, new, strict=True)
            ]
            store.db.fields_written(conn, fields)
            if extra is not None:
                extra(conn)
            tomb_mark = max_tombstone(conn)

        def change(m: Modality, side: Side) -> None:
            gone = [label for mod, label, _ in replaced if mod is m]
            side.index.remove(np.array(gone, dtype=np.int64))
            # What a follower applied already (it read the commit first) is not added again.
            mine = [
                (label, row) for mod, label, row in added if mod is m and label > side.label_mark
            ]
            if mine:
                labels = np.array([label for label, _ in mine], dtype=np.int64)
                side.index.add(labels, vectors[[row for _, row in mine]])
                side.label_mark = max(side.label_mark, int(labels.max()))
            if gone:
                side.tomb_mark = max(side.tomb_mark, tomb_mark)
            side.dirty += len(gone) + len(mine)

        # Other servers write too: level with the catalogue instead, in order.
        apply = store.dumps.caught_up(c) if store.follows else change
        try:
            store.dumps.apply(c, list(Modality), apply)
        finally:
            store.garbage.collect([d for _, _, d in replaced if d is not None])

    def delete(self, c: LiveCollection, item_id: str) -> None:
        """Delete one item of ``c``."""
        store = self.state
        with uncertain(c), store.db.locked_transaction() as conn:
            still_there(store, conn, c)
            old = find_item(conn, c.name, item_id)
            if old is None:
                raise UnknownItem(f"item {item_id!r} is not in collection {c.name!r}")
            conn.execute("DELETE FROM items WHERE label = ?", (old[0],))
            cur = conn.execute(
                "INSERT INTO tombstones (collection, modality, label) VALUES (?, ?, ?)"
                " RETURNING seq",
                (c.name, old[1], old[0]),
            )
            seq = int(cur.fetchone()[0])

        def change(m: Modality, side: Side) -> None:
            side.index.remove(np.array([old[0]], dtype=np.int64))
            side.tomb_mark = max(side.tomb_mark, seq)
            side.dirty += 1

        # Other servers write too: level with the catalogue instead, in order.
        apply = store.dumps.caught_up(c) if store.follows else change
        try:
            store.dumps.apply(c, [Modality(old[1])], apply)
        finally:
            if old[2] is not None:
                store.garbage.collect([old[2]])
