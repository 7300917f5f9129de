from __future__ import annotations

from fastapi import APIRouter

from app.api.auth import ReadAccess
from app.api.bodies import StrictJSONRoute
from app.api.deps import EngineDep, LimitsDep
from app.api.errors import bad_request
from app.api.openapi import errors
from app.api.schemas import EmbedRequest, EmbedResponse
from app.service.queries import embed_base64_images

router = APIRouter(
    route_class=StrictJSONRoute, prefix="/v1", tags=["embed"], dependencies=[ReadAccess]
)


@router.post("/embed", responses=errors(400, 413, 415, 429, 504))
async def embed(body: EmbedRequest, engine: EngineDep, limits: LimitsDep) -> EmbedResponse:
    """L2-normalised embeddings of texts or base64 images, in the order given."""
    if (body.texts is None) == (body.images_base64 is None):
        raise bad_request("give exactly one of texts or images_base64")
    if body.texts is not None:
        if not body.texts or any(not t.strip() for t in body.texts):
            raise bad_request(
                "texts must be a non-empty list of non-blank strings", code="empty_query"
            )
        limits.check_texts(body.texts)
        vectors = await engine.embed_texts(body.texts)
    else:
        images = body.images_base64 or []
        if not images:
            raise bad_request("images_base64 must not be empty", code="empty_query")
        labels = [f"images_base64[{i}]" for i in range(len(images))]
        vectors = await embed_base64_images(engine, limits, images, labels)
    return EmbedResponse(vectors=vectors.tolist(), model=engine.space, dim=engine.dim)
