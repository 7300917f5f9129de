"""Moving collections to another model version while they keep serving.

``Migration`` makes a hidden, empty copy of each collection for the new version
(``begin``), fills it batch by batch with the items re-embedded by the caller (``copy``)
while searches and writes go on against the originals, then under the write lock copies
what was written since, drops what was deleted since, and swaps every copy in for its
original in one transaction (``commit``), so no collection ever mixes two versions.
``abort`` drops the copies and leaves the originals as they were. Copies left by a
process that died mid-way are dropped on the next start (``drop_unfinished``).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from index.db import STORED_COLUMNS, delete_rows, stored_item_from_row
from index.errors import UnknownItem
from index.live import SHADOW_PREFIX
from index.types import Modality, NewItem, StoredItem

if TYPE_CHECKING:
    from index.collections import CollectionStore

log = logging.getLogger(__name__)

# The new version's vectors for stored items (row i for item i), and for a mapped version
# each item's vector before the map (None where there is none).
Reembed = Callable[[Sequence[StoredItem]], tuple[np.ndarray, Sequence[np.ndarray | None]]]


class Migration:
    def __init__(
        self,
        store: CollectionStore,
        names: Sequence[str],
        version: str,
        reembed: Reembed,
        batch: int = 256,
    ) -> None:
        self.store = store
        self.version = version
        self.reembed = reembed
        self.batch = batch
        self.marks = dict.fromkeys(names, 0)  # the highest label copied, per collection
        self.shadows: dict[str, str] = {}
        try:
            for name in names:
                self.shadows[name] = self._begin(name)
        except BaseException:
            self.abort()
            raise

    def _begin(self, name: str) -> str:
        """A hidden, empty copy of ``name``'s configuration for the new version."""
        c = self.store.get(name)
        shadow = f"{SHADOW_PREFIX}{name}.{uuid.uuid4().hex[:8]}"
        uid = uuid.uuid4().hex
        with self.store.db.write_lock:
            self.store.insert_collection_row(shadow, uid, c.spec, c.dim, self.version, c.created_at)
            self.store.collections[shadow] = self.store.snapshots.new(
                shadow, uid, c.spec, c.dim, self.version, c.created_at
            )
        return shadow

    @property
    def total(self) -> int:
        """Items the originals hold now: what copying has to get through."""
        infos = [self.store.serving(name) for name in self.marks]
        return sum(i.counts[Modality.IMAGE] + i.counts[Modality.TEXT] for i in infos)

    def copy(self) -> int:
        """Copy the next batch of items; returns how many (0: all copied up to now)."""
        for name in self.marks:
            n = self._copy_batch(name, locked=False)
            if n:
                return n
        return 0

    def commit(self, after: Callable[[], None] | None = None) -> None:
        """Catch up and swap every copy in for its original, all at once. ``after`` runs
        once the swap is done, still under the write lock (switching the model that
        embeds new items), so no write can land between the swap and the switch."""
        store = self.store
        digests: list[str] = []
        with store.db.write_lock:
            for name in self.marks:
                while self._copy_batch(name, locked=True):
                    pass
                self._drop_deleted(name)
            olds = [store.get(name) for name in self.marks]
            with contextlib.ExitStack() as stack:
                for old in olds:  # in-flight searches finish on the old vectors first
                    stack.enter_context(old.lock.write())
                with store.db.locked_transaction() as conn:
                    for name, shadow in self.shadows.items():
                        digests += delete_rows(conn, name)
                        for table, column in (
                            ("items", "collection"),
                            ("tombstones", "collection"),
                            ("collections", "name"),
                        ):
                            conn.execute(
                                f"UPDATE {table} SET {column} = ? WHERE {column} = ?",
                                (name, shadow),
                            )
                for name, shadow in self.shadows.items():
                    moved = store.collections.pop(shadow)
                    moved.name = name
                    store.collections[name] = moved
            if after is not None:
                after()
            store.collect_garbage(digests)
        for name, shadow in self.shadows.items():
            for side in store.collections[name].sides.values():
                side.dirty += 1  # the moved indexes are snapshotted under their new name
            store.snapshots.remove_folder(shadow)
            store.snapshots.remove_files(name)
        self.shadows = {}

    def abort(self) -> None:
        """Drop the copies; the originals serve as if nothing happened."""
        for shadow in list(self.shadows.values()):
            with contextlib.suppress(Exception):  # already gone
                self.store.delete_collection(shadow)
        self.shadows = {}

    # --- steps ----------------------------------------------------------------------------------
    def _copy_batch(self, name: str, locked: bool) -> int:
        """Re-embed the items of ``name`` after its mark into its copy (``locked``: the
        caller holds the write lock)."""
        rows = self.store.db.reader().execute(
            f"SELECT {STORED_COLUMNS} FROM items WHERE collection = ? AND label > ?"
            " ORDER BY label LIMIT ?",
            (name, self.marks[name], self.batch),
        )
        items = [stored_item_from_row(r) for r in rows]
        if not items:
            return 0
        vectors, raws = self.reembed(items)
        copies = [
            NewItem(
                it.id,
                it.modality,
                it.metadata,
                text=it.text,
                media_type=it.media_type,
                content_sha256=it.content_sha256,
                raw_embedding=raw,
                created_at=it.created_at,
            )
            for it, raw in zip(items, raws, strict=True)
        ]
        shadow = self.store.get(self.shadows[name])
        if locked:
            self.store.upsert_locked(shadow, copies, vectors, self.version)
        else:
            with self.store.db.write_lock:
                self.store.upsert_locked(shadow, copies, vectors, self.version)
        self.marks[name] = items[-1].label
        return len(items)

    def _drop_deleted(self, name: str) -> None:
        """Remove from the copy the ids deleted from the original since they were copied
        (call under the write lock)."""
        shadow = self.store.get(self.shadows[name])
        gone = self.store.db.reader().execute(
            "SELECT id FROM items WHERE collection = ? EXCEPT SELECT id FROM items"
            " WHERE collection = ?",
            (shadow.name, name),
        )
        for (item_id,) in gone.fetchall():
            with contextlib.suppress(UnknownItem):
                self.store.delete_locked(shadow, item_id)


def drop_unfinished(store: CollectionStore) -> None:
    """Copies left by a migration that did not finish: it starts over."""
    with store.db.transaction() as conn:
        shadows = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM collections WHERE name LIKE ?", (SHADOW_PREFIX + "%",)
            )
        ]
        for shadow in shadows:
            delete_rows(conn, shadow)
    for shadow in shadows:
        log.info("dropped %s, left by an unfinished activation", shadow)
        store.snapshots.remove_folder(shadow)
