from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from app.auth import ReadAccess
from app.bodies import StrictJSONRoute, loads
from app.deps import RetrievalDep, SettingsDep
from app.errors import ApiError, bad_request
from app.openapi import errors
from app.schemas import SearchHit, SearchRequest, SearchResponse
from app.uploads import decode_base64, read_upload
from index import Hit, InvalidValue, Modality

router = APIRouter(
    route_class=StrictJSONRoute,
    prefix="/v1/collections/{name}",
    tags=["search"],
    dependencies=[ReadAccess],
)


def _response(hits: list[Hit], started: float) -> SearchResponse:
    return SearchResponse(
        results=[
            SearchHit(id=h.id, score=h.score, modality=h.modality, metadata=h.metadata, text=h.text)
            for h in hits
        ],
        took_ms=round((time.perf_counter() - started) * 1000, 3),
    )


@router.post("/search", responses=errors(400, 404, 409, 413, 415, 429, 504))
async def search(
    name: str, body: SearchRequest, retrieval: RetrievalDep, settings: SettingsDep
) -> SearchResponse:
    """Search with a text or a base64 image; `target` defaults to the other modality."""
    started = time.perf_counter()
    retrieval.check_k(body.k)
    if body.text is not None and body.image_base64 is not None:
        raise bad_request("give either text or image_base64, not both")
    await retrieval.collection(name)
    if body.image_base64 is not None:
        data = decode_base64(body.image_base64, settings.max_upload_bytes)
        query = await retrieval.image_query(data, "image_base64")
    else:
        query = retrieval.text_query(body.text)
    hits = await retrieval.search(name, query, body.k, body.target, body.filter)
    return _response(hits, started)


@router.post("/search/image", responses=errors(400, 404, 409, 413, 415, 429, 504))
async def search_by_upload(
    name: str,
    file: Annotated[UploadFile, File(description="The query image.")],
    retrieval: RetrievalDep,
    settings: SettingsDep,
    target: Annotated[Modality | None, Form()] = None,
    k: Annotated[int, Form()] = 10,
    filter: Annotated[
        str | None, Form(description="JSON object: metadata key equals value.")
    ] = None,
) -> SearchResponse:
    """Search with an uploaded image (multipart)."""
    started = time.perf_counter()
    retrieval.check_k(k)
    where = None
    if filter:
        try:
            where = loads(filter, "filter")
        except json.JSONDecodeError as exc:
            raise ApiError(422, "invalid_request", f"filter is not valid JSON: {exc.msg}") from exc
        except InvalidValue as exc:
            raise ApiError(422, "invalid_request", str(exc)) from exc
        if not isinstance(where, dict):
            raise ApiError(422, "invalid_request", "filter must be a JSON object")
    await retrieval.collection(name)
    data = await read_upload(file, settings.max_upload_bytes)
    query = await retrieval.image_query(data, file.filename or "file")
    hits = await retrieval.search(name, query, k, target, where)
    return _response(hits, started)
