"""clip-retrieval's ``clip back`` API, so that its ``ClipClient`` and its web front end
``clip-front`` work against xmodal unchanged: each collection is one of its "indices".

``/knn-service`` answers a bare list, best first, of ``{"id", "similarity", ...}`` where
``id`` is the item's row label (an integer, as clip back's are), which ``/metadata``
resolves while the item is not replaced; the first ``num_images`` hits carry their
metadata: ``caption`` (a text's text, else the item's ``caption`` metadata), ``url`` (the
item's ``url`` metadata, else this server's URL of the stored image), ``image`` (a
base64 JPEG of the stored image, at most 512 pixels a side), ``xmodal_id`` and the
item's own metadata. Safety, violence, aesthetic and multilingual options are accepted
and ignored: xmodal has none of those models.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np
from annotated_types import Ge, Le
from fastapi import APIRouter, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from app.api.auth import ReadAccess, check_collection, grant_of
from app.api.bodies import AnyJSONRoute
from app.api.deps import RetrievalDep, ServicesDep, SettingsDep, StackDep
from app.api.errors import bad_request
from app.api.openapi import errors
from app.api.uploads import BASE64, decode_base64
from app.service.search.ranking import SearchSpec
from app.service.search.retrieval import Part, Query, Retrieval
from index import Hit, Item, Modality, StoreError
from models.errors import ModelError

DEDUP = 0.94  # clip back's threshold for its deduplicate option
THUMBNAIL = 512

router = APIRouter(route_class=AnyJSONRoute, tags=["clip-retrieval"], dependencies=[ReadAccess])


class KnnRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str | None = None
    image: str | None = Field(None, description="The query image, base64.")
    image_url: str | None = Field(None, description="Fetched only with XMODAL_IMAGE_URLS=true.")
    embedding_input: list[float] | None = Field(None, max_length=4096)
    modality: Modality = Field(Modality.IMAGE, description="The side searched.")
    num_images: int = Field(40, ge=1, description="Hits that carry metadata.")
    num_result_ids: int | None = Field(None, ge=1, description="Hits (default num_images).")
    indice_name: str | None = Field(None, description="The collection (default: the first).")
    deduplicate: bool = False
    # Accepted for clip back's clients; xmodal has no such models.
    use_mclip: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    aesthetic_score: int | str | None = None
    aesthetic_weight: float | str | None = None

    @field_validator("image")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        """Checked whatever else the query gives, as the schema says (text goes first)."""
        if value is not None and not re.fullmatch(BASE64, value):
            raise ValueError("image is not valid base64")
        return value


def _row_id(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("an id is a non-negative integer")
    return value


RowId = Annotated[int, Ge(0), Le(2**53 - 1), BeforeValidator(_row_id)]


class MetadataRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # JSON's true is no id 1, nor 1.5 nor "1"; 7.0 is the integer 7, as JSON Schema has it.
    ids: Annotated[list[RowId], Field(max_length=1000)]
    indice_name: str | None = None


@router.get("/indices-list")
async def indices_list(services: ServicesDep, request: Request) -> list[str]:
    """The collections that can serve, as clip back lists its indices (those the
    presented key opens)."""
    store = services.store
    if store is None:
        return []
    infos = await run_in_threadpool(store.list_collections)
    grant = grant_of(request)
    return [c.name for c in infos if c.error is None and (grant is None or grant.covers(c.name))]


@router.post("/knn-service", responses=errors(400, 404, 409, 413, 415, 429, 504))
async def knn_service(
    body: KnnRequest,
    request: Request,
    retrieval: RetrievalDep,
    services: ServicesDep,
    settings: SettingsDep,
    stack: StackDep,
) -> list[dict[str, Any]]:
    """clip back's search: text, image, image URL or embedding against one side."""
    # Asked for more than the server gives: clamped, as clip-front always asks for 3,000
    # (10,000 to download) and draws what comes back.
    limit = retrieval.limits.max_k
    wanted = min(body.num_result_ids or body.num_images, limit)
    num_images = min(body.num_images, wanted)
    spec = SearchSpec(k=wanted, target=body.modality, dedup=DEDUP if body.deduplicate else None)
    retrieval.check_page(spec)
    # clip back's order: the first given of text, image, image URL and embedding, an empty
    # string being none (clip-front sends "text": "" beside an image).
    text, image, image_url = (x or None for x in (body.text, body.image, body.image_url))
    if text is not None:
        image = image_url = None
    if image is not None:
        image_url = None
    embedding = None if (text or image or image_url) else body.embedding_input
    if text is None and image is None and image_url is None and embedding is None:
        raise bad_request(
            "give one of text, image, image_url or embedding_input", code="invalid_query"
        )
    if image_url is not None and not settings.image_urls:
        raise bad_request(
            "image_url is off on this server (XMODAL_IMAGE_URLS)", code="image_url_refused"
        )
    name = await _collection(body.indice_name, retrieval, request)
    info = await retrieval.collection(name)
    if text is not None:
        part = Part(query=retrieval.text_query(text))
    elif embedding is not None:
        part = Part(query=_given_vector(embedding, info.dim))
    else:
        if image is not None:
            data = decode_base64(image, settings.max_upload_bytes, "image")
        else:
            assert image_url is not None
            data = await run_in_threadpool(stack.images.fetch, image_url)
        part = Part(query=await retrieval.image_query(data, "image"))
    page = await retrieval.search(name, [part], spec)
    described = await run_in_threadpool(
        _describe_hits, services, name, page.hits[:num_images], str(request.base_url)
    )
    out = []
    for i, hit in enumerate(page.hits):
        row = described[i] if i < len(described) else {}
        out.append({**row, "id": hit.label, "similarity": hit.score})
    return out


@router.post("/metadata", responses=errors(404, 409))
async def metadata(
    body: MetadataRequest, request: Request, retrieval: RetrievalDep, services: ServicesDep
) -> list[dict[str, Any]]:
    """The metadata of items by their integer ids (``{}`` for an id no longer stored)."""
    name = await _collection(body.indice_name, retrieval, request)
    base = str(request.base_url)

    def look_up() -> list[dict[str, Any]]:
        assert services.store is not None
        items = services.store.items_by_label(name, body.ids)
        return [
            {"id": i, "metadata": _describe(services, name, items[i], base) if i in items else {}}
            for i in body.ids
        ]

    return await run_in_threadpool(look_up)


async def _collection(indice_name: str | None, retrieval: Retrieval, request: Request) -> str:
    """The collection named, or the first that serves when none is (clip-front opened
    without ``index=`` sends an empty name); 403 for one the presented key does not open."""
    if indice_name:
        check_collection(request, indice_name)
        return indice_name
    infos = await run_in_threadpool(retrieval.store.list_collections)
    grant = grant_of(request)
    serving = [c.name for c in infos if c.error is None and (grant is None or grant.covers(c.name))]
    if not serving:
        raise bad_request("there is no collection to search", code="invalid_query")
    return serving[0]


def _given_vector(values: list[float], dim: int) -> Query:
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (dim,) or not np.all(np.isfinite(vector)):
        raise bad_request(
            f"embedding_input must be {dim} finite numbers, the collection's dimension",
            code="invalid_query",
        )
    # Scaled by its largest part first: the direction is what counts, and the norm of
    # large finite numbers (3e38 is a float32) must not overflow to infinity.
    peak = float(np.max(np.abs(vector)))
    if peak == 0:
        raise bad_request("embedding_input is all zeros", code="empty_query")
    vector /= peak
    row = (vector / np.linalg.norm(vector)).astype(np.float32)[None, :]

    async def encode(version: str) -> np.ndarray:
        return row

    return Query(Modality.TEXT, encode)


def _describe_hits(services: Any, name: str, hits: list[Hit], base: str) -> list[dict[str, Any]]:
    store = services.store
    items = store.items_by_label(name, [h.label for h in hits])
    return [
        _describe(services, name, items[h.label], base) if h.label in items else {} for h in hits
    ]


def _describe(services: Any, name: str, item: Item, base: str) -> dict[str, Any]:
    """An item as clip back's metadata: its own metadata, then caption, url and image."""
    meta = item.metadata
    caption = item.text if item.text is not None else meta.get("caption")
    out: dict[str, Any] = {**meta, "xmodal_id": item.id, "caption": caption}
    url = meta.get("url")
    if item.content_sha256 is not None:
        digest = item.content_sha256

        def original() -> bytes:
            return services.store.get_item_content(name, item.id)[0]

        try:
            jpeg = services.thumbnails.get(digest, THUMBNAIL, original)
        except (StoreError, ModelError):  # deleted meanwhile, or its file unreadable
            jpeg = None
        if jpeg is not None:
            out["image"] = base64.b64encode(jpeg).decode()
        if url is None:
            url = f"{base}v1/collections/{quote(name)}/items/{quote(item.id)}/image"
    if url is None and item.text is not None:
        url = caption_svg(item.id, item.text)
    out["url"] = url
    # What there is none of is left out, as clip back leaves out a column it lacks:
    # clip-front reads the length of any caption it is given.
    return {k: v for k, v in out.items() if v is not None}


def caption_svg(item_id: str, text: str) -> str:
    """A small picture of a text item's caption, as a data URL: clip-front draws each hit
    from its url, hides those whose image fails and folds equal urls into one, so every
    text hit gets its own (the id is in it)."""
    shown = text if len(text) <= 140 else text[:139] + "\u2026"
    lines = [shown[i : i + 28] for i in range(0, len(shown), 28)][:5]
    rows = "".join(
        f'<text x="8" y="{28 + 22 * n}">{html.escape(line)}</text>' for n, line in enumerate(lines)
    )
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="256" height="144" '
        'font-family="sans-serif" font-size="16">'
        f"<title>{html.escape(item_id)}</title>"
        f'<rect width="256" height="144" fill="#f4f1ea"/>{rows}</svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
