"""An open collection in memory: one vector index per modality and what each contains."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from index.rwlock import RWLock
from index.types import CollectionInfo, Modality
from index.vectors.backend import VectorBackend

log = logging.getLogger(__name__)

# No user's collection name starts with it: re-embedded copies live under it.
SHADOW_PREFIX = "."
MIGRATION_PREFIX = SHADOW_PREFIX + "activate."  # an activation's copies


@dataclass
class Side:
    """One modality of one collection: its index and what the index already contains."""

    index: VectorBackend
    label_mark: int = 0  # highest item label applied to the index
    tomb_mark: int = 0  # highest tombstone seq applied to the index
    dirty: int = 0  # changes since the last dump
    busy: bool = False  # a background dump or rebuild owns this side
    lagging: bool = False  # the backend failed a change: catch up from SQLite before the next


@dataclass
class LiveCollection:
    name: str
    uid: str
    spec: str
    dim: int
    model_version: str
    created_at: float
    sides: dict[Modality, Side]
    # Searches share the indexes; index mutations and a swap exclude them.
    lock: RWLock = field(default_factory=RWLock)
    index_report: dict[str, Any] | None = None  # the last re-index job's measurements

    @contextlib.contextmanager
    def searching(self) -> Iterator[None]:
        exclusive = any(s.index.exclusive_search for s in self.sides.values())
        with self.lock.write() if exclusive else self.lock.read():
            yield

    def drop_indexes(self) -> None:
        """Delete what the backend keeps of this incarnation outside the process (it is
        gone for good); a failure is logged, and the next start drops what is left."""
        for m, side in self.sides.items():
            try:
                side.index.drop()
            except Exception as exc:
                log.warning("dropping the %s index of %s: %s", m.value, self.name, exc)

    def info(self) -> CollectionInfo:
        with self.lock.read():
            return CollectionInfo(
                name=self.name,
                index_spec=self.spec,
                dim=self.dim,
                model_version=self.model_version,
                created_at=self.created_at,
                counts={m: s.index.ntotal for m, s in self.sides.items()},
                trained={m: s.index.trained for m, s in self.sides.items()},
                index_report=self.index_report,
            )
