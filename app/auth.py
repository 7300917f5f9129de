"""API keys: ``Authorization: Bearer <key>`` on the routes that need one.

Every ``/v1`` router declares ``ReadAccess``; routes that change state add ``WriteAccess``.
With no keys configured both let everything through (the loopback default). Keys are
compared as SHA-256 digests with ``hmac.compare_digest`` against every configured key, so
the time taken says nothing about how much of a key matched or which key it was.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import ApiError

_bearer = HTTPBearer(auto_error=False, description="One of the keys in `XMODAL_API_KEYS`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class Unauthorized(ApiError):
    headers = {"WWW-Authenticate": 'Bearer realm="xmodal"'}

    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message)


class KeyRing:
    """The configured keys, kept only as digests."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str | None) -> None:
        if presented is None:
            raise Unauthorized("this route needs an API key: send 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(presented.encode()).digest()
        matched = False
        for known in self._digests:  # no early exit: every key is compared every time
            matched |= hmac.compare_digest(digest, known)
        if not matched:
            raise Unauthorized("the API key is not valid")


def _ring(request: Request) -> KeyRing:
    ring: KeyRing = request.app.state.keys
    return ring


async def require_read(request: Request, credentials: Credentials) -> None:
    ring = _ring(request)
    if ring.enabled and request.app.state.services.settings.auth_reads:
        ring.check(credentials.credentials if credentials else None)


async def require_write(request: Request, credentials: Credentials) -> None:
    ring = _ring(request)
    if ring.enabled:
        ring.check(credentials.credentials if credentials else None)


async def require_metrics(request: Request, credentials: Credentials) -> None:
    ring = _ring(request)
    if ring.enabled and request.app.state.services.settings.auth_metrics:
        ring.check(credentials.credentials if credentials else None)


ReadAccess = Depends(require_read)
WriteAccess = Depends(require_write)
MetricsAccess = Depends(require_metrics)
