"""JSON request bodies (and JSON form fields) parsed strictly.

Python's ``json`` takes NaN, Infinity, ``1e999`` (infinite), integers of any length, lone
surrogate escapes and nesting deep enough to raise ``RecursionError``. None of these can be
stored or searched on, so each is refused here with a 422 that says which, before a route
sees the body. Every router uses ``StrictJSONRoute``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

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


class StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = loads(await self.body())
            except InvalidValue as exc:
                raise HTTPException(422, f"body: {exc}") from None
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictRequest(request.scope, request.receive))

        return strict
