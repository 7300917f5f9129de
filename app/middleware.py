"""Pure ASGI middleware: request body size limit and per-route request metrics."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError
from app.metrics import Metrics


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


async def _send_error(send: Send, err: ApiError) -> None:
    body = json.dumps({"error": {"code": err.code, "message": err.message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Counts and times every request by its route template (never the raw path, which
    would explode label cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(
                scope["method"], template, status, time.perf_counter() - started
            )
