"""``create_app(settings)``: the whole HTTP service, built from one settings object."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.middleware import Admission, AdmissionLimits, RequestContext
from app.api.open_cors import OpenCors
from app.api.openapi import install_openapi
from app.api.routes import (
    classify,
    clip_compat,
    collections,
    embed,
    explain,
    health,
    items,
    jobs,
    labels,
    models,
    openai_compat,
    search,
    snapshots,
)
from app.api.sites import SiteGuard
from app.service.access import KeyRing
from app.service.config import Settings
from app.service.metrics import Metrics
from app.service.services import Services

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parents[1] / "web"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    services = Services(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.start()
        if services.accept_when_ready:
            await services.until_ready()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="xmodal",
        version="0.1.0",
        summary="Cross-modal retrieval: search images with text and text with images.",
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, with local assets
        redoc_url=None,
    )
    app.state.services = services
    install_error_handlers(app)
    install_docs(app)
    for module in (
        health,
        collections,
        items,
        search,
        embed,
        openai_compat,
        jobs,
        snapshots,
        models,
        clip_compat,
        classify,
        explain,
        labels,
    ):
        app.include_router(module.router)
    # The web page: static files, no build step; it only talks to the API above.
    app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        # The page names /ui/favicon.svg; tools and browsers that ask here get it too.
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    app.state.keys = KeyRing(
        [k.get_secret_value() for k in settings.api_keys], settings.api_keys_file
    )
    install_openapi(app, settings, app.state.keys.enabled)
    # Added innermost first. From the outside in: the request id, access log and request
    # metrics see every answer; CORS headers go on refusals as well; then the limits.
    limits = AdmissionLimits(
        max_body_bytes=settings.max_request_bytes,
        body_timeout_s=settings.body_timeout_s,
        max_concurrent=settings.max_concurrent_requests,
        per_client=settings.max_requests_per_client,
    )
    app.add_middleware(Admission, limits=limits, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(
        SiteGuard,
        bound=settings.host,
        allowed_hosts=settings.allowed_hosts,
        cors_origins=settings.cors_origins,
        open_reads=not (app.state.keys.enabled and settings.auth_reads),
    )
    app.add_middleware(RequestContext, metrics=metrics)
    app.add_middleware(OpenCors)  # outermost: clip back's routes answer any origin
    return app
