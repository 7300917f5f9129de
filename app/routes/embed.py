from __future__ import annotations

from fastapi import APIRouter

from app.auth import ReadAccess
from app.bodies import StrictJSONRoute
from app.deps import EngineDep, SettingsDep
from app.errors import bad_request, too_large
from app.openapi import errors
from app.schemas import EmbedRequest, EmbedResponse
from app.uploads import decode_base64

router = APIRouter(
    route_class=StrictJSONRoute, prefix="/v1", tags=["embed"], dependencies=[ReadAccess]
)


@router.post("/embed", responses=errors(400, 413, 415, 429, 504))
async def embed(body: EmbedRequest, engine: EngineDep, settings: SettingsDep) -> EmbedResponse:
    """L2-normalised embeddings of texts or base64 images, in the order given."""
    if (body.texts is None) == (body.images_base64 is None):
        raise bad_request("give exactly one of texts or images_base64")
    if body.texts is not None:
        if not body.texts or any(not t.strip() for t in body.texts):
            raise bad_request(
                "texts must be a non-empty list of non-blank strings", code="empty_query"
            )
        if len(body.texts) > settings.max_texts_per_request:
            raise too_large(
                f"{len(body.texts)} texts; the limit is {settings.max_texts_per_request}"
            )
        if any(len(t) > settings.max_text_chars for t in body.texts):
            raise too_large(f"a text exceeds {settings.max_text_chars} characters")
        vectors = await engine.embed_texts(body.texts)
    else:
        images = body.images_base64 or []
        if not images:
            raise bad_request("images_base64 must not be empty", code="empty_query")
        if len(images) > settings.max_files_per_request:
            raise too_large(f"{len(images)} images; the limit is {settings.max_files_per_request}")
        blobs = [
            decode_base64(b, settings.max_upload_bytes, f"images_base64[{i}]")
            for i, b in enumerate(images)
        ]
        prepared = await engine.prepare_images(
            blobs, [f"images_base64[{i}]" for i in range(len(blobs))]
        )
        vectors = await engine.embed_prepared(prepared)
    return EmbedResponse(vectors=vectors.tolist(), model=engine.space, dim=engine.dim)
