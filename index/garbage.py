"""Image files no item refers to: removed when the last item using one goes, and swept
now and then for those a batch job wrote for a chunk it never committed."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from index.blobs import BlobStore
from index.catalogue.base import Catalogue
from index.catalogue.rows import SQL_CHUNK

log = logging.getLogger(__name__)


class ImageGarbage:
    def __init__(self, db: Catalogue, blobs: BlobStore) -> None:
        self.db = db
        self.blobs = blobs
        # Called with the digests of image files removed (the app drops their thumbnails).
        self.on_removed: list[Callable[[Sequence[str]], None]] = []

    def collect(self, digests: Sequence[str]) -> None:
        """Remove those of ``digests`` no item refers to any more (call under the store's
        write lock)."""
        removed = []
        for digest in set(digests):
            still = self.db.writer.execute(
                "SELECT 1 FROM items WHERE content_sha256 = ? LIMIT 1", (digest,)
            ).fetchone()
            if still is None:
                self.blobs.delete(digest)
                removed.append(digest)
        if removed:
            for callback in self.on_removed:
                callback(removed)

    def referenced(self) -> set[str]:
        rows = self.db.reader().execute(
            "SELECT DISTINCT content_sha256 FROM items WHERE content_sha256 IS NOT NULL"
        )
        return {r[0] for r in rows}

    def sweep(self, grace_s: float) -> int:
        """Remove image files no item refers to that were written over ``grace_s`` ago:
        those a batch job decoded for a chunk it never committed (its collection deleted
        meanwhile, the process killed). Younger files may belong to a chunk about to
        commit. Returns how many were removed."""
        referenced = self.referenced()
        orphans = [d for d in self.blobs.older_than(grace_s) if d not in referenced]
        for start in range(0, len(orphans), SQL_CHUNK):
            with self.db.write_lock:  # checked again, under the lock, one at a time
                self.collect(orphans[start : start + SQL_CHUNK])
        if orphans:
            log.info("removed %d image files no item refers to", len(orphans))
        return len(orphans)
