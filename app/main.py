"""``create_app(settings)``: the whole HTTP service, built from one settings object."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.config import Settings
from app.errors import install_error_handlers
from app.metrics import Metrics
from app.middleware import BodySizeLimit, RequestMetrics
from app.routes import collections, embed, health, items, jobs, models, search
from app.services import Services

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    services = Services(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="xmodal",
        version="0.1.0",
        summary="Cross-modal retrieval: search images with text and text with images.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    for module in (health, collections, items, search, embed, jobs, models):
        app.include_router(module.router)
    # Outermost first: metrics see every answer, including the size limit's 413s.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app
