from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from app.api.auth import ReadAccess
from app.api.bodies import StrictJSONRoute, loads
from app.api.deps import RetrievalDep, SettingsDep
from app.api.errors import ApiError, bad_request
from app.api.openapi import errors
from app.api.schemas import (
    BatchAnswer,
    BatchSearchRequest,
    BatchSearchResponse,
    FacetCount,
    QueryPart,
    SearchGroup,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from app.api.uploads import read_upload
from app.service.config import Settings
from app.service.errors import ServiceError
from app.service.queries import decode_base64
from app.service.search.ranking import Page, SearchSpec
from app.service.search.retrieval import Part, Retrieval
from index import Hit, InvalidValue, Modality

router = APIRouter(
    route_class=StrictJSONRoute,
    prefix="/v1/collections/{name}",
    tags=["search"],
    dependencies=[ReadAccess],
)


def _hits(hits: list[Hit]) -> list[SearchHit]:
    return [
        SearchHit(id=h.id, score=h.score, modality=h.modality, metadata=h.metadata, text=h.text)
        for h in hits
    ]


def _groups(page: Page) -> list[SearchGroup] | None:
    if page.groups is None:
        return None
    return [SearchGroup(value=value, results=_hits(hits)) for value, hits in page.groups]


def _facets(page: Page) -> dict[str, list[FacetCount]] | None:
    if page.facets is None:
        return None
    return {
        key: [FacetCount(value=v, count=n) for v, n in counts]
        for key, counts in page.facets.items()
    }


def _took(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def spec_of(body: SearchRequest) -> SearchSpec:
    parts = body.query or []
    texts = [body.text] if body.text is not None else [p.text for p in parts if p.weight > 0]
    return SearchSpec(
        k=body.k,
        offset=body.offset,
        target=body.target,
        where=body.filter,
        min_score=body.min_score,
        min_relative=body.min_relative,
        dedup=body.dedup,
        mode=body.mode,
        fusion=body.fusion,
        alpha=body.alpha,
        group_by=body.group_by,
        group_size=body.group_size,
        facets=tuple(dict.fromkeys(body.facets or ())),
        # The words lexical ranking matches: the query's text, or its parts' that weigh
        # towards (a negative part's words are not looked for).
        lexical_text=" ".join(t for t in texts if t) or None,
    )


async def parts_of(body: SearchRequest, retrieval: Retrieval, settings: Settings) -> list[Part]:
    """The query's parts: ``query``, or the one of ``text``, ``image_base64``, ``item_id``."""
    shorthands = (body.text, body.image_base64, body.item_id)
    given = sum(x is not None for x in (*shorthands, body.query))
    if given == 0:
        raise bad_request(
            "the query is empty: give text, image_base64, item_id or query", code="empty_query"
        )
    if given > 1:
        raise bad_request(
            "give exactly one of query, text, image_base64 or item_id", code="invalid_query"
        )
    raw = body.query or [
        QueryPart(text=body.text, image_base64=body.image_base64, item_id=body.item_id)
    ]
    parts = []
    for i, part in enumerate(raw):
        where = f"query[{i}]" if body.query else "the query"
        if sum(x is not None for x in (part.text, part.image_base64, part.item_id)) != 1:
            raise bad_request(
                f"{where} needs exactly one of text, image_base64 or item_id",
                code="invalid_query",
            )
        if part.item_id is not None:
            parts.append(Part(part.weight, item_id=part.item_id, exclude=not body.include_self))
        elif part.image_base64 is not None:
            data = decode_base64(part.image_base64, settings.max_upload_bytes)
            parts.append(Part(part.weight, await retrieval.image_query(data, where)))
        else:
            parts.append(Part(part.weight, retrieval.text_query(part.text)))
    return parts


@router.post("/search", responses=errors(400, 404, 409, 413, 415, 429, 504))
async def search(
    name: str, body: SearchRequest, retrieval: RetrievalDep, settings: SettingsDep
) -> SearchResponse:
    """Search with a text, an image, a stored item or a weighted combination of them;
    with score cut-offs, pages and near-duplicate collapse."""
    started = time.perf_counter()
    spec = spec_of(body)
    retrieval.check_page(spec)
    retrieval.space_of(name)  # 404 before any heavy work
    parts = await parts_of(body, retrieval, settings)
    page = await retrieval.search(name, parts, spec)
    return SearchResponse(
        results=_hits(page.hits),
        next_offset=page.next_offset,
        groups=_groups(page),
        facets=_facets(page),
        took_ms=_took(started),
    )


@contextlib.contextmanager
def _naming(prefix: str) -> Iterator[None]:
    """Errors raised inside name the part of the request they are about."""
    try:
        yield
    except ApiError as exc:
        raise ApiError(exc.status, exc.code, f"{prefix}{exc.message}") from exc
    except ServiceError as exc:
        raise exc.prefixed(prefix) from exc


@router.post("/search/batch", responses=errors(400, 404, 409, 413, 415, 429, 504))
async def search_batch(
    name: str, body: BatchSearchRequest, retrieval: RetrievalDep, settings: SettingsDep
) -> BatchSearchResponse:
    """Many searches at once: embedded together and searched as one matrix per target
    and filter. One bad query refuses the whole request, naming it."""
    started = time.perf_counter()
    retrieval.limits.check_batch(len(body.queries))
    # The batch as a whole within what one request may embed: texts and images counted
    # over every query's parts, before any is decoded or encoded.
    texts: list[str] = []
    images = 0
    for q in body.queries:
        pairs = [(p.text, p.image_base64) for p in q.query or []] + [(q.text, q.image_base64)]
        texts += [text for text, _ in pairs if text is not None]
        images += sum(image is not None for _, image in pairs)
    retrieval.limits.check_texts(texts)
    retrieval.limits.check_files(images)
    specs = [spec_of(q) for q in body.queries]
    for i, spec in enumerate(specs):
        with _naming(f"queries[{i}]: "):
            retrieval.check_page(spec)
    retrieval.space_of(name)  # 404 before any heavy work
    queries = []
    for i, (q, spec) in enumerate(zip(body.queries, specs, strict=True)):
        with _naming(f"queries[{i}]: "):
            queries.append((await parts_of(q, retrieval, settings), spec))
    pages = await retrieval.search_many(name, queries)
    answers = [
        BatchAnswer(
            results=_hits(p.hits),
            next_offset=p.next_offset,
            groups=_groups(p),
            facets=_facets(p),
        )
        for p in pages
    ]
    return BatchSearchResponse(answers=answers, took_ms=_took(started))


@router.post("/search/image", responses=errors(400, 404, 409, 413, 415, 429, 504))
async def search_by_upload(
    name: str,
    file: Annotated[UploadFile, File(description="The query image.")],
    retrieval: RetrievalDep,
    settings: SettingsDep,
    target: Annotated[Modality | None, Form()] = None,
    k: Annotated[int, Form()] = 10,
    offset: Annotated[int, Form(ge=0)] = 0,
    filter: Annotated[
        str | None, Form(description="JSON object: metadata key equals value.")
    ] = None,
    weight: Annotated[float, Form(ge=-10, le=10, description="The image's weight.")] = 1.0,
    text: Annotated[
        str | None, Form(description="A text to combine with the image (a second part).")
    ] = None,
    text_weight: Annotated[float, Form(ge=-10, le=10)] = 1.0,
    min_score: Annotated[float | None, Form(ge=-1, le=1)] = None,
    min_relative: Annotated[float | None, Form(ge=0, le=1)] = None,
    dedup: Annotated[float | None, Form(gt=0, le=1)] = None,
) -> SearchResponse:
    """Search with an uploaded image (multipart), optionally combined with a text."""
    started = time.perf_counter()
    spec = SearchSpec(
        k=k,
        offset=offset,
        target=target,
        where=_form_filter(filter),
        min_score=min_score,
        min_relative=min_relative,
        dedup=dedup,
    )
    retrieval.check_page(spec)
    retrieval.space_of(name)  # 404 before any heavy work
    data = await read_upload(file, settings.max_upload_bytes)
    parts = [Part(weight, await retrieval.image_query(data, file.filename or "file"))]
    if text is not None:
        parts.append(Part(text_weight, retrieval.text_query(text)))
    page = await retrieval.search(name, parts, spec)
    return SearchResponse(
        results=_hits(page.hits), next_offset=page.next_offset, took_ms=_took(started)
    )


def _form_filter(value: str | None) -> dict[str, Any] | None:
    """The form's ``filter`` field: a string holding a JSON object. Whatever is wrong
    inside that string makes an invalid filter (400), as a filter in a JSON body does."""
    if not value:
        return None
    try:
        where = loads(value, "filter")
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_filter", f"filter is not valid JSON: {exc.msg}") from exc
    except InvalidValue as exc:
        raise ApiError(400, "invalid_filter", str(exc)) from exc
    if not isinstance(where, dict):
        raise ApiError(400, "invalid_filter", "filter must be a JSON object")
    return where
