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

import re
from typing import Annotated, Any

from annotated_types import Ge, Le
from fastapi import APIRouter, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from app.api.auth import ReadAccess, check_collection, grant_of
from app.api.bodies import AnyJSONRoute
from app.api.deps import RetrievalDep, ServicesDep, SettingsDep, StackDep
from app.api.errors import bad_request
from app.api.openapi import errors
from app.service.clip_back import Describer, default_collection, serving_collections
from app.service.queries import BASE64, decode_base64, vector_query
from app.service.search.ranking import SearchSpec
from app.service.search.retrieval import Part, Retrieval
from app.service.threads import run_in_threadpool
from index import Modality

DEDUP = 0.94  # clip back's threshold for its deduplicate option

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
    return await run_in_threadpool(serving_collections, services.store, grant_of(request))


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
        part = Part(query=vector_query(embedding, info.dim, "embedding_input"))
    else:
        if image is not None:
            data = decode_base64(image, settings.max_upload_bytes, "image")
        else:
            assert image_url is not None
            data = await run_in_threadpool(stack.images.fetch, image_url)
        part = Part(query=await retrieval.image_query(data, "image"))
    page = await retrieval.search(name, [part], spec)
    describe = Describer(retrieval.store, services.thumbnails, str(request.base_url))
    described = await run_in_threadpool(describe.hits, name, page.hits[:num_images])
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
    describe = Describer(retrieval.store, services.thumbnails, str(request.base_url))
    return await run_in_threadpool(describe.labels, name, body.ids)


async def _collection(indice_name: str | None, retrieval: Retrieval, request: Request) -> str:
    """The collection named (403 for one the presented key does not open), or the first
    it opens when none is: clip-front opened without ``index=`` sends an empty name."""
    if indice_name:
        check_collection(request, indice_name)
        return indice_name
    return await run_in_threadpool(default_collection, retrieval.store, grant_of(request))
