"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from index import COLLECTION_NAME
from index.types import Modality

ItemId = str
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters: ids travel in URL paths
FilterValue = str | int | float | bool | None


# --- collections ------------------------------------------------------------------------------
class CollectionCreate(BaseModel):
    name: str = Field(pattern=COLLECTION_NAME.pattern, examples=["photos"])
    index: str | None = Field(
        None,
        description="FAISS factory string, e.g. `HNSW32` or `IVF1024,PQ32`; default exact `Flat`.",
        max_length=200,
    )


class CollectionOut(BaseModel):
    name: str
    index: str
    dim: int
    model: str
    created_at: float
    counts: dict[Modality, int]
    trained: dict[Modality, bool]
    error: str | None = Field(
        None,
        description="Why the collection cannot serve (it can only be deleted); null when it does.",
    )


class CollectionList(BaseModel):
    collections: list[CollectionOut]


# --- items ------------------------------------------------------------------------------------
class TextItemIn(BaseModel):
    id: ItemId = Field(min_length=1, max_length=512, pattern=ID_PATTERN)
    text: str = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


class TextItemsIn(BaseModel):
    items: list[TextItemIn] = Field(min_length=1)


class IndexedOut(BaseModel):
    ids: list[ItemId]


class ItemOut(BaseModel):
    id: ItemId
    modality: Modality
    metadata: dict[str, Any]
    text: str | None = None
    has_image: bool
    model: str
    created_at: float


# --- search -----------------------------------------------------------------------------------
class SearchRequest(BaseModel):
    text: str | None = Field(
        None, description="Query text; give it or `image_base64`, not both (400 otherwise)."
    )
    image_base64: str | None = Field(
        None, description="Query image, base64-encoded bytes (or a data URL)."
    )
    target: Modality | None = Field(None, description="Modality to search; default: the other one.")
    k: int = Field(10, description="How many results, 1 to `XMODAL_MAX_K` (1000).")
    filter: dict[str, FilterValue] | None = Field(
        None, description="Keep items whose metadata has each key equal to its value."
    )


class SearchHit(BaseModel):
    id: ItemId
    score: float
    modality: Modality
    metadata: dict[str, Any]
    text: str | None = None


class SearchResponse(BaseModel):
    results: list[SearchHit]
    took_ms: float


# --- embed ------------------------------------------------------------------------------------
class EmbedRequest(BaseModel):
    texts: list[str] | None = None
    images_base64: list[str] | None = None


class EmbedResponse(BaseModel):
    vectors: list[list[float]]
    model: str
    dim: int
