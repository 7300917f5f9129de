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

from app.api.errors import ApiError

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


class Requirement:
    """A dependency that asks for a key when keys are configured and, for ``access_flag``,
    when that setting is also on (``None``: whenever keys are configured). The API
    description reads the same flag (``app.api.openapi``)."""

    def __init__(self, access_flag: str | None) -> None:
        self.access_flag = access_flag

    async def __call__(self, request: Request, credentials: Credentials) -> None:
        ring: KeyRing = request.app.state.keys
        settings = request.app.state.services.settings
        if ring.enabled and (self.access_flag is None or getattr(settings, self.access_flag)):
            ring.check(credentials.credentials if credentials else None)


ReadAccess = Depends(Requirement("auth_reads"))
WriteAccess = Depends(Requirement(None))
MetricsAccess = Depends(Requirement("auth_metrics"))
