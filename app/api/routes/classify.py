"""Zero-shot labels of a picture: given as base64, uploaded, or stored in a collection."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.api.auth import ReadAccess, check_collection
from app.api.bodies import StrictJSONRoute
from app.api.deps import EngineDep, LimitsDep, RetrievalDep, SettingsDep
from app.api.errors import bad_request
from app.api.openapi import errors
from app.api.picture_schemas import ClassifyRequest, ClassifyResponse, LabelProbability
from app.api.uploads import read_upload
from app.service.engine import Engine
from app.service.limits import Limits
from app.service.queries import decode_base64
from app.service.threads import run_in_threadpool
from app.service.zero_shot import label_vectors, probabilities, ranked
from index import Modality

router = APIRouter(
    route_class=StrictJSONRoute, prefix="/v1", tags=["classify"], dependencies=[ReadAccess]
)


async def _answer(
    engine: Engine,
    limits: Limits,
    image: object,
    labels: list[str],
    templates: list[str] | None,
    space: str,
) -> ClassifyResponse:
    vectors = await label_vectors(engine, limits, labels, templates, space)
    probs = probabilities(image, vectors)  # type: ignore[arg-type]
    return ClassifyResponse(
        labels=[LabelProbability(label=lab, probability=p) for lab, p in ranked(labels, probs)],
        model=space,
    )


@router.post("/classify", responses=errors(400, 403, 404, 413, 415, 429, 504))
async def classify(
    body: ClassifyRequest,
    request: Request,
    engine: EngineDep,
    limits: LimitsDep,
    retrieval: RetrievalDep,
    settings: SettingsDep,
) -> ClassifyResponse:
    """How well each label describes a picture (zero-shot: the serving version's towers,
    prompt templates, a softmax over the labels)."""
    stored = body.collection is not None or body.item_id is not None
    if (body.image_base64 is not None) == stored or (
        stored and (body.collection is None or body.item_id is None)
    ):
        raise bad_request("give image_base64, or collection and item_id", code="invalid_query")
    if body.collection is not None and body.item_id is not None:
        check_collection(request, body.collection)
        space = retrieval.space_of(body.collection)
        modality, vector = await run_in_threadpool(
            retrieval.store.item_vector, body.collection, body.item_id, space
        )
        if modality is not Modality.IMAGE:
            raise bad_request(f"item {body.item_id!r} is a text, not a picture")
    else:
        assert body.image_base64 is not None
        data = decode_base64(body.image_base64, settings.max_upload_bytes)
        (prepared,) = await engine.prepare_images([data], ["image_base64"])
        space = engine.space
        vector = (await engine.embed_prepared([prepared], space))[0]
    return await _answer(engine, limits, vector, body.labels, body.templates, space)


@router.post("/classify/image", responses=errors(400, 413, 415, 429, 504))
async def classify_upload(
    engine: EngineDep,
    limits: LimitsDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="The picture.")],
    labels: Annotated[list[str], Form(description="The labels, one field each.")],
    templates: Annotated[list[str] | None, Form()] = None,
) -> ClassifyResponse:
    """``/v1/classify`` with an uploaded picture (multipart)."""
    try:  # the form's fields, held to the JSON body's rules (422 naming them)
        checked = ClassifyRequest.model_validate(
            {"labels": labels, "templates": templates, "image_base64": "-"}
        )
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
    data = await read_upload(file, settings.max_upload_bytes)
    (prepared,) = await engine.prepare_images([data], [file.filename or "file"])
    space = engine.space
    vector = (await engine.embed_prepared([prepared], space))[0]
    return await _answer(engine, limits, vector, checked.labels, checked.templates, space)
