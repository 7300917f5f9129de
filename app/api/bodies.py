"""JSON request bodies (and JSON form fields) parsed strictly.

Python's ``json`` takes NaN, Infinity, ``1e999`` (infinite), integers of any length, lone
surrogate escapes and nesting deep enough to raise ``RecursionError``. None of these can be
stored or searched on, so each is refused here with a 422 that says which, before a route
sees the body. Every router uses ``StrictJSONRoute``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.types import Message, Receive

from index.values import InvalidValue, check_json


def _constant(name: str) -> Any:
    raise InvalidValue(f"{name} is not allowed: numbers must be finite")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidValue(f"{text[:20]} is out of range: numbers must be finite")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 19:  # beyond 64 bits, and int() of 10^5 digits is slow
        raise InvalidValue(f"{text[:20]}... is out of range: integers must fit in 64 bits")
    return int(text)


def loads(data: str | bytes, what: str = "body") -> Any:
    """Parse JSON that the store can keep: ``json.JSONDecodeError`` for malformed text,
    ``InvalidValue`` for values that parse but cannot be used."""
    try:
        value = json.loads(data, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise InvalidValue(f"{what} is nested too deeply") from None
    except UnicodeDecodeError:
        raise InvalidValue(f"{what} is not UTF-8 text") from None
    check_json(value, what)
    return value


# A JSON string, its escapes included (the unrolled form: fast on long strings).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_IN_THREAD_BYTES = 256 * 1024  # larger bodies are scanned and parsed off the event loop
# Most values (counted by their separators) in one JSON body, refused with 413 before it is
# parsed: parsing costs far more memory than the bytes.
MAX_JSON_VALUES = 100_000


_SCAN_BYTES = 1 << 16  # counted a window at a time: constant extra memory


def json_values(body: bytes, limit: int) -> int:
    """How many separators (commas and colons) a JSON text has outside its strings, which
    bounds how many values it holds; exact only when a cheap overestimate is over
    ``limit``. Extra memory stays about one window whatever the body holds (removing the
    strings of a whole body at once built one object per string: 40 times the body)."""
    fast = body.count(b",") + body.count(b":")
    if fast <= limit:
        return fast
    count, pos, size = 0, 0, len(body)
    while pos < size:  # ``pos`` is always outside a string
        end = min(pos + _SCAN_BYTES, size)
        bare = _STRING.sub(b"", body[pos:end])
        quote = bare.find(b'"')
        if quote < 0:
            count += bare.count(b",") + bare.count(b":")
            pos = end
            continue
        # A string that the window cuts: nothing after its opening quote was removed, so
        # the tail of ``bare`` from that quote is the tail of the window.
        count += bare.count(b",", 0, quote) + bare.count(b":", 0, quote)
        whole = _STRING.match(body, end - (len(bare) - quote))
        if whole is None:
            break  # unterminated: the rest is one string (the parser refuses it)
        pos = whole.end()
    return count


def _parse(body: bytes, max_values: int) -> Any:
    n = json_values(body, max_values)
    if n > max_values:
        # Parsing first would cost far more memory than the body: millions of tiny
        # strings take ~60 bytes each as Python objects.
        raise HTTPException(413, f"the body holds about {n} JSON values; the limit is {max_values}")
    try:
        return loads(body)
    except InvalidValue as exc:
        raise HTTPException(422, str(exc)) from None


class StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) > _IN_THREAD_BYTES:
                self._json = await run_in_threadpool(_parse, body, MAX_JSON_VALUES)
            else:
                self._json = _parse(body, MAX_JSON_VALUES)
        return self._json


class StrictJSONRoute(APIRoute):
    """Bodies parsed by ``StrictRequest``; a route class with ``max_body_bytes`` set also
    refuses a larger body with 413, from its declared length before it is read and else as
    it streams (the server's own limit, far larger, is for the routes that take media)."""

    max_body_bytes: int | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        limit = self.max_body_bytes

        async def strict(request: Request) -> Response:
            receive = request.receive
            if limit is not None:
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise _route_too_large(limit)
                receive = _bounded(receive, limit)
            return await handler(StrictRequest(request.scope, receive))

        return strict


def _route_too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"this route takes bodies of at most {limit} bytes")


def _bounded(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _route_too_large(limit)
        return message

    return counted


# Routes that take settings, names and ids, never media or texts in bulk: 64 KiB is far
# beyond any of their bodies.
CONTROL_BODY_BYTES = 64 * 1024


class ControlJSONRoute(StrictJSONRoute):
    max_body_bytes = CONTROL_BODY_BYTES


class AnyJSONRoute(StrictJSONRoute):
    """A JSON body whatever its content type says: clip-retrieval's clients send none
    (``requests`` with a string body) or ``text/plain`` (the browser's ``fetch``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def any_type(request: Request) -> Response:
            headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            return await handler(Request({**request.scope, "headers": headers}, request.receive))

        return any_type
