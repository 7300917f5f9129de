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


def json_values(body: bytes, limit: int) -> int:
    """How many separators (commas and colons) a JSON text has outside its strings, which
    bounds how many values it holds; exact only when a cheap overestimate is over
    ``limit``."""
    fast = body.count(b",") + body.count(b":")
    if fast <= limit:
        return fast
    bare = _STRING.sub(b"", body)
    return bare.count(b",") + bare.count(b":")


def _parse(body: bytes, max_values: int) -> Any:
    n = json_values(body, max_values)
    if n > max_values:
        # Parsing first would cost far more memory than the body: millions of tiny
        # strings take ~60 bytes each as Python objects.
        raise HTTPException(413, f"the body holds about {n} JSON values; the limit is {max_values}")
    try:
        return loads(body)
    except InvalidValue as exc:
        raise HTTPException(422, f"body: {exc}") from None


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
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictRequest(request.scope, request.receive))

        return strict


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
