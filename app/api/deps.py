"""Route dependencies: the settings and the parts of the stack, each checked for readiness.

Each reads the request alone, with no dependency of its own, and is ``async def``: FastAPI
runs a plain ``def`` dependency in its thread pool, and resolves every level of nesting
per request (measured, a search paid four thread hops and 0.3 ms for these)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.service.config import Settings
from app.service.engine import Engine
from app.service.errors import NotReady
from app.service.jobs import JobManager
from app.service.limits import Limits
from app.service.search.retrieval import Retrieval
from app.service.services import Services
from app.service.stack import Stack
from index import CollectionStore


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _stack(request: Request) -> Stack:
    services = _services(request)
    if services.stack is None:
        raise NotReady(services.load_error or "the model is still loading")
    return services.stack


async def get_services(request: Request) -> Services:
    return _services(request)


async def get_settings(request: Request) -> Settings:
    return _services(request).settings


async def get_stack(request: Request) -> Stack:
    return _stack(request)


async def get_store(request: Request) -> CollectionStore:
    services = _services(request)
    if services.store is None:
        raise NotReady(services.load_error or "the store is still opening")
    return services.store


async def get_engine(request: Request) -> Engine:
    return _stack(request).engine


async def get_jobs(request: Request) -> JobManager:
    return _stack(request).jobs


async def get_retrieval(request: Request) -> Retrieval:
    return _stack(request).retrieval


async def get_limits(request: Request) -> Limits:
    return _stack(request).limits


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StackDep = Annotated[Stack, Depends(get_stack)]
StoreDep = Annotated[CollectionStore, Depends(get_store)]
EngineDep = Annotated[Engine, Depends(get_engine)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
RetrievalDep = Annotated[Retrieval, Depends(get_retrieval)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
