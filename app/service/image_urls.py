"""Fetching a query image from a URL (clip-retrieval's ``image_url``), when allowed.

Off unless ``XMODAL_IMAGE_URLS=true``. Then only http(s), no credentials in the URL, no
redirects, at most ``XMODAL_MAX_UPLOAD_BYTES``, within ``IMAGE_URL_TIMEOUT_S``, and never
to a private, loopback, link-local or otherwise non-public address unless it lies in
``XMODAL_IMAGE_URL_NETWORKS``. The timeout bounds the whole fetch (connecting, headers
that trickle in a byte at a time, the body), and at most ``IMAGE_URL_FETCHES`` run
at once (429 beyond), so slow hosts cannot fill the request threads. The address is
checked where the connection is made (a network backend that resolves the name, checks
every address, and connects to the one it checked), so a name that resolves to a public
address when checked and to a private one when used (DNS rebinding) gets nowhere.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpcore

from app.service.errors import Busy, Invalid, TooLarge

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IMAGE_URL_TIMEOUT_S = 10.0  # a query image that takes longer is not worth the wait
IMAGE_URL_FETCHES = 4  # fetches at once (429 beyond): slow hosts hold no more threads


class RefusedAddress(httpcore.ConnectError):
    pass


class _Deadline(httpcore.NetworkStream):
    """A stream whose every read and write waits at most until one deadline: httpcore's
    timeouts are per read, so a host sending its headers a byte at a time held a fetch for
    as long as it liked."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self.stream = stream
        self.deadline = deadline

    def _left(self, timeout: float | None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the fetch's deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, self._left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, self._left(timeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls = self.stream.start_tls(ssl_context, server_hostname, self._left(timeout))
        return _Deadline(tls, self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.stream.get_extra_info(info)


class PublicOnly(httpcore.SyncBackend):
    """Connects only to public addresses, or to those in ``allowed``, and (given a
    ``deadline``) gives streams that end there."""

    def __init__(self, allowed: Sequence[Network], deadline: float | None = None) -> None:
        self.allowed = allowed
        self.deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        for address in addresses:
            if not (is_public(address) or any(address in net for net in self.allowed)):
                raise RefusedAddress(f"{host!r} resolves to {address}, which is not public")
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            timeout = left if timeout is None else min(timeout, left)
            if timeout <= 0:
                raise httpcore.ConnectTimeout("the fetch's deadline passed")
        stream = super().connect_tcp(
            str(addresses[0]), port, timeout, local_address, socket_options
        )
        return stream if self.deadline is None else _Deadline(stream, self.deadline)


# IPv6 forms that carry an IPv4 address in their last 32 bits (NAT64: the well-known
# prefix and the local-use one), and deprecated ranges nothing public lives in.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_DEPRECATED = (
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible addresses
    ipaddress.IPv6Network("fec0::/10"),  # site-local
)


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A globally reachable unicast address, and for an IPv6 address that carries an IPv4
    one (mapped, NAT64, 6to4, Teredo), that IPv4 address too: ``64:ff9b::a9fe:a9fe`` is the
    cloud metadata address, reached through a NAT64 gateway."""
    if address.is_multicast or not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv4Address):
        return True
    if any(address in net for net in _DEPRECATED):
        return False
    embedded: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        embedded.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    if address.teredo is not None:
        embedded += list(address.teredo)
    if any(address in net for net in _NAT64):
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return all(is_public(v4) for v4 in embedded)


def check_url(url: str) -> None:
    if len(url) > 2048:
        raise Invalid("image_url is longer than 2048 characters", code="invalid_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("image_url must be an http or https URL", code="invalid_url")
    if parts.username or parts.password:
        raise Invalid("image_url may not carry credentials", code="invalid_url")


def fetch_image(
    url: str, limit: int, allowed: Sequence[Network] = (), timeout_s: float = IMAGE_URL_TIMEOUT_S
) -> bytes:
    """The bytes at ``url``; 400 (``image_url_refused``) for what may not or cannot be
    fetched, 413 over ``limit``. Blocking: call it off the event loop."""
    check_url(url)
    deadline = time.monotonic() + timeout_s
    timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    headers = [(b"User-Agent", b"xmodal"), (b"Accept", b"image/*")]
    try:
        with (
            httpcore.ConnectionPool(
                network_backend=PublicOnly(allowed, deadline), retries=0
            ) as pool,
            pool.stream("GET", url, headers=headers, extensions={"timeout": timeouts}) as r,
        ):
            if r.status != 200:
                raise refused(f"{url} answered {r.status} (redirects are not followed)")
            chunks, size = [], 0
            for chunk in r.iter_stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the image at image_url is over {limit} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except RefusedAddress as exc:
        raise refused(str(exc)) from exc
    except httpcore.TimeoutException as exc:
        raise refused(f"{url} took longer than {timeout_s:g} s") from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise refused(f"cannot fetch {url}: {exc or type(exc).__name__}") from exc


def refused(message: str) -> Invalid:
    return Invalid(message, code="image_url_refused")


class ImageFetcher:
    """``fetch_image`` with the server's settings, at most ``concurrent`` at once."""

    def __init__(
        self, limit: int, allowed: Sequence[Network], timeout_s: float, concurrent: int
    ) -> None:
        self.limit = limit
        self.allowed = allowed
        self.timeout_s = timeout_s
        self.concurrent = concurrent
        self._slots = threading.BoundedSemaphore(concurrent)

    def fetch(self, url: str) -> bytes:
        check_url(url)
        if not self._slots.acquire(blocking=False):
            raise Busy(f"{self.concurrent} image_url fetches are in progress; retry shortly")
        try:
            return fetch_image(url, self.limit, self.allowed, self.timeout_s)
        finally:
            self._slots.release()
