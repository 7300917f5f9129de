"""Pure ASGI middleware: request ids, the access log and per-route request metrics; the
concurrency limit; the body size limit."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import logs
from app.errors import ApiError
from app.metrics import Metrics

access_log = logging.getLogger("xmodal.access")

# Probes and scrapes: never refused for load, logged at debug only.
OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestContext:
    """Takes the request id from ``X-Request-ID`` (when it is short and plain) or makes one,
    returns it, puts it on every log record of the request, and, once answered, writes one
    access-log record (method, path with no query string, body or headers, status and
    duration) and counts and times the request by its route template (never the raw path,
    which would explode label cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.match(candidate):
                    rid = candidate
                break
        rid = rid or uuid.uuid4().hex
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        finally:
            seconds = time.perf_counter() - started
            route: Any = scope.get("route")  # set by the router on this same scope
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(scope["method"], template, status, seconds)
            path = scope.get("path", "")
            level = logging.DEBUG if path in OPERATIONAL_PATHS and status < 400 else logging.INFO
            access_log.log(
                level,
                "%s %s %d",
                scope["method"],
                path,
                status,
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 3),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )
            logs.request_id.reset(token)


class TooManyRequests(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            429,
            "too_many_concurrent_requests",
            f"the server is already serving {limit} requests; retry shortly",
        )


class ConcurrencyLimit:
    """At most ``limit`` requests inside at once; the next one gets 429 straight away
    rather than queueing behind them. Probes and scrapes are not counted."""

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.active = 0  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPERATIONAL_PATHS:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            self.metrics.refused.inc()
            await _send_error(send, TooManyRequests(self.limit), {b"retry-after": b"1"})
            return
        self.active += 1
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.metrics.in_flight.dec()


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"request body exceeds the limit of {limit} bytes")


class BodySizeLimit:
    """413 before reading when Content-Length says too much; otherwise counts the bytes
    as they stream in and stops at the limit (chunked uploads included)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await _send_error(send, BodyTooLarge(self.max_bytes))
                    return
        seen = 0
        exceeded = False
        responded = False

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def guarded(message: Message) -> None:
            # Body parsers may catch our exception and answer 400 themselves: once the
            # limit is hit, whatever the app answers is replaced by the 413.
            nonlocal responded
            if message["type"] == "http.response.start":
                if responded:
                    return
                responded = True
                if exceeded:
                    await _send_error(send, BodyTooLarge(self.max_bytes))
                    return
            elif exceeded:
                return
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except BodyTooLarge:
            if not responded:
                responded = True
                await _send_error(send, BodyTooLarge(self.max_bytes))


async def _send_error(send: Send, err: ApiError, extra: dict[bytes, bytes] | None = None) -> None:
    body = json.dumps({"error": {"code": err.code, "message": err.message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if isinstance(err, BodyTooLarge):
        headers.append((b"connection", b"close"))  # the rest of the body is never read
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": headers + list((extra or {}).items()),
        }
    )
    await send({"type": "http.response.body", "body": body})
