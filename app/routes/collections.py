from __future__ import annotations

from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from app.auth import ReadAccess, WriteAccess
from app.bodies import StrictJSONRoute
from app.deps import EngineDep, StoreDep
from app.openapi import errors
from app.schemas import CollectionCreate, CollectionList, CollectionOut
from index import CollectionInfo

router = APIRouter(
    route_class=StrictJSONRoute,
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
    )


@router.post(
    "", status_code=status.HTTP_201_CREATED, dependencies=[WriteAccess], responses=errors(400, 409)
)
async def create_collection(
    body: CollectionCreate, store: StoreDep, engine: EngineDep
) -> CollectionOut:
    info = await run_in_threadpool(
        store.create_collection, body.name, engine.dim, engine.version, body.index
    )
    return collection_out(info)


@router.get("")
async def list_collections(store: StoreDep) -> CollectionList:
    infos = await run_in_threadpool(store.list_collections)
    return CollectionList(collections=[collection_out(i) for i in infos])


@router.get("/{name}", responses=errors(404))
async def get_collection(name: str, store: StoreDep) -> CollectionOut:
    return collection_out(await run_in_threadpool(store.get_collection, name))


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[WriteAccess],
    responses=errors(404),
)
async def delete_collection(name: str, store: StoreDep) -> Response:
    await run_in_threadpool(store.delete_collection, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
