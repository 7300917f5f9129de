"""Route dependencies: the settings and the parts of the stack, each checked for readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.engine import Engine
from app.errors import NotReady
from app.jobs import JobManager
from app.retrieval import Retrieval
from app.services import Services
from app.stack import Stack
from index import CollectionStore


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


def get_stack(services: Annotated[Services, Depends(get_services)]) -> Stack:
    if services.stack is None:
        raise NotReady(services.load_error or "the model is still loading")
    return services.stack


def get_store(services: Annotated[Services, Depends(get_services)]) -> CollectionStore:
    if services.store is None:
        raise NotReady(services.load_error or "the store is still opening")
    return services.store


def get_engine(stack: Annotated[Stack, Depends(get_stack)]) -> Engine:
    return stack.engine


def get_jobs(stack: Annotated[Stack, Depends(get_stack)]) -> JobManager:
    return stack.jobs


def get_retrieval(stack: Annotated[Stack, Depends(get_stack)]) -> Retrieval:
    return stack.retrieval


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StackDep = Annotated[Stack, Depends(get_stack)]
StoreDep = Annotated[CollectionStore, Depends(get_store)]
EngineDep = Annotated[Engine, Depends(get_engine)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
RetrievalDep = Annotated[Retrieval, Depends(get_retrieval)]
