"""Plain data that crosses between the store and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


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
    # Bytes already written to the blob store (by a decoding worker) under this digest.
    content_sha256: str | None = None


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
class Hit:
    id: str
    score: float
    modality: Modality
    metadata: dict[str, Any]
    text: str | None


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    index_spec: str
    dim: int
    model_version: str
    created_at: float
    counts: dict[Modality, int]
    trained: dict[Modality, bool]
