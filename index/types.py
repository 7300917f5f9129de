"""Plain data that crosses between the store and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class Modality(StrEnum):
    IMAGE = "image"
    TEXT = "text"

    @property
    def other(self) -> Modality:
        return Modality.TEXT if self is Modality.IMAGE else Modality.IMAGE


@dataclass(frozen=True)
class NewItem:
    id: str
    modality: Modality
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    content: bytes | None = None  # image bytes to keep (None: keep nothing)
    media_type: str | None = None
    # The SHA-256 of the image: with ``content``, of those bytes (hashed once, by the caller
    # that read them); without, bytes already written to the blob store by a decoding worker.
    content_sha256: str | None = None
    # For a mapped model version: the embedding before the map, kept so that other maps,
    # or a rollback to the base, need no re-encoding.
    raw_embedding: np.ndarray | None = None
    created_at: float | None = None  # kept when an item moves to a new model version


@dataclass(frozen=True)
class Item:
    id: str
    modality: Modality
    metadata: dict[str, Any]
    text: str | None
    content_sha256: str | None
    media_type: str | None
    model_version: str
    created_at: float


@dataclass(frozen=True)
class StoredVersion:
    """What an existing item holds, to tell whether a re-import would change it."""

    modality: Modality
    content_sha256: str | None
    text: str | None
    model_version: str


@dataclass(frozen=True)
class StoredItem:
    """An item as stored, with its vectors: what re-embedding for a new model reads."""

    label: int
    id: str
    modality: Modality
    metadata: dict[str, Any]
    text: str | None
    content_sha256: str | None
    media_type: str | None
    embedding: np.ndarray
    raw_embedding: np.ndarray | None
    created_at: float


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    modality: Modality
    metadata: dict[str, Any]
    text: str | None
    label: int = field(default=-1, compare=False)  # the store's row label (ties break on it)
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    index_spec: str
    dim: int
    model_version: str
    created_at: float
    counts: dict[Modality, int]
    trained: dict[Modality, bool]
    error: str | None = None  # why the collection cannot serve (None: it serves)
    index_report: dict[str, Any] | None = None  # what its index measured (a re-index job)
