"""Moving collections to another model version while they keep serving.

``Migration`` moves every collection of one version to another. It makes a hidden, empty
copy of each for the new version, fills it batch by batch with the items re-embedded by
the caller (``copy``) while searches and writes go on against the originals, then under
the write lock copies what was written since, drops what was deleted since, and swaps
every copy in for its original in one transaction (``commit``), so no collection ever
mixes two versions. A collection created meanwhile joins the move; one deleted meanwhile
leaves it (its copy is dropped), and one deleted and created again starts over.
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

from index.catalogue.rows import STORED_COLUMNS, stored_item_from_row
from index.errors import StoreError, UnknownItem
from index.live import MIGRATION_PREFIX, SHADOW_PREFIX
from index.types import NewItem, StoredItem

if TYPE_CHECKING:
    from index.collections import CollectionStore
    from index.writes import LockedWriter

log = logging.getLogger(__name__)

# The new version's vectors for stored items (row i for item i), and for a mapped version
# each item's vector before the map (None where there is none).
Reembed = Callable[[Sequence[StoredItem]], tuple[np.ndarray, Sequence[np.ndarray | None]]]
# A collection's new copies of items, given their new vectors, as they are to be written.
Tag = Callable[[str, list[NewItem], np.ndarray], list[NewItem]]


class Migration:
    def __init__(
        self,
        store: CollectionStore,
        source_version: str,
        version: str,
        reembed: Reembed,
        batch: int = 256,
        tag: Tag | None = None,
    ) -> None:
        """``tag`` rewrites the copies of a collection's items with their new vectors
        (the pictures' tags from a label set, in the new version's space)."""
        self.store = store
        self.source_version = source_version
        self.version = version
        self.reembed = reembed
        self.batch = batch
        self.tag = tag
        self.marks: dict[str, int] = {}  # the highest label copied, per collection
        self.uids: dict[str, str] = {}  # which incarnation of each collection is copied
        self.shadows: dict[str, str] = {}
        # One activation runs at a time (``JobStore.start``): copies of an earlier one are
        # what a server that died mid-way left.
        store.state.drop_unfinished(MIGRATION_PREFIX, fenced=False)
        try:
            with store.locked() as writer:
                self._follow(writer)
        except BaseException:
            self.abort()
            raise

    @property
    def names(self) -> list[str]:
        return list(self.marks)

    def _follow(self, writer: LockedWriter) -> None:
        """Match the copies to the collections of the source version now: begin a copy of
        each new one, drop the copy of each one deleted."""
        for name in list(self.marks):
            c = writer.live(name)
            if c is None or c.uid != self.uids[name]:
                writer.delete_collection(self.shadows.pop(name))
                del self.marks[name], self.uids[name]
        for name in writer.names():
            c = writer.live(name)
            if c is None or name.startswith(SHADOW_PREFIX) or name in self.marks:
                continue
            if c.model_version == self.source_version:
                # A hidden, empty copy of its configuration for the new version.
                shadow = f"{MIGRATION_PREFIX}{name}.{uuid.uuid4().hex[:8]}"
                uid = uuid.uuid4().hex
                writer.add_collection(shadow, uid, c.spec, c.dim, self.version, c.created_at)
                self.shadows[name] = shadow
                self.marks[name], self.uids[name] = 0, c.uid

    @property
    def total(self) -> int:
        """Items the originals hold now: what copying has to get through."""
        total = 0
        for name in self.marks:
            with contextlib.suppress(StoreError):  # deleted meanwhile
                total += sum(self.store.get_collection(name).counts.values())
        return total

    def copy(self) -> int:
        """Copy the next batch of items; returns how many (0: all copied up to now)."""
        with self.store.locked() as writer:
            self._follow(writer)
        for name in list(self.marks):
            n = self._copy_batch(name, None)
            if n:
                return n
        return 0

    def commit(self, after: Callable[[], None] | None = None) -> None:
        """Catch up and swap every copy in for its original, all at once. ``after`` runs
        once the swap is done, still under the write lock (switching the model that
        embeds new items), so no write can land between the swap and the switch."""
        store = self.store
        # No other server's write lands from the last catch-up to the swap (exclusive):
        # one that waited finds the collection replaced and follows before writing.
        with store.locked() as writer, store.db.exclusive():
            if store.state.shared:
                store.follow(held=True)  # collections other servers made, up to now
            self._follow(writer)  # collections created or deleted up to the last moment
            for name in self.marks:
                while self._copy_batch(name, writer):
                    pass
                self._drop_deleted(name, writer)
            olds = [store.get(name) for name in self.marks]
            with contextlib.ExitStack() as stack:
                for old in olds:  # in-flight searches finish on the old vectors first
                    stack.enter_context(old.lock.write())
                digests = writer.replace(self.shadows)
            if after is not None:
                after()
            writer.collect(digests)
        for old in olds:
            old.drop_indexes()
        for name, shadow in self.shadows.items():
            store.mark_changed(name)  # the moved indexes are dumped under their new name
            store.dumps.remove_folder(shadow)
            store.dumps.remove_files(name)
        self.shadows = {}

    def abort(self) -> None:
        """Drop the copies; the originals serve as if nothing happened."""
        for shadow in list(self.shadows.values()):
            with contextlib.suppress(Exception):  # already gone
                self.store.delete_collection(shadow)
        self.shadows = {}

    # --- steps ----------------------------------------------------------------------------------
    def _copy_batch(self, name: str, writer: LockedWriter | None) -> int:
        """Re-embed the items of ``name`` after its mark into its copy (with ``writer``:
        the caller holds the write lock already)."""
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
        if self.tag is not None:
            copies = self.tag(name, copies, vectors)
        with contextlib.nullcontext(writer) if writer else self.store.locked() as held:
            shadow = held.live(self.shadows.get(name, ""))
            if shadow is None:
                return 0  # the collection was deleted meanwhile: its copy went with it
            held.upsert(shadow, copies, vectors, self.version)
        self.marks[name] = items[-1].label
        return len(items)

    def _drop_deleted(self, name: str, writer: LockedWriter) -> None:
        """Remove from the copy the ids deleted from the original since they were copied."""
        shadow = self.store.get(self.shadows[name])
        gone = self.store.db.reader().execute(
            "SELECT id FROM items WHERE collection = ? EXCEPT SELECT id FROM items"
            " WHERE collection = ?",
            (shadow.name, name),
        )
        for (item_id,) in gone.fetchall():
            with contextlib.suppress(UnknownItem):
                writer.delete(shadow, item_id)
