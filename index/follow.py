"""Following a catalogue other servers write to (PostgreSQL shared by several servers):
what this server holds in memory (its collections, their FAISS indexes) is brought level
with the catalogue: collections created elsewhere are opened, deleted ones dropped, ones
replaced (a swap, a restore) opened again, and the items and deletions written elsewhere
applied to the indexes.

Writers on a PostgreSQL catalogue take one lock for their transaction
(``PostgresDatabase.locked_transaction``), so labels and tombstone numbers become visible
in the order they were drawn: reading what lies past an index's marks misses nothing.
A write of this server's own, on such a catalogue, brings its collection's indexes level
with the catalogue instead of applying its change alone (``StoreState.follows``): what
others committed before it comes first, in order, its own change with it, and a
deletion elsewhere is never skipped by a mark moved past it.
Milvus is shared by every server already: only the collections are followed there.
"""

from __future__ import annotations

import contextlib
import logging

from index.live import SHADOW_PREFIX, LiveCollection
from index.state import StoreState
from index.types import Modality

log = logging.getLogger(__name__)

OPEN_WAIT_S = 5.0


class Follower:
    def __init__(self, state: StoreState) -> None:
        self.state = state
        self._seen: tuple[int, int] | None = None  # the catalogue's last label and tombstone

    def step(self, held: bool = False) -> bool:
        """Bring this server level with the catalogue once; whether anything changed.
        ``held``: the caller holds the write lock already."""
        state = self.state
        conn = state.db.reader()
        (last_label, last_tomb) = conn.execute(
            "SELECT (SELECT MAX(label) FROM items), (SELECT MAX(seq) FROM tombstones)"
        ).fetchone()
        marks = (int(last_label or 0), int(last_tomb or 0))
        changed = self._collections(held)
        if marks != self._seen and not state.backends.shared:
            for c in list(state.collections.values()):
                state.dumps.apply(c, list(Modality), state.dumps.caught_up(c))
            changed = True
        self._seen = marks
        state.floor = marks[1]
        return changed

    def still_stored(self, c: LiveCollection) -> bool:
        """Whether the catalogue still holds ``c`` under its name."""
        row = (
            self.state.db.reader()
            .execute("SELECT uid FROM collections WHERE name = ?", (c.name,))
            .fetchone()
        )
        return row is not None and row[0] == c.uid

    def open_one(self, name: str) -> bool:
        """Open ``name`` if the catalogue has it and memory does not (a lookup that
        missed: a collection created through another server a moment ago); whether it
        serves now. Waits for the write lock at most ``OPEN_WAIT_S`` (the follower may be
        opening it this moment); a name the catalogue lacks costs one read."""
        if name.startswith(SHADOW_PREFIX):
            return False
        state = self.state
        row = (
            state.db.reader()
            .execute(
                "SELECT name, uid, index_spec, dim, model_version, created_at FROM collections"
                " WHERE name = ?",
                (name,),
            )
            .fetchone()
        )
        if row is None or not state.db.write_lock.acquire(timeout=OPEN_WAIT_S):
            return False
        try:
            if name not in state.collections and name not in state.broken:
                _, uid, spec, dim, version, created = row
                state.collections[name] = state.dumps.open(name, uid, spec, dim, version, created)
                log.info("collection %s: opened, created by another server", name)
            return name in state.collections
        finally:
            state.db.write_lock.release()

    def _rows(self) -> dict[str, tuple[str, str, str, int, str, float]]:
        rows = (
            self.state.db.reader()
            .execute(
                "SELECT name, uid, index_spec, dim, model_version, created_at FROM collections"
            )
            .fetchall()
        )
        return {r[0]: r for r in rows}

    def _differs(self, stored: dict[str, tuple[str, str, str, int, str, float]]) -> bool:
        """Whether memory and the catalogue disagree on which collections exist."""
        state = self.state
        live = {name: c.uid for name, c in list(state.collections.items())}
        for name, uid in live.items():
            row = stored.get(name)
            if row is None or row[1] != uid:
                return True
        return any(
            name not in live and name not in state.broken and not name.startswith(SHADOW_PREFIX)
            for name in stored
        )

    def _collections(self, held: bool) -> bool:
        """Open, drop or reopen what other servers created, deleted or replaced. The
        write lock is taken only when the catalogue disagrees with memory: a server's
        writes do not wait on a follower that finds nothing to do."""
        if not self._differs(self._rows()):
            return False
        state = self.state
        changed = False
        lock = contextlib.nullcontext() if held else state.db.write_lock
        with lock:  # no write of this server's in between; rows read inside
            stored = self._rows()
            live = state.collections
            for name, c in list(live.items()):
                row = stored.get(name)
                if row is not None and row[1] == c.uid:
                    continue
                state.dumps.remove_files(name)  # the dumps of the incarnation that went
                new = None
                if row is not None and not name.startswith(SHADOW_PREFIX):
                    _, uid, spec, dim, version, created = row
                    new = state.dumps.open(name, uid, spec, dim, version, created)
                # In-flight searches finish on the old vectors; later ones find it gone
                # (and embed again for the version that replaced it).
                with c.lock.write():
                    if new is None:
                        del live[name]
                    else:
                        live[name] = new
                if not state.backends.shared:  # a shared index is its deleter's to drop
                    c.drop_indexes()
                log.info(
                    "collection %s: %s by another server", name, "replaced" if new else "deleted"
                )
                changed = True
            for name, row in stored.items():
                if name in live or name in state.broken or name.startswith(SHADOW_PREFIX):
                    continue
                _, uid, spec, dim, version, created = row
                live[name] = state.dumps.open(name, uid, spec, dim, version, created)
                log.info("collection %s: opened, created by another server", name)
                changed = True
        return changed
