from __future__ import annotations

import asyncio
import math
import threading
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response, status
from pydantic import Field, Strict, field_validator
from starlette.concurrency import run_in_threadpool

from app.api.auth import AdminAccess, ReadAccess, WriteAccess, grant_of
from app.api.bodies import ControlJSONRoute
from app.api.deps import EngineDep, ServicesDep, StackDep, StoreDep
from app.api.openapi import errors
from app.api.schemas import CollectionCreate, CollectionList, CollectionOut, RequestBody
from app.service.access import opens
from index import CollectionInfo, Modality

router = APIRouter(
    route_class=ControlJSONRoute,
    prefix="/v1/collections",
    tags=["collections"],
    dependencies=[ReadAccess],
)


def collection_out(info: CollectionInfo) -> CollectionOut:
    return CollectionOut(
        name=info.name,
        index=info.index_spec,
        dim=info.dim,
        model=info.model_version,
        created_at=info.created_at,
        counts=info.counts,
        trained=info.trained,
        error=info.error,
        index_report=info.index_report,
    )


@router.post(
    "", status_code=status.HTTP_201_CREATED, dependencies=[AdminAccess], responses=errors(400, 409)
)
async def create_collection(
    body: CollectionCreate, store: StoreDep, engine: EngineDep
) -> CollectionOut:
    info = await run_in_threadpool(
        store.create_collection, body.name, engine.dim, engine.space, body.index
    )
    return collection_out(info)


@router.get("")
async def list_collections(store: StoreDep, request: Request) -> CollectionList:
    """Every collection, or those the presented key opens."""
    infos = await run_in_threadpool(store.list_collections)
    grant = grant_of(request)
    shown = [i for i in infos if opens(grant, i.name)]
    return CollectionList(collections=[collection_out(i) for i in shown])


@router.get("/{name}", responses=errors(404))
async def get_collection(name: str, store: StoreDep) -> CollectionOut:
    return collection_out(await run_in_threadpool(store.get_collection, name))


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[AdminAccess],
    responses=errors(404),
)
async def delete_collection(name: str, stack: StackDep) -> Response:
    """Delete the collection, its items, indexes and snapshots."""
    await run_in_threadpool(stack.delete_collection, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


Target = Literal["recall_at_1", "recall_at_10", "p50_ms"]


def _default_targets() -> dict[Target, float]:
    return {"recall_at_10": 0.95}


class IndexAdviceRequest(RequestBody):
    targets: dict[Target, float] = Field(
        default_factory=_default_targets,
        description="What the index must reach: recall at least, `p50_ms` at most.",
    )
    modality: Annotated[Modality, Strict(False)] | None = Field(
        None, description="Whose vectors to measure on (default: the modality with more)."
    )
    sample: int = Field(
        5000, ge=100, le=20_000, description="Vectors of the collection to build each index on."
    )
    specs: list[str] | None = Field(
        None, max_length=12, description="Specs to try (default: a ladder from Flat to PQ)."
    )

    @field_validator("targets")
    @classmethod
    def _finite(cls, value: dict[str, float]) -> dict[str, float]:
        for key, target in value.items():
            if (
                not math.isfinite(target)
                or target < 0
                or (key == "p50_ms" and target == 0)
                or (key != "p50_ms" and target > 1)
            ):
                raise ValueError(f"{key}: recall targets are 0 to 1, p50_ms a positive number")
        return value


@router.post(
    "/{name}/index-advice",
    dependencies=[WriteAccess],
    responses=errors(400, 404, 409, 429, 503, 504),
)
async def index_advice(
    name: str, body: IndexAdviceRequest, stack: StackDep, services: ServicesDep, request: Request
) -> dict[str, Any]:
    """Build each spec of a ladder (or `specs`) on a sample of the collection's vectors and
    measure it against exact search: recall as served and raw, p50 latency, bytes per
    vector; `choice` is the smallest that meets every target (null if none does). Specs
    the sample cannot train are refused (400); the measuring stops at
    two minutes (504), when the client leaves, or when the server stops."""
    targets = {str(k): v for k, v in body.targets.items()}
    stop = threading.Event()
    work = asyncio.ensure_future(
        run_in_threadpool(
            stack.advisor.advise, name, targets, body.modality, body.sample, body.specs, stop
        )
    )
    try:
        while not (await asyncio.wait({work}, timeout=0.25))[0]:
            if services.shutting_down or await request.is_disconnected():
                stop.set()
        return work.result()
    finally:
        stop.set()  # this request was cancelled, or it is done
