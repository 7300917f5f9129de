"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import functools
import typing
from typing import Annotated, Any, Literal

from fastapi import Response
from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from index import COLLECTION_NAME, Job
from index.types import Modality

ItemId = str
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters: ids travel in URL paths


def one_of(*fields: str, kind: str = "string") -> dict[str, Any]:
    """JSON schema: exactly one of ``fields`` is given (present, not null, and for a
    string not blank), as the routes check."""
    given: dict[str, Any] = {"type": kind}
    if kind == "string":
        given["pattern"] = r"\S"
    return {"oneOf": [{"required": [f], "properties": {f: given}} for f in fields]}


class RequestBody(BaseModel):
    """A request body of the ``/v1`` API: a field it does not know is refused (422 naming
    it), not silently ignored, so a misspelt ``fliter`` does not search everything. The
    schema says so (``additionalProperties: false``). Values are taken as the schema types
    them (``strict``): ``false`` is not a number's stand-in, nor ``"3"`` a count."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data: Any) -> Any:
        """JSON Schema's ``integer`` takes ``537.0``; a strict ``int`` would not."""
        if isinstance(data, dict):
            ints = _int_fields(cls)
            if ints & data.keys():
                data = {
                    k: int(v) if k in ints and isinstance(v, float) and v.is_integer() else v
                    for k, v in data.items()
                }
        return data


@functools.cache
def _int_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` that hold an integer (or nothing)."""
    out = set()
    for name, field in model.model_fields.items():
        kinds = typing.get_args(field.annotation) or (field.annotation,)
        if int in kinds and not {float, bool} & set(kinds):
            out.add(field.alias or name)
    return frozenset(out)


# --- collections ------------------------------------------------------------------------------
class CollectionCreate(RequestBody):
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
    index_report: dict[str, Any] | None = Field(
        None,
        description="What its index measured when a re-index job chose it (recall against "
        "exact search, latency, bytes per vector, per modality); null before any.",
    )


class CollectionList(BaseModel):
    collections: list[CollectionOut]


# --- items ------------------------------------------------------------------------------------
class TextItemIn(RequestBody):
    id: ItemId = Field(min_length=1, max_length=512, pattern=ID_PATTERN)
    text: str = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)


class TextItemsIn(RequestBody):
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
MAX_QUERY_PARTS = 8


class QueryPart(RequestBody):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra=one_of("text", "image_base64", "item_id")
    )

    text: str | None = Field(None, description="A text to embed.")
    image_base64: str | None = Field(None, description="An image to embed, base64 (or a data URL).")
    item_id: ItemId | None = Field(
        None,
        min_length=1,
        max_length=512,
        pattern=ID_PATTERN,
        description="A stored item of the collection: its vector, not encoded again.",
    )
    weight: float = Field(
        1.0, ge=-10, le=10, description="Its weight in the sum; negative pushes away."
    )


class SearchRequest(RequestBody):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                *one_of("text", "image_base64", "item_id")["oneOf"],
                {"required": ["query"], "properties": {"query": {"type": "array"}}},
            ]
        },
    )

    text: str | None = Field(None, description="Query text (a one-part `query`).")
    image_base64: str | None = Field(
        None, description="Query image, base64-encoded bytes or a data URL (a one-part `query`)."
    )
    item_id: ItemId | None = Field(
        None,
        min_length=1,
        max_length=512,
        pattern=ID_PATTERN,
        description="More like this stored item (a one-part `query`).",
    )
    query: list[QueryPart] | None = Field(
        None,
        min_length=1,
        max_length=MAX_QUERY_PARTS,
        description="Parts (each one of `text`, `image_base64`, `item_id`) whose weighted sum "
        "of vectors, normalised, is searched. Give `query`, `text`, `image_base64` or "
        "`item_id`: exactly one.",
    )
    target: Annotated[Modality, Strict(False)] | None = Field(
        None,
        description="Modality to search. Default: the modality of the first stored item "
        "among the parts (more like this), else the other modality of the first text or image.",
    )
    k: int = Field(10, description="How many results, 1 to `XMODAL_MAX_K` (1000).")
    offset: int = Field(
        0, ge=0, description="Results to skip (pages); `offset + k` at most `XMODAL_MAX_K`."
    )
    filter: dict[str, Any] | None = Field(
        None,
        description='Keep items whose metadata passes it: `{"key": value}` (equal), '
        '`{"key": {"$gte": 2020, "$lt": 2024}}` with `$eq $ne $gt $gte $lt $lte $in '
        "$nin $exists`, and `$and` / `$or` over lists of filters (docs/search.md).",
    )
    min_score: float | None = Field(
        None, ge=-1, le=1, description="Leave out hits scoring below this cosine."
    )
    min_relative: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Leave out hits scoring below `best - (1 - min_relative) * |best|` "
        "(for a positive best score: below `min_relative` times it).",
    )
    dedup: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Collapse near-duplicates: a hit whose vector is at least this cosine "
        "to a better hit's is left out.",
    )
    include_self: bool = Field(
        False, description="Keep the query's own stored items (`item_id`) in the results."
    )
    mode: Literal["vector", "lexical", "hybrid"] = Field(
        "vector",
        description="How texts are ranked (text searches of texts): `vector` by cosine; "
        "`lexical` by the query's words (BM25); `hybrid` both, fused as `fusion` says. "
        "Lexical and hybrid need a text in the query (docs/search.md).",
    )
    fusion: Literal["rrf", "relative"] = Field(
        "rrf",
        description="How `hybrid` fuses its two rankings: `rrf`, reciprocal rank fusion "
        "(k = 60: ranks only); `relative`, each ranking's scores normalised by their spread "
        "(mean +- 3 standard deviations onto 0..1) and weighed by `alpha`, so a lexical match "
        "far ahead of the rest stays ahead (docs/search.md).",
    )
    group_by: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="A metadata key: answer `groups`, the best hits of each distinct value "
        "of it (one result per product), `k` groups a page; `results` then holds the "
        "groups' hits in order (docs/search.md).",
    )
    group_size: int = Field(
        1, ge=1, le=100, description="With `group_by`: hits a group holds at most."
    )
    facets: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None,
        max_length=8,
        description="Metadata keys: answer `facets`, for each its 20 most frequent values "
        "and their counts among all the items the search's filter keeps (of its target "
        "modality), not only the page's.",
    )
    alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="With `fusion` `relative`: the vector ranking's weight, the lexical "
        "ranking's being `1 - alpha` (default 0.5).",
    )


class SearchHit(BaseModel):
    id: ItemId
    score: float
    modality: Modality
    metadata: dict[str, Any]
    text: str | None = None


class FacetCount(BaseModel):
    value: Any
    count: int


class SearchGroup(BaseModel):
    value: Any = Field(description="The metadata value the group's hits share.")
    results: list[SearchHit]


class SearchResponse(BaseModel):
    results: list[SearchHit]
    next_offset: int | None = Field(
        None, description="`offset` of the next page; null when this page is the last."
    )
    groups: list[SearchGroup] | None = Field(
        None, description="With `group_by`: the page's groups, best first."
    )
    facets: dict[str, list[FacetCount]] | None = Field(
        None, description="With `facets`: per key, its most frequent values, most first."
    )
    took_ms: float


class BatchSearchRequest(RequestBody):
    queries: list[SearchRequest] = Field(
        min_length=1, description="Searches, each as `POST .../search` takes it."
    )


class BatchAnswer(BaseModel):
    results: list[SearchHit]
    next_offset: int | None = None
    groups: list[SearchGroup] | None = None
    facets: dict[str, list[FacetCount]] | None = None


class BatchSearchResponse(BaseModel):
    answers: list[BatchAnswer] = Field(description="One per query, in their order.")
    took_ms: float


# --- embed ------------------------------------------------------------------------------------
class EmbedRequest(RequestBody):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra=one_of("texts", "images_base64", kind="array")
    )

    texts: list[str] | None = None
    images_base64: list[str] | None = None


class EmbedResponse(BaseModel):
    vectors: list[list[float]]
    model: str
    dim: int


class JobCreated(BaseModel):
    id: str
    state: str


def accepted(job: Job, response: Response) -> JobCreated:
    """What every route that starts a job answers: its route's 202, the job's id and
    state, and ``Location`` naming where to poll it."""
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobCreated(id=job.id, state=job.state.value)
