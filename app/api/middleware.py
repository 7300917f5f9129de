"""Pure ASGI middleware: request ids, the access log and per-route request metrics; the
admission of requests (body size and deadline, work slots, each client's share)."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import ApiError
from app.service import logs
from app.service.metrics import Metrics

access_log = logging.getLogger("xmodal.access")

# Probes and scrapes: never refused for load, logged at debug only.
OPERATIONAL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
# Pages that run their own scripts: the web page, its files, the API's documentation.
PAGE_PATHS = ("/", "/docs", "/redoc")
PAGE_PREFIXES = ("/ui/", "/docs-assets/")
# On every other answer: no content sniffing, and if a browser renders one anyway (an image
# opened in a tab, an error page), a document that runs and loads nothing.
NOSNIFF = (b"x-content-type-options", b"nosniff")
NOTHING_RUNS = (
    b"content-security-policy",
    b"default-src 'none'; frame-ancestors 'none'; sandbox",
)


def is_page(path: str) -> bool:
    return path in PAGE_PATHS or path.startswith(PAGE_PREFIXES)


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
        rid = rid or os.urandom(16).hex()  # as uuid4().hex, without building a UUID
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status = 500
        added = [(b"x-request-id", rid.encode()), NOSNIFF]
        if not is_page(scope.get("path", "")):
            added.append(NOTHING_RUNS)

        async def with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), *added]
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


class TooManyFromClient(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            429,
            "too_many_requests_from_client",
            f"this address already has {limit} requests in progress; retry shortly",
        )


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"request body exceeds the limit of {limit} bytes")


class BodyTimeout(ApiError):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            408, "request_timeout", f"the request body did not arrive within {seconds:g} s"
        )


@dataclass(frozen=True)
class AdmissionLimits:
    max_body_bytes: int
    body_timeout_s: float
    max_concurrent: int  # requests doing work at once (their bodies received)
    per_client: int  # requests in progress from one address, bodies still arriving included


class Admission:
    """Which requests get in, and when.

    - The body: at most ``max_body_bytes`` (413 before reading when Content-Length says
      more, otherwise counted as it streams, chunked uploads included), and all of it
      within ``body_timeout_s`` of the request's start (408).
    - Work slots: at most ``max_concurrent`` requests at once; the next one gets 429 at
      once rather than queueing. A request takes its slot when its body has arrived, so a
      client sending a body a byte at a time holds no slot while it does.
    - Fairness: one client address has at most ``per_client`` requests in progress
      (bodies still arriving included; 0: no such limit).

    Probes and scrapes (``OPERATIONAL_PATHS``) skip the slots and the per-client count.
    A refusal raised while the app reads the body replaces whatever the app answers (body
    parsers catch exceptions and answer 400 themselves)."""

    def __init__(self, app: ASGIApp, limits: AdmissionLimits, metrics: Metrics) -> None:
        self.app = app
        self.limits = limits
        self.metrics = metrics
        self.active = 0  # one event loop: no lock needed
        self.by_client: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        operational = scope.get("path") in OPERATIONAL_PATHS
        declared, has_body = _body_headers(scope)
        if declared is not None and declared > limits.max_body_bytes:
            await _send_error(send, BodyTooLarge(limits.max_body_bytes))
            return
        client = "" if operational else (scope.get("client") or ("", 0))[0]
        if not operational and limits.per_client and self.by_client[client] >= limits.per_client:
            self.metrics.refused.inc()
            await _send_error(send, TooManyFromClient(limits.per_client), {b"retry-after": b"1"})
            return
        state = _Admitted()
        if not operational:
            self.by_client[client] += 1
        try:
            if not operational and not has_body and not self._take_slot(state):
                await _send_error(
                    send, TooManyRequests(limits.max_concurrent), {b"retry-after": b"1"}
                )
                return
            await self._serve(scope, receive, send, state, needs_slot=not operational)
        finally:
            if state.slot:
                self.active -= 1
                self.metrics.in_flight.dec()
            if not operational:
                self.by_client[client] -= 1
                if not self.by_client[client]:
                    del self.by_client[client]

    def _take_slot(self, state: _Admitted) -> bool:
        if state.slot:
            return True
        if self.active >= self.limits.max_concurrent:
            self.metrics.refused.inc()
            return False
        self.active += 1
        self.metrics.in_flight.inc()
        state.slot = True
        return True

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, state: _Admitted, needs_slot: bool
    ) -> None:
        limits = self.limits
        deadline = time.monotonic() + limits.body_timeout_s
        seen = 0
        body_done = False

        def refuse(err: ApiError) -> ApiError:
            state.refusal = err
            return err

        async def admitted() -> Message:
            nonlocal seen, body_done
            if body_done:
                return await receive()  # e.g. waiting for a disconnect: no deadline
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                raise refuse(BodyTimeout(limits.body_timeout_s)) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limits.max_body_bytes:
                    raise refuse(BodyTooLarge(limits.max_body_bytes))
                if not message.get("more_body", False):
                    body_done = True
                    if needs_slot and not self._take_slot(state):
                        raise refuse(TooManyRequests(limits.max_concurrent))
            return message

        async def guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                if state.responded:
                    return
                state.responded = True
                if state.refusal is not None:
                    await _send_error(send, state.refusal, _retry(state.refusal))
                    return
            elif state.refusal is not None:
                return
            await send(message)

        try:
            await self.app(scope, admitted, guarded)
        except (BodyTooLarge, BodyTimeout, TooManyRequests) as exc:
            if exc is not state.refusal:
                raise
            if not state.responded:
                state.responded = True
                await _send_error(send, exc, _retry(exc))


@dataclass
class _Admitted:
    slot: bool = False
    responded: bool = False
    refusal: ApiError | None = None


def _retry(err: ApiError) -> dict[bytes, bytes]:
    return {b"retry-after": b"1"} if err.status == 429 else {}


def _body_headers(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length (None: not given or unreadable) and whether a body
    follows at all."""
    declared = None
    chunked = False
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None
        elif name == b"transfer-encoding":
            chunked = True
    return declared, chunked or bool(declared)


async def _send_error(send: Send, err: ApiError, extra: dict[bytes, bytes] | None = None) -> None:
    body = json.dumps({"error": {"code": err.code, "message": err.message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if isinstance(err, (BodyTooLarge, BodyTimeout)):
        headers.append((b"connection", b"close"))  # the rest of the body is never read
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": headers + list((extra or {}).items()),
        }
    )
    await send({"type": "http.response.body", "body": body})
