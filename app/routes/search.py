from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from app.auth import ReadAccess
from app.deps import EngineDep, SettingsDep, StoreDep
from app.errors import ApiError, bad_request
from app.schemas import SearchHit, SearchRequest, SearchResponse
from app.uploads import decode_base64, read_upload
from index import CollectionStore, Modality, ModelMismatch

router = APIRouter(prefix="/v1/collections/{name}", tags=["search"], dependencies=[ReadAccess])


def _check_k(k: int, limit: int) -> None:
    if not 1 <= k <= limit:
        raise bad_request(f"k must be between 1 and {limit}, got {k}", code="invalid_k")


QueryEncoder = Callable[[str], Awaitable[np.ndarray]]


async def _run_search(
    store: CollectionStore,
    name: str,
    encode: QueryEncoder,
    source: Modality,
    target: Modality | None,
    k: int,
    where: dict[str, Any] | None,
    started: float,
) -> SearchResponse:
    """Embed the query with the model version the collection holds and search it. During
    an activation a collection can switch version between the two steps; the search then
    runs once more, so every answer comes from one version."""
    for attempt in (1, 2):
        info = await run_in_threadpool(store.get_collection, name)
        try:
            query = await encode(info.model_version)  # its model may be unloaded meanwhile
            hits = await run_in_threadpool(
                store.search,
                name,
                target or source.other,
                query,
                k,
                model_version=info.model_version,
                where=where,
            )
            break
        except ModelMismatch:
            if attempt == 2:
                raise
    return SearchResponse(
        results=[
            SearchHit(id=h.id, score=h.score, modality=h.modality, metadata=h.metadata, text=h.text)
            for h in hits[0]
        ],
        took_ms=round((time.perf_counter() - started) * 1000, 3),
    )


@router.post("/search")
async def search(
    name: str, body: SearchRequest, store: StoreDep, engine: EngineDep, settings: SettingsDep
) -> SearchResponse:
    """Search with a text or a base64 image; `target` defaults to the other modality."""
    started = time.perf_counter()
    _check_k(body.k, settings.max_k)
    if body.text is not None and body.image_base64 is not None:
        raise bad_request("give either text or image_base64, not both")
    await run_in_threadpool(store.get_collection, name)
    if body.image_base64 is not None:
        data = decode_base64(body.image_base64, settings.max_upload_bytes)
        prepared = await engine.prepare_images([data], ["image_base64"])

        async def encode(version: str) -> np.ndarray:
            return await engine.embed_prepared(prepared, version)

        source = Modality.IMAGE
    else:
        text = (body.text or "").strip()
        if not text:
            raise bad_request(
                "the query is empty: give a non-blank text or an image", code="empty_query"
            )
        if len(text) > settings.max_text_chars:
            raise ApiError(
                413, "too_large", f"query text exceeds {settings.max_text_chars} characters"
            )

        async def encode(version: str) -> np.ndarray:
            return await engine.embed_texts([text], version)

        source = Modality.TEXT
    return await _run_search(store, name, encode, source, body.target, body.k, body.filter, started)


@router.post("/search/image")
async def search_by_upload(
    name: str,
    file: Annotated[UploadFile, File(description="The query image.")],
    store: StoreDep,
    engine: EngineDep,
    settings: SettingsDep,
    target: Annotated[Modality | None, Form()] = None,
    k: Annotated[int, Form()] = 10,
    filter: Annotated[
        str | None, Form(description="JSON object: metadata key equals value.")
    ] = None,
) -> SearchResponse:
    """Search with an uploaded image (multipart)."""
    started = time.perf_counter()
    _check_k(k, settings.max_k)
    where = None
    if filter:
        try:
            where = json.loads(filter)
        except json.JSONDecodeError as exc:
            raise ApiError(422, "invalid_request", f"filter is not valid JSON: {exc.msg}") from exc
        if not isinstance(where, dict):
            raise ApiError(422, "invalid_request", "filter must be a JSON object")
    await run_in_threadpool(store.get_collection, name)
    data = await read_upload(file, settings.max_upload_bytes)
    prepared = await engine.prepare_images([data], [file.filename or "file"])

    async def encode(version: str) -> np.ndarray:
        return await engine.embed_prepared(prepared, version)

    return await _run_search(store, name, encode, Modality.IMAGE, target, k, where, started)
