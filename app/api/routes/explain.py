"""Why a stored picture came back for a query: its occlusion map (``app.service.explain``),
as numbers or as a PNG overlay."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.auth import ReadAccess
from app.api.bodies import StrictJSONRoute
from app.api.deps import EngineDep, LimitsDep, RetrievalDep, SettingsDep
from app.api.errors import bad_request
from app.api.openapi import errors
from app.api.picture_schemas import ExplainRequest, ExplainResponse
from app.service.engine import PreparedImage
from app.service.explain import check_grid, occluded, occlusion_map, overlay_png
from app.service.queries import decode_base64
from app.service.threads import run_in_threadpool

router = APIRouter(
    route_class=StrictJSONRoute,
    prefix="/v1/collections/{name}",
    tags=["search"],
    dependencies=[ReadAccess],
)


@router.post(
    "/explain",
    response_model=None,
    responses={
        200: {
            "model": ExplainResponse,
            "content": {"image/png": {}},
            "description": "The map; with `format` `png`, the picture with the map over it.",
        },
        **errors(400, 404, 409, 413, 415, 429, 504),
    },
)
async def explain(
    name: str,
    body: ExplainRequest,
    retrieval: RetrievalDep,
    engine: EngineDep,
    limits: LimitsDep,
    settings: SettingsDep,
) -> ExplainResponse | Response:
    """Which regions of the stored picture ``item_id`` carry its match with the query: a
    grid of how much its cosine to the query drops when each region is hidden."""
    check_grid(body.grid)
    if (body.text is None) == (body.image_base64 is None):
        raise bad_request("give the query as text or image_base64", code="invalid_query")
    space = retrieval.space_of(name)
    data, media_type, _ = await run_in_threadpool(
        retrieval.store.get_item_content, name, body.item_id
    )
    if body.text is not None:
        limits.check_texts([body.text])
        query = (await engine.embed_texts([body.text], space, query=True))[0]
    else:
        blob = decode_base64(body.image_base64 or "", settings.max_upload_bytes)
        (prepared,) = await engine.prepare_images([blob], ["image_base64"])
        query = (await engine.embed_prepared([prepared], space))[0]
    (picture,) = await engine.prepare_images([data], [body.item_id])
    batch = occluded(picture.pixels, body.grid)
    vectors = await engine.embed_prepared([PreparedImage(p, media_type) for p in batch], space)
    grid_map = occlusion_map(vectors, query, body.grid)
    if body.format == "png":
        png = await run_in_threadpool(overlay_png, data, grid_map, settings.max_image_pixels)
        return Response(png, media_type="image/png")
    return ExplainResponse(
        grid=grid_map.round(6).tolist(),
        score=float(vectors[0] @ query),
        model=space,
    )
