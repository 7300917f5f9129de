"""The collection store's state, held in one place: its database, image files, vector
backends and index dumps, and the collections serving or broken. The store
(``index.collections``) owns it; the writer (``index.writes``) changes it under the
store's write lock; nothing else assigns into it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from index.blobs import BlobStore
from index.catalogue.base import Catalogue
from index.catalogue.rows import delete_rows
from index.errors import CollectionBroken, UnknownCollection
from index.garbage import ImageGarbage
from index.live import SHADOW_PREFIX, LiveCollection
from index.types import CollectionInfo
from index.vectors.backend import BackendFactory
from index.vectors.dumps import IndexDumps

log = logging.getLogger(__name__)


@dataclass
class StoreState:
    db: Catalogue
    blobs: BlobStore
    store_images: bool
    garbage: ImageGarbage
    backends: BackendFactory
    dumps: IndexDumps
    collections: dict[str, LiveCollection] = field(default_factory=dict)
    # Stored collections whose index cannot be built: listed, deletable, nothing else.
    broken: dict[str, CollectionInfo] = field(default_factory=dict)

    @property
    def follows(self) -> bool:
        """Whether other servers may write to this catalogue, into indexes of their own
        (PostgreSQL with FAISS): this server's indexes then follow the catalogue."""
        return self.db.kind == "postgres" and not self.backends.shared

    def get(self, name: str) -> LiveCollection:
        c = self.collections.get(name)
        if c is None:
            broken = self.broken.get(name)
            if broken is not None:
                raise CollectionBroken(f"collection {name!r} cannot serve: {broken.error}")
            raise UnknownCollection(f"collection {name!r} does not exist")
        return c

    def drop_unfinished(self) -> None:
        """Hidden copies left by a migration or restore that did not finish: it starts
        over (at start, before any collection is loaded)."""
        with self.db.transaction() as conn:
            shadows = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM collections WHERE name LIKE ?", (SHADOW_PREFIX + "%",)
                )
            ]
            for shadow in shadows:
                delete_rows(self.db, conn, shadow)
        for shadow in shadows:
            log.info("dropped %s, left by an unfinished activation or restore", shadow)
            self.dumps.remove_folder(shadow)
