from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from app.api.auth import MetricsAccess
from app.api.bodies import ControlJSONRoute
from app.api.deps import ServicesDep
from app.api.errors import error_response
from app.api.openapi import errors
from app.service.threads import run_in_threadpool
from index import CatalogueUnavailable


class Ready(BaseModel):
    status: str
    model: str
    device: str
    server: str  # this server's id (behind a load balancer: which one answered)


router = APIRouter(route_class=ControlJSONRoute, tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={
        200: {"model": Ready, "description": "Ready: the model serving, on which device."},
        **errors(503),
    },
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """The model is loaded, the store is open and its catalogue answers (503 until then,
    while the catalogue's database server cannot be reached, and while stopping)."""
    if services.ready and services.stack is not None:
        try:
            await run_in_threadpool(services.stack.store.db.check)
        except CatalogueUnavailable as exc:
            return error_response(503, "catalogue_unavailable", str(exc), {"Retry-After": "5"})
        engine = services.stack.engine
        return JSONResponse(
            {
                "status": "ready",
                "model": engine.version,
                "device": engine.encoder.device_name,
                "server": services.stack.follower.servers.id,
            }
        )
    message = "shutting down" if services.shutting_down else services.load_error or services.loading
    return error_response(503, "not_ready", message, {"Retry-After": "5"})


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[MetricsAccess],
    responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {}}}},
)
def metrics(services: ServicesDep) -> Response:
    """Prometheus text format. A plain ``def``: collecting index sizes takes the store's
    locks, so it runs in the thread pool, not on the event loop."""
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
