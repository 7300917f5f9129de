"""Which sites may talk to the server: the ``Host`` it answers for, and writes from pages.

- **Host.** A request whose ``Host`` is not a name the server answers for is refused (400
  ``host_not_allowed``): a web page that rebinds its own DNS name to 127.0.0.1 reaches the
  loopback server under that name, never under ``localhost``. Answered by default: the
  loopback names (``localhost``, ``127.0.0.1``, ``::1``), the bound address, and, when
  bound to every address (``0.0.0.0``, ``::``), any IP address and the machine's host name
  (rebinding needs a name). ``XMODAL_ALLOWED_HOSTS`` adds names (``*``: any).
- **Cross-site writes.** A browser sends a form's POST from any page without a preflight.
  A request that changes state (any method but GET, HEAD and OPTIONS), carries no
  ``Authorization`` header (a page of another site cannot add one without CORS letting
  it), and that a browser marks as coming from another site (``Sec-Fetch-Site:
  cross-site`` or ``same-site``) or from another origin (``Origin`` not this server's, or
  ``null``), is refused (403 ``cross_site_request``), unless its origin is one of
  ``XMODAL_CORS_ORIGINS``. clip back's read routes (``/knn-service``, ``/metadata``: reads
  sent as POST) keep answering clip-front from any origin while reads need no key.
  Clients that are not browsers send neither header and are not concerned.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.open_cors import CLIP_BACK_PATHS

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def split_host(value: str) -> tuple[str, str]:
    """``host[:port]`` (with ``[v6]``) as the lower-cased name and the port (or '')."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest.removeprefix(":")
    if value.count(":") == 1:
        name, _, port = value.partition(":")
        return name, port
    return value, ""


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class SiteGuard:
    def __init__(
        self,
        app: ASGIApp,
        bound: str,
        allowed_hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
        open_reads: bool = True,
    ) -> None:
        self.app = app
        extra = [h.strip().lower() for h in allowed_hosts if h.strip()]
        self.any_host = "*" in extra
        self.any_ip = bound in WILDCARD_ADDRESSES
        names = {*LOOPBACK_NAMES, split_host(bound)[0], *extra}
        if self.any_ip:
            names.add(socket.gethostname().lower())
        self.hosts = frozenset(split_host(h)[0] for h in names)
        origins = [o.rstrip("/").lower() for o in cors_origins]
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        self.open_paths = CLIP_BACK_PATHS if open_reads else frozenset()

    def host_allowed(self, host: str | None) -> bool:
        if host is None or self.any_host:
            return True  # HTTP/1.0 without Host: no name to rebind
        name = split_host(host)[0]
        return name in self.hosts or (self.any_ip and _is_ip(name))

    def cross_site(self, scope: Scope, headers: dict[bytes, str]) -> str | None:
        """Why a browser's request from another site is refused (None: it is not one)."""
        if scope["method"] in SAFE_METHODS or b"authorization" in headers:
            return None
        if scope["path"] in self.open_paths:
            return None
        origin = headers.get(b"origin")
        if origin is not None and (self.any_origin or origin.rstrip("/").lower() in self.origins):
            return None
        site = headers.get(b"sec-fetch-site", "").lower()
        if site in ("cross-site", "same-site"):
            return f"a browser sent it from another site (Sec-Fetch-Site: {site})"
        if origin is None:
            return None
        if origin == "null":
            return "a browser sent it from an opaque origin (Origin: null)"
        scheme, _, rest = origin.partition("://")
        if rest.lower() != headers.get(b"host", "").lower():
            return f"a browser sent it from another origin ({origin[:100]})"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, str] = {}
        for name, value in scope.get("headers", []):
            if name in (b"host", b"origin", b"sec-fetch-site", b"authorization"):
                headers.setdefault(name, value.decode("latin-1"))
        host = headers.get(b"host")
        if not self.host_allowed(host):
            shown = (host or "")[:100]
            await _refuse(
                send,
                400,
                "host_not_allowed",
                f"this server does not answer for the host {shown!r}; name it in "
                "XMODAL_ALLOWED_HOSTS (DNS rebinding protection)",
            )
            return
        why = self.cross_site(scope, headers)
        if why is not None:
            await _refuse(
                send,
                403,
                "cross_site_request",
                f"a request that changes state, without a key: refused because {why}. "
                "Send an API key, or name the page's origin in XMODAL_CORS_ORIGINS",
            )
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
