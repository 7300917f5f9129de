from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from app.api.auth import ReadAccess, WriteAccess
from app.api.bodies import StrictJSONRoute, loads
from app.api.deps import EngineDep, RetrievalDep, ServicesDep, SettingsDep, StoreDep
from app.api.errors import ApiError, bad_request
from app.api.openapi import DESCRIPTIONS, binary, errors
from app.api.schemas import IndexedOut, ItemOut, TextItemsIn
from app.api.uploads import read_upload
from app.service.thumbnails import SIZES
from index import InvalidValue, Modality, NewItem, UnknownItem
from index.blobs import sha256_hex
from models.images import media_type_of

router = APIRouter(
    route_class=StrictJSONRoute,
    prefix="/v1/collections/{name}",
    tags=["items"],
    dependencies=[ReadAccess],
)


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


def _bad_metadata(message: str) -> ApiError:
    # A form field is any string to the schema: what is wrong inside it is a 400.
    return ApiError(400, "invalid_metadata", message)


def _parse_metadata(raw: list[str] | None, n: int) -> list[dict[str, Any]]:
    """One JSON object per file, each in a form field."""
    if not raw:
        return [{} for _ in range(n)]
    if len(raw) != n:
        raise bad_request(f"give one metadata field per file: {len(raw)} for {n} files")
    out = []
    for i, text in enumerate(raw):
        try:
            value = loads(text, f"metadata {i}") if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise _bad_metadata(f"metadata {i} is not valid JSON: {exc.msg}") from exc
        except InvalidValue as exc:
            raise _bad_metadata(f"metadata {i}: {exc}") from exc
        if not isinstance(value, dict):
            raise _bad_metadata(f"metadata {i} must be a JSON object")
        out.append(value)
    return out


@router.post(
    "/images", dependencies=[WriteAccess], responses=errors(400, 404, 409, 413, 415, 429, 504)
)
async def add_images(
    name: str,
    files: Annotated[list[UploadFile], File(description="One or more images.")],
    retrieval: RetrievalDep,
    engine: EngineDep,
    settings: SettingsDep,
    ids: Annotated[
        list[str] | None, Form(description="One id per file (default: SHA-256 of its bytes).")
    ] = None,
    metadata: Annotated[list[str] | None, Form(description="One JSON object per file.")] = None,
) -> IndexedOut:
    retrieval.space_of(name)  # 404 before any heavy work
    retrieval.limits.check_files(len(files))
    if ids and len(ids) != len(files):  # well-formed parts that disagree: 400, as a query's
        raise bad_request(f"give one id per file: {len(ids)} for {len(files)} files")
    meta = _parse_metadata(metadata, len(files))
    blobs = [await read_upload(f, settings.max_upload_bytes) for f in files]
    digests = [sha256_hex(b) for b in blobs]  # the one hash of each upload
    item_ids = list(ids) if ids else digests
    for item_id in item_ids:
        if not 0 < len(item_id) <= 512:
            raise _invalid("ids must be 1 to 512 characters")
    prepared = await engine.prepare_images(blobs, [f.filename or "" for f in files])
    items = [
        NewItem(item_id, Modality.IMAGE, m, content=b, content_sha256=d, media_type=p.media_type)
        for item_id, m, b, d, p in zip(item_ids, meta, blobs, digests, prepared, strict=True)
    ]
    return IndexedOut(ids=await retrieval.add_images(name, items, prepared))


@router.post("/texts", dependencies=[WriteAccess], responses=errors(404, 409, 413, 429, 504))
async def add_texts(name: str, body: TextItemsIn, retrieval: RetrievalDep) -> IndexedOut:
    items = [NewItem(it.id, Modality.TEXT, it.metadata, text=it.text) for it in body.items]
    return IndexedOut(ids=await retrieval.add_texts(name, items))


# The image and thumbnail routes come first: ids may contain '/', so the item routes match
# the rest of the path.
@router.get(
    "/items/{item_id:path}/image",
    response_class=Response,
    responses={**binary("image/*", "The stored image, as uploaded."), **errors(404, 409)},
)
async def get_item_image(name: str, item_id: str, store: StoreDep) -> Response:
    """The stored image of an image item, with the media type its bytes have (whatever was
    recorded), never sniffed and never run as a page (``app.api.middleware``)."""
    data, _, digest = await run_in_threadpool(store.get_item_content, name, item_id)
    etag = f'"{digest[:32]}"'
    return Response(
        data,
        media_type=media_type_of(data) or "application/octet-stream",
        headers={"ETag": etag, "Cache-Control": "private, max-age=3600"},
    )


@router.get(
    "/items/{item_id:path}/thumbnail",
    response_class=Response,
    responses={
        **binary("image/jpeg", "A JPEG no larger than `size` on its longer side."),
        304: {"description": DESCRIPTIONS[304]},
        **errors(400, 404, 409),
    },
)
async def get_item_thumbnail(
    name: str,
    item_id: str,
    store: StoreDep,
    services: ServicesDep,
    if_none_match: Annotated[str | None, Header()] = None,
    size: Annotated[int, Query(json_schema_extra={"enum": list(SIZES)})] = 256,
) -> Response:
    """A JPEG of the stored image, its longer side at most ``size`` (64, 128, 256 or 512),
    made on first request and cached on disk."""
    if size not in SIZES:
        raise bad_request(
            f"size is one of {', '.join(map(str, SIZES))}, got {size}", code="invalid_size"
        )
    item = await run_in_threadpool(store.get_item, name, item_id)
    digest = item.content_sha256
    if digest is None or item.modality is not Modality.IMAGE:
        raise UnknownItem(f"item {item_id!r} has no stored image")
    headers = {"ETag": f'"{digest[:32]}-{size}"', "Cache-Control": "private, max-age=3600"}
    if if_none_match == headers["ETag"]:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)

    def original() -> bytes:
        return store.get_item_content(name, item_id)[0]

    data = await run_in_threadpool(services.thumbnails.get, digest, size, original)
    return Response(data, media_type="image/jpeg", headers=headers)


@router.get("/items/{item_id:path}", responses=errors(404, 409))
async def get_item(name: str, item_id: str, store: StoreDep) -> ItemOut:
    item = await run_in_threadpool(store.get_item, name, item_id)
    return ItemOut(
        id=item.id,
        modality=item.modality,
        metadata=item.metadata,
        text=item.text,
        has_image=item.content_sha256 is not None,
        model=item.model_version,
        created_at=item.created_at,
    )


@router.delete(
    "/items/{item_id:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[WriteAccess],
    responses=errors(404, 409),
)
async def delete_item(name: str, item_id: str, store: StoreDep) -> Response:
    await run_in_threadpool(store.delete_item, name, item_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
