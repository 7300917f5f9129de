"""The service's own errors, beside ``index.StoreError`` and ``models.ModelError``.

Each class is one kind of failure, not a status: the HTTP floor (``app.api.errors``) maps
every kind to one status in one table, and the CLI prints the message. ``code`` is the
machine-readable name a client sees; a raise may name a more precise one."""

from __future__ import annotations


class ServiceError(Exception):
    code = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def prefixed(self, prefix: str) -> ServiceError:
        """The same error, its message prefixed (which query of a batch, which field)."""
        return type(self)(f"{prefix}{self.message}", self.code)


class Invalid(ServiceError):
    """The request asks for something the service will not do (400)."""

    code = "bad_request"


class Unprocessable(ServiceError):
    """The request is well formed but a value in it is not (422)."""

    code = "invalid_request"


class TooLarge(ServiceError):
    """Over a size or count limit (413)."""

    code = "too_large"


class Conflict(ServiceError):
    """The request conflicts with the state it meets (409)."""

    code = "conflict"


class InsufficientStorage(ServiceError):
    """The disk cannot hold what the request would write (507)."""

    code = "insufficient_storage"


class Busy(ServiceError):
    """A bounded queue is full; retry later (429)."""

    code = "too_many_requests"


class NotReady(ServiceError):
    """The service is still starting, or stopping (503)."""

    code = "not_ready"


class Failed(ServiceError):
    """A job's own reason to fail, reported as its message (only ever seen on a job)."""

    code = "failed"
