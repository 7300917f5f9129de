"""The collection store's state, held in one place: its database, image files, vector
backends and index dumps, and the collections serving or broken. The store
(``index.collections``) owns it; the writer (``index.writes``) changes it under the
store's write lock; nothing else assigns into it."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from index.blobs import BlobStore
from index.catalogue.base import Catalogue
from index.catalogue.opening import open_catalogue
from index.catalogue.rows import count_items, delete_rows
from index.errors import CollectionBroken, UnknownCollection
from index.garbage import ImageGarbage
from index.live import SHADOW_PREFIX, LiveCollection
from index.types import CollectionInfo, Modality
from index.vectors.backend import BackendFactory
from index.vectors.dumps import IndexDumps, backend_key

log = logging.getLogger(__name__)


@dataclass
class StoreState:
    db: Catalogue
    blobs: BlobStore
    store_images: bool
    garbage: ImageGarbage
    backends: BackendFactory
    dumps: IndexDumps
    # Whether other servers may write to this catalogue (PostgreSQL, or SQLite in a
    # shared dir): this server then follows their writes (``index.follow``).
    shared: bool = False
    # Every tombstone up to this one is applied to this server's indexes (a follow step
    # completed past it): what this server tells others may be pruned.
    floor: int = 0
    collections: dict[str, LiveCollection] = field(default_factory=dict)
    # Stored collections whose index cannot be built: listed, deletable, nothing else.
    broken: dict[str, CollectionInfo] = field(default_factory=dict)

    @property
    def follows(self) -> bool:
        """Whether other servers may write to this catalogue, into indexes of their own
        (FAISS): this server's indexes then follow the catalogue."""
        return self.shared and not self.backends.shared

    def get(self, name: str) -> LiveCollection:
        c = self.collections.get(name)
        if c is None:
            broken = self.broken.get(name)
            if broken is not None:
                raise CollectionBroken(f"collection {name!r} cannot serve: {broken.error}")
            raise UnknownCollection(f"collection {name!r} does not exist")
        return c

    def load(self, progress: Callable[[str], None] | None = None) -> None:
        """Open every stored collection (at start), saying which to ``progress``; then
        drop what the vector backend keeps of collections gone meanwhile."""
        rows = self.db.writer.execute(
            "SELECT name, uid, index_spec, dim, model_version, created_at FROM collections"
        ).fetchall()
        for n, row in enumerate(rows, 1):
            if progress is not None:
                progress(
                    f"building indexes from the catalogue: collection {n} of {len(rows)} ({row[0]})"
                )
            self._open(*row)
        uids = self.db.writer.execute("SELECT uid FROM collections").fetchall()
        self.backends.prune(backend_key(uid, m) for (uid,) in uids for m in Modality)

    def _open(
        self, name: str, uid: str, spec: str, dim: int, model_version: str, created_at: float
    ) -> None:
        """Load one stored collection; one that cannot be built does not stop the others."""
        try:
            # The grammar first: a spec stored before it existed may crash FAISS outright.
            normal = self.backends.check(dim, spec)
            c = self.dumps.open(name, uid, normal, dim, model_version, created_at)
            row = self.db.writer.execute(
                "SELECT report FROM index_reports WHERE uid = ?", (uid,)
            ).fetchone()
            c.index_report = None if row is None else json.loads(row[0])
            self.collections[name] = c
        except Exception as exc:
            log.error("collection %s cannot serve: %s", name, exc)
            self.broken[name] = CollectionInfo(
                name,
                spec,
                dim,
                model_version,
                created_at,
                count_items(self.db.writer, name),
                dict.fromkeys(Modality, False),
                error=f"its index {spec!r} cannot be built ({exc}); delete the collection and"
                " create it again with a supported index",
            )

    def drop_unfinished(self, prefix: str = SHADOW_PREFIX, fenced: bool = True) -> None:
        """Hidden copies left by a migration or restore that did not finish: it starts
        over (at start, before any collection is loaded; and by an activation as it
        starts, for the copies of one that died, ``prefix`` naming those). On a shared
        catalogue, none while another server's activation or restore holds a live lease:
        the copies may be its work in progress (``fenced``)."""
        with self.db.transaction() as conn:
            if (
                fenced
                and self.shared
                and conn.execute(
                    "SELECT 1 FROM jobs WHERE state = 'running' AND kind IN ('activate', 'restore')"
                    " AND lease_until > ?",
                    (time.time(),),
                ).fetchone()
            ):
                log.info("hidden copies kept: another server's activation or restore runs")
                return
            shadows = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM collections WHERE name LIKE ?", (prefix + "%",)
                )
            ]
            for shadow in shadows:
                delete_rows(self.db, conn, shadow)
        for shadow in shadows:
            log.info("dropped %s, left by an unfinished activation or restore", shadow)
            self.dumps.remove_folder(shadow)


def open_state(
    root: Path,
    index_dir: Path,
    backends: BackendFactory,
    store_images: bool,
    dump_every: int,
    database_url: str | None,
    shared: bool,
) -> StoreState:
    """A store's state: image files and the SQLite catalogue under ``root`` (the shared
    dir, or the data dir), FAISS dumps under ``index_dir``. ``shared``: other servers use
    that root too; a PostgreSQL catalogue is shared whatever it says."""
    blobs = BlobStore(root / "blobs")
    db = open_catalogue(root, database_url)
    shared = shared or db.kind == "postgres"
    backends.attach(db)
    dumps = IndexDumps(db, backends, index_dir, dump_every, shared)
    return StoreState(
        db, blobs, store_images, ImageGarbage(db, blobs), backends, dumps, shared=shared
    )
