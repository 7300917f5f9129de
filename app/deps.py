"""Route dependencies: the settings, the store and the engine, each checked for readiness."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.engine import Engine
from app.errors import NotReady
from app.jobs import JobManager
from app.services import Services
from index import CollectionStore


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


def get_store(services: Annotated[Services, Depends(get_services)]) -> CollectionStore:
    if services.store is None:
        raise NotReady(services.load_error or "the store is still opening")
    return services.store


def get_engine(services: Annotated[Services, Depends(get_services)]) -> Engine:
    if services.engine is None:
        raise NotReady(services.load_error or "the model is still loading")
    return services.engine


def get_jobs(services: Annotated[Services, Depends(get_services)]) -> JobManager:
    if services.jobs is None:
        raise NotReady(services.load_error or "the model is still loading")
    return services.jobs


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[CollectionStore, Depends(get_store)]
EngineDep = Annotated[Engine, Depends(get_engine)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
