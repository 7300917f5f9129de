"""Every error leaves as ``{"error": {"code", "message"}}`` with one status per kind."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import index
from app.api.route_table import allowed_methods
from app.service import errors as service_errors
from models import errors as model_errors
from models.errors import InvalidParameters
from models.registry import UnknownModel
from models.sources import SourceError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the HTTP floor itself detects (request shape, upload sizes, readiness);
    the service's own errors are ``app.service.errors.ServiceError``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str, code: str = "bad_request") -> ApiError:
    return ApiError(400, code, message)


def too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message)


# The service's kinds of error -> status; each error carries its own code.
_SERVICE: dict[type[service_errors.ServiceError], int] = {
    service_errors.Invalid: 400,
    service_errors.Unprocessable: 422,
    service_errors.TooLarge: 413,
    service_errors.Conflict: 409,
    service_errors.InsufficientStorage: 507,
    service_errors.Busy: 429,
    service_errors.NotReady: 503,
    service_errors.Failed: 500,
}


def service_status(exc: service_errors.ServiceError) -> int:
    for kind in type(exc).__mro__:
        if kind in _SERVICE:
            return _SERVICE[kind]
    return 500


# Domain exceptions -> (status, code). Order matters only for subclasses.
_DOMAIN: list[tuple[type[Exception], int, str]] = [
    (index.UnknownCollection, 404, "collection_not_found"),
    (index.UnknownItem, 404, "item_not_found"),
    (index.CollectionExists, 409, "collection_exists"),
    (index.DataDirInUse, 503, "data_dir_in_use"),
    (index.BackendUnavailable, 503, "vector_backend_unavailable"),
    (index.CatalogueUnavailable, 503, "catalogue_unavailable"),
    (index.CollectionBroken, 409, "collection_broken"),
    (index.InvalidIndexSpec, 400, "invalid_index"),
    (index.InvalidFilter, 400, "invalid_filter"),
    (index.InvalidValue, 422, "invalid_value"),
    (index.CollectionMoved, 409, "collection_changed"),
    (index.ModelMismatch, 409, "model_mismatch"),
    (index.UnknownJob, 404, "job_not_found"),
    (index.JobFinished, 409, "job_finished"),
    (index.JobNotCancellable, 409, "job_not_cancellable"),
    (SourceError, 400, "invalid_source"),
    (UnknownModel, 404, "model_not_found"),
    (InvalidParameters, 400, "invalid_parameters"),
    (index.DimensionMismatch, 409, "dimension_mismatch"),
    (model_errors.ImageTooLarge, 413, "image_too_large"),
    (model_errors.ImageDecodeError, 415, "unsupported_media_type"),
    (model_errors.QueueFull, 429, "queue_full"),
    (model_errors.DeadlineExceeded, 504, "deadline_exceeded"),
    (index.Interrupted, 504, "deadline_exceeded"),
    (model_errors.ModelLoadError, 503, "model_unavailable"),
]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        if err.get("type") == "json_invalid":
            position = next((x for x in err.get("loc", ()) if isinstance(x, int)), "?")
            parts.append(f"body is not valid JSON (error at character {position})")
            continue
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts) or "malformed request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status == 503:
            headers = {"Retry-After": "5"}
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(service_errors.ServiceError)
    async def _service_error(request: Request, exc: service_errors.ServiceError) -> JSONResponse:
        status = service_status(exc)
        headers = {"Retry-After": "5" if status == 503 else "1"} if status in (429, 503) else None
        return error_response(status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = _validation_message(exc)
        kind = request.headers.get("content-type", "")
        whole_body = any(tuple(e.get("loc", ())) == ("body",) for e in exc.errors())
        if whole_body and "json" not in kind and request.method in ("POST", "PUT", "PATCH"):
            # curl -d sends application/x-www-form-urlencoded: the JSON was never read.
            message += (
                f"; the body was sent as {kind.split(';')[0] or 'no content type'}: "
                "send JSON with Content-Type: application/json (curl: -H 'Content-Type: "
                "application/json')"
            )
        return error_response(422, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route matching the path only.
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
        return error_response(exc.status_code, code, str(exc.detail), headers or None)

    for exc_type, status, code in _DOMAIN:
        app.add_exception_handler(exc_type, _domain_handler(status, code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal server error")


def _domain_handler(
    status: int, code: str
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        headers = {"Retry-After": "1"} if status == 429 else None
        return error_response(status, code, str(exc), headers)

    return handler
