"""The vector-backend seam: what the collection layer asks of one modality's vector index.

A backend holds ``(label, vector)`` pairs, where labels are the store's int64 item labels,
and answers inner-product searches over them. SQLite stays the source of truth: a backend
can always be rebuilt from the stored embeddings, so it only has to serialise itself for
faster start-ups. FAISS (``index.vectors.faiss_backend``) keeps its indexes in this process;
Milvus (``index.vectors.milvus_backend``) keeps them in a Milvus server or Milvus Lite file, which
persists them itself (``persistent``) and answers metadata filters itself
(``native_filters``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from index.catalogue.base import Catalogue
    from index.filter_tree import Node
    from index.types import NewItem


@dataclass
class SearchResult:
    labels: np.ndarray  # int64, best first
    scores: np.ndarray  # float32 inner products


class VectorBackend(Protocol):
    """One modality's vectors of one collection. Not thread-safe: the store serialises
    writers and decides who may search at the same time (see ``exclusive_search``)."""

    d: int
    spec: str
    # Metadata filters go to ``search`` as ``where`` (True) or as ``allowed`` labels.
    # The store finds a filter's labels in SQLite first (an index lookup); a backend with
    # native filters is given the filter itself only when they are more than
    # ``max_allowed`` (a long list of labels is slower than its own evaluation).
    native_filters: bool
    max_allowed: int
    # The vectors outlive this process: on start, every tombstone since the watermark is
    # applied, also those of labels above it (they may have reached the backend).
    persistent: bool

    @property
    def ntotal(self) -> int:
        """Vectors a search can return."""
        ...

    @property
    def trained(self) -> bool: ...

    @property
    def exclusive_search(self) -> bool:
        """True when two searches must not run at once (GPU resources)."""
        ...

    def add(self, labels: np.ndarray, xb: np.ndarray) -> None: ...

    def remove(self, labels: np.ndarray) -> None: ...

    def search(
        self,
        xq: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        where: Node | None = None,
    ) -> list[SearchResult]:
        """Top-``k`` labels per query row by inner product, best first; ``allowed``
        restricts the candidates to those labels, ``where`` (``native_filters`` only) to
        items whose metadata has each key equal to its value."""
        ...

    def drop(self) -> None:
        """Delete what the backend keeps outside this process (its collection is gone)."""
        ...

    def needs_training(self) -> bool:
        """Enough vectors have arrived to train the real index: rebuild it (``build``)."""
        ...

    def needs_compaction(self) -> bool:
        """Soft deletes have piled up: rebuild it from the live vectors (``build``)."""
        ...

    def train(self) -> None:
        """Train on the vectors held now, if ``needs_training`` (start-up catch-up)."""
        ...

    def to_bytes(self, meta: dict[str, Any]) -> bytes:
        """A snapshot of the index with the caller's ``meta``, read back by ``load``."""
        ...


class BackendFactory(Protocol):
    """Makes a backend's indexes: empty, built from vectors, or loaded from a snapshot."""

    # Whether the indexes live outside this process, shared by every server that reaches
    # them (Milvus), or in it (FAISS: each server keeps its own, following the catalogue).
    shared: bool

    def check(self, d: int, spec: str | None) -> str:
        """The normalised spec, or ``InvalidIndexSpec`` saying what is wrong with it."""
        ...

    def attach(self, db: Catalogue) -> None:
        """The store's database (a backend that copies item payloads reads them there)."""
        ...

    def check_items(self, items: Sequence[NewItem]) -> None:
        """Refuse (``InvalidValue``) items the backend cannot keep, before anything is
        written."""
        ...

    def create(self, d: int, spec: str, key: str = "") -> VectorBackend:
        """An empty index; ``key`` names it for good (a collection's uid and modality)."""
        ...

    def build(
        self, d: int, spec: str, labels: np.ndarray, xb: np.ndarray, key: str = ""
    ) -> VectorBackend:
        """A new index holding exactly these vectors, trained if there are enough of them."""
        ...

    def load(self, data: bytes) -> tuple[VectorBackend, dict[str, Any]]:
        """An index and the ``meta`` it was saved with; raises on anything unreadable."""
        ...

    def existing(self, d: int, spec: str, key: str) -> VectorBackend | None:
        """A shared backend's index for ``key`` as another server keeps it, if there is
        one (a server joining must not build it again: that drops what others serve);
        None for a backend of this process's own."""
        ...

    def prune(self, keys: Iterable[str]) -> None:
        """Delete what the backend keeps for any key but these (collections gone while
        the process was down)."""
        ...

    def close(self) -> None: ...
