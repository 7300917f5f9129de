"""API keys on the routes: ``Authorization: Bearer <key>``.

Every ``/v1`` router declares ``ReadAccess``; routes that change a collection add
``WriteAccess``, those that change the service (collections themselves, models, fine-
tuning) ``AdminAccess``. With no keys configured all three let everything through (the
loopback default). A key that opens only some collections (``app.service.access``) is
refused with 403 on a route of another collection, named by the path's ``{name}``, reads
included whatever ``XMODAL_AUTH_READS`` says; routes that name a collection elsewhere (a
job's, clip back's ``indice_name``) and listings ask ``grant_of`` themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.errors import ApiError
from app.service.access import ADMIN, LEVEL_NAMES, READ, WRITE, Grant, KeyRing
from app.service.config import Settings

_bearer = HTTPBearer(
    auto_error=False,
    description="A key of `XMODAL_API_KEYS`, or of the file `XMODAL_API_KEYS_FILE` names.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class Unauthorized(ApiError):
    headers = {"WWW-Authenticate": 'Bearer realm="xmodal"'}

    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message)


class Forbidden(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(403, "forbidden", message)


def grant_of(request: Request) -> Grant | None:
    """The presented key's grant (None: no key asked for or given; everything is open)."""
    grant: Grant | None = getattr(request.state, "grant", None)
    return grant


def check_collection(request: Request, collection: str | None, level: int = READ) -> None:
    """403 unless the request's key may act at ``level`` on ``collection``."""
    grant = grant_of(request)
    if grant is None:
        return
    if grant.level < level:
        raise Forbidden(f"this key may {grant.name}; this needs {LEVEL_NAMES[level]}")
    if not grant.covers(collection):
        what = f"the collection {collection!r}" if collection else "what belongs to no collection"
        raise Forbidden(f"this key does not open {what}")


class Requirement:
    """A dependency that asks for a key at ``level`` when keys are configured and
    ``needed(settings)`` says so (``None``: whenever keys are configured). A key presented
    on an open route is still held to its collections. The API description asks the same
    (``app.api.openapi``)."""

    def __init__(self, level: int, needed: Callable[[Settings], bool] | None = None) -> None:
        self.level = level
        self.needed = needed

    def asks_key(self, settings: Settings) -> bool:
        return self.needed is None or self.needed(settings)

    async def __call__(self, request: Request, credentials: Credentials) -> None:
        ring: KeyRing = request.app.state.keys
        if not ring.enabled:
            return
        settings = request.app.state.services.settings
        needed = self.asks_key(settings)
        presented = credentials.credentials if credentials else None
        if presented is None:
            if needed:
                raise Unauthorized(
                    "this route needs an API key: send 'Authorization: Bearer <key>'"
                )
            return
        grant = ring.resolve(presented)
        if grant is None:
            if needed:
                raise Unauthorized("the API key is not valid")
            return  # an open route: as if no key had been sent
        request.state.grant = grant
        name = request.path_params.get("name")
        if name is not None or grant.level < self.level:
            check_collection(request, name, self.level)


class MetricsRequirement(Requirement):
    """``/metrics`` counts every collection's items: where a keys file scopes keys to
    collections, only an administrator's key reads it (a key of one collection would
    learn of the others); with ``XMODAL_API_KEYS`` alone, ``XMODAL_AUTH_READS`` decides."""

    scoped_level = ADMIN  # what it needs where a keys file is in force

    def __init__(self) -> None:
        super().__init__(READ, lambda s: s.auth_reads)

    async def __call__(self, request: Request, credentials: Credentials) -> None:
        ring: KeyRing = request.app.state.keys
        if ring.file is None:
            await super().__call__(request, credentials)
            return
        grant = ring.resolve(credentials.credentials) if credentials else None
        if grant is None:
            raise Unauthorized("/metrics needs an administrator's key here")
        if grant.level < self.scoped_level:
            raise Forbidden("/metrics shows every collection: it needs an administrator's key")


ReadAccess = Depends(Requirement(READ, lambda s: s.auth_reads))
WriteAccess = Depends(Requirement(WRITE))
AdminAccess = Depends(Requirement(ADMIN))
MetricsAccess = Depends(MetricsRequirement())
