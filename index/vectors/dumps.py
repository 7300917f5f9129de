"""IndexDumps of the vector indexes and recovery on start.

The indexes live in memory; dumps of them are written now and then (temp file,
fsync, rename) together with two watermarks: the highest item label and the highest
tombstone sequence they contain. On start each dump is loaded and caught up from
SQLite (labels added and tombstones written after the watermarks); a missing, stale or
unreadable dump is rebuilt from the stored embeddings. (A collection's *snapshot* is
something else: an archive of the whole collection, ``index.archives``.)

Labels are SQLite AUTOINCREMENT row ids and are never reused: replacing an item inserts a
new row and leaves a tombstone for the old label, so catch-up needs no ordering. Training
an index and compacting soft deletes happen in background threads, away from the lock,
and the result is swapped in caught up.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from index.blobs import atomic_write
from index.catalogue.base import Catalogue
from index.catalogue.rows import load_vectors, max_label, max_tombstone
from index.catalogue.servers import prunable
from index.live import LiveCollection, Side
from index.types import Modality
from index.vectors.backend import BackendFactory, VectorBackend

log = logging.getLogger(__name__)


def backend_key(uid: str, modality: Modality) -> str:
    """What names one modality of one collection incarnation in a vector backend."""
    return f"{uid}_{modality.value}"


class IndexDumps:
    def __init__(
        self,
        db: Catalogue,
        backends: BackendFactory,
        index_dir: Path,
        index_dump_every: int,
        shared: bool = False,
    ) -> None:
        """``shared``: other servers keep indexes of this catalogue too; tombstones are
        pruned only as far as every live server has applied them."""
        self.db = db
        self.shared = shared
        self.backends = backends
        self.index_dir = index_dir
        self.index_dump_every = index_dump_every
        self._busy_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def path(self, name: str, modality: Modality) -> Path:
        return self.index_dir / name / f"{modality.value}.xmidx"

    def remove_files(self, name: str) -> None:
        """Forget ``name``'s dumps (a deleted collection, or one that moved)."""
        for m in Modality:
            with contextlib.suppress(FileNotFoundError):
                self.path(name, m).unlink()
        with contextlib.suppress(OSError):
            (self.index_dir / name).rmdir()

    def remove_folder(self, name: str) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.index_dir / name)

    # --- opening ------------------------------------------------------------------------------
    def new(
        self, name: str, uid: str, spec: str, dim: int, model_version: str, created_at: float
    ) -> LiveCollection:
        sides: dict[Modality, Side] = {}
        try:
            for m in Modality:
                sides[m] = Side(self.backends.create(dim, spec, key=backend_key(uid, m)))
        except BaseException:
            for side in sides.values():
                side.index.drop()
            raise
        return LiveCollection(name, uid, spec, dim, model_version, created_at, sides)

    def open(
        self, name: str, uid: str, spec: str, dim: int, model_version: str, created_at: float
    ) -> LiveCollection:
        """A stored collection with its indexes loaded and caught up, or rebuilt."""
        sides: dict[Modality, Side] = {}
        c = LiveCollection(name, uid, spec, dim, model_version, created_at, sides)
        for m in Modality:
            started = time.monotonic()
            index, label_mark, tomb_mark, how = self._load(c, m)
            if index is None and self.backends.shared:
                # Kept by the servers already serving it: this one joins, from the
                # catalogue as it stands (what is written on from here, it applies).
                label_mark = max_label(self.db.reader())
                tomb_mark = max_tombstone(self.db.reader())
                index = self.backends.existing(dim, spec, backend_key(uid, m))
                how = "joined in the shared backend"
            if index is None:
                # The tombstones' mark first: one drawn after it (a delete by another
                # server while the rows are read) is applied by the next catch-up.
                tomb_mark = max_tombstone(self.db.reader())
                labels, xb = load_vectors(self.db.reader(), name, m, dim)
                index = self.backends.build(dim, spec, labels, xb, key=backend_key(uid, m))
                label_mark = int(labels.max()) if len(labels) else 0
                how = "rebuilt from the catalogue"
            else:
                label_mark, tomb_mark = self.catch_up(name, m, index, label_mark, tomb_mark)
            c.sides[m] = Side(index, label_mark, tomb_mark, dirty=0 if how == "dump" else 1)
            log.info(
                "collection %s/%s: %d vectors, %s in %.2f s",
                name,
                m.value,
                index.ntotal,
                how,
                time.monotonic() - started,
            )
        return c

    def _load(self, c: LiveCollection, m: Modality) -> tuple[VectorBackend | None, int, int, str]:
        path = self.path(c.name, m)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None, 0, 0, "no dump"
        try:
            index, meta = self.backends.load(data)
        except Exception as exc:  # any unreadable dump is rebuilt, never trusted
            log.warning("index dump %s unreadable (%s); rebuilding from SQLite", path, exc)
            return None, 0, 0, "unreadable dump"
        if meta.get("uid") != c.uid or index.spec != c.spec or index.d != c.dim:
            log.warning("index dump %s belongs to another collection or spec; rebuilding", path)
            return None, 0, 0, "stale dump"
        tomb_mark = int(meta["tomb_mark"])
        pruned = (
            self.db.reader()
            .execute(
                "SELECT upto FROM tombstones_pruned WHERE uid = ? AND modality = ?",
                (c.uid, m.value),
            )
            .fetchone()
        )
        if pruned is not None and int(pruned[0]) > tomb_mark:
            log.warning("index dump %s missed deletes since pruned; rebuilding", path)
            return None, 0, 0, "dump older than the deletes kept"
        return index, int(meta["label_mark"]), tomb_mark, "dump"

    def catch_up(
        self,
        name: str,
        m: Modality,
        index: VectorBackend,
        label_mark: int,
        tomb_mark: int,
        present: np.ndarray | None = None,
        uid: str | None = None,
    ) -> tuple[int, int]:
        """Apply to ``index`` the tombstones after ``tomb_mark`` and the items after
        ``label_mark``; returns the new marks. ``present``, when known, lists the labels the
        index holds, so tombstones of rows it never saw are not applied. With ``uid``,
        nothing is applied unless the collection under ``name`` is still that one once
        the rows are read (another server may have swapped a re-embedded copy in: its
        tombstones for the old rows are not this index's to apply)."""
        conn = self.db.reader()
        tombs = conn.execute(
            "SELECT seq, label FROM tombstones WHERE collection = ? AND modality = ? AND seq > ?",
            (name, m.value, tomb_mark),
        ).fetchall()
        labels, xb = load_vectors(conn, name, m, index.d, min_label=label_mark)
        if uid is not None:  # read last: still this uid now means it was while reading
            row = conn.execute("SELECT uid FROM collections WHERE name = ?", (name,)).fetchone()
            if row is None or row[0] != uid:
                return label_mark, tomb_mark  # the follower opens what replaced it
        gone = [label for _, label in tombs if index.persistent or label <= label_mark]
        if present is not None:
            gone = [int(x) for x in np.intersect1d(np.array(gone, dtype=np.int64), present)]
        index.remove(np.array(gone, dtype=np.int64))
        tomb_mark = max([tomb_mark, *(seq for seq, _ in tombs)])
        index.add(labels, xb)
        if index.persistent and len(labels):
            # A shared index: another server may have deleted one of these and removed it
            # from the backend after they were read; sent again, it would be back. Its
            # tombstone is committed before that removal, so it shows now.
            late = conn.execute(
                "SELECT label FROM tombstones WHERE collection = ? AND modality = ? AND seq > ?",
                (name, m.value, tomb_mark),
            ).fetchall()
            back = np.intersect1d(np.array([r[0] for r in late], dtype=np.int64), labels)
            if len(back):
                index.remove(back)
        if len(labels):
            label_mark = int(labels.max())
        index.train()
        return label_mark, tomb_mark

    def caught_up(self, c: LiveCollection) -> Callable[[Modality, Side], None]:
        """A change (for ``apply``) that brings a side level with the catalogue: what a
        follower applies, and what a write applies in place of its own change when other
        servers write to the catalogue too (theirs first, in order, then its own)."""

        def catch_up(m: Modality, side: Side) -> None:
            before = side.label_mark, side.tomb_mark
            side.label_mark, side.tomb_mark = self.catch_up(
                c.name, m, side.index, side.label_mark, side.tomb_mark, uid=c.uid
            )
            if (side.label_mark, side.tomb_mark) != before:
                side.dirty += 1

        return catch_up

    def apply(
        self, c: LiveCollection, sides: list[Modality], change: Callable[[Modality, Side], None]
    ) -> None:
        """Apply a change SQLite has committed to the indexes of ``sides``. A side whose
        backend failed an earlier change (a Milvus server that did not answer) is caught up
        from SQLite instead, which includes this change; the first failure is raised after
        every side was tried (the write is durable; it becomes searchable on the next
        write that reaches the backend, or on the next start)."""
        failed: Exception | None = None
        with c.lock.write():
            for m in sides:
                side = c.sides[m]
                try:
                    if side.lagging:
                        side.label_mark, side.tomb_mark = self.catch_up(
                            c.name, m, side.index, side.label_mark, side.tomb_mark
                        )
                        side.lagging = False
                        side.dirty += 1
                    else:
                        change(m, side)
                except Exception as exc:
                    log.error("the %s index of %s missed a change: %s", m.value, c.name, exc)
                    side.lagging = True
                    failed = failed or exc
        if failed is not None:
            raise failed

    # --- writing ------------------------------------------------------------------------------
    def write_all(self, collections: list[LiveCollection], only_dirty: bool = False) -> int:
        """Write every (or every changed) index to disk; returns how many were written."""
        written = 0
        for c in collections:
            for m, side in c.sides.items():
                if (only_dirty and not side.dirty) or not self._claim(side):
                    continue
                try:
                    self._write(c, m)
                finally:
                    side.busy = False
                written += 1
        return written

    def _write(self, c: LiveCollection, m: Modality) -> None:
        with c.lock.read():
            side = c.sides[m]
            tomb_mark = side.tomb_mark
            meta = {"uid": c.uid, "label_mark": side.label_mark, "tomb_mark": tomb_mark}
            data = side.index.to_bytes(meta)
            dirty_then = side.dirty
        atomic_write(self.path(c.name, m), data)
        with c.lock.write():
            side.dirty -= dirty_then
        with self.db.transaction() as conn:
            # Tombstones the dump already reflects are needed by no one here; on a shared
            # catalogue, only those every live server applied too. A server down meanwhile
            # finds its dump older than what was pruned, and rebuilds (``_load``).
            upto = tomb_mark
            if self.shared:
                floor = prunable(conn)
                upto = 0 if floor is None else min(upto, floor)
            if upto > 0:
                conn.execute(
                    "DELETE FROM tombstones WHERE collection = ? AND modality = ? AND seq <= ?",
                    (c.name, m.value, upto),
                )
                conn.execute(
                    "INSERT INTO tombstones_pruned (uid, modality, upto) VALUES (?, ?, ?)"
                    " ON CONFLICT (uid, modality) DO UPDATE SET upto = CASE"
                    " WHEN excluded.upto > tombstones_pruned.upto THEN excluded.upto"
                    " ELSE tombstones_pruned.upto END",
                    (c.uid, m.value, upto),
                )

    # --- background upkeep --------------------------------------------------------------------
    def after_write(self, c: LiveCollection, current: Callable[[LiveCollection], bool]) -> None:
        """Train, compact or dump ``c``'s indexes in the background when they need it;
        ``current`` tells whether ``c`` is still the collection under its name."""
        for m, side in c.sides.items():
            if side.index.needs_training() or side.index.needs_compaction():
                if self._claim(side):
                    self._spawn(self._rebuild, c, m, current)
            elif side.dirty >= self.index_dump_every and self._claim(side):
                self._spawn(self._write_in_background, c, m, current)

    def _claim(self, side: Side) -> bool:
        """Mark ``side`` busy for one background dump or rebuild; False if it already is."""
        with self._busy_lock:
            if side.busy:
                return False
            side.busy = True
            return True

    def _write_in_background(
        self, c: LiveCollection, m: Modality, current: Callable[[LiveCollection], bool]
    ) -> None:
        try:
            if current(c):
                self._write(c, m)
        except Exception:
            log.exception(
                "index dump of %s/%s failed; SQLite still has every item", c.name, m.value
            )
        finally:
            c.sides[m].busy = False

    def _rebuild(
        self, c: LiveCollection, m: Modality, current: Callable[[LiveCollection], bool]
    ) -> None:
        """Train or compact one index away from the lock, then swap it in caught up."""
        side = c.sides[m]
        try:
            label_mark, tomb_mark = side.label_mark, side.tomb_mark
            labels, xb = load_vectors(self.db.reader(), c.name, m, c.dim, max_label=label_mark)
            fresh = self.backends.build(c.dim, c.spec, labels, xb, key=backend_key(c.uid, m))
            with self.db.write_lock, c.lock.write():
                if not current(c) or c.sides[m] is not side:
                    return  # deleted, swapped, or re-indexed meanwhile
                label_mark, tomb_mark = self.catch_up(
                    c.name, m, fresh, label_mark, tomb_mark, present=labels
                )
                c.sides[m] = Side(fresh, label_mark, tomb_mark, side.dirty + 1)
            log.info("rebuilt %s/%s index (%s, %d vectors)", c.name, m.value, c.spec, fresh.ntotal)
        except Exception:
            log.exception("rebuilding %s/%s failed; the old index keeps serving", c.name, m.value)
            side.busy = False

    def _spawn(self, fn: Any, *args: Any) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        t = threading.Thread(target=fn, args=args, daemon=True, name=f"xmodal-{fn.__name__}")
        self._threads.append(t)
        t.start()

    def wait_idle(self) -> None:
        """Wait for background training and compaction (tests, shutdown)."""
        for t in list(self._threads):
            t.join()
