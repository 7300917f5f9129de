"""Requests from other sites, with the headers a browser sends: a form's POST from another
page (upload, restore, delete) refused without a key, clip-front's reads answered from
any origin, and ``Host`` names the server does not answer for (DNS rebinding) refused."""

from __future__ import annotations

import http.client

import httpx
import pytest

from app.api.sites import SiteGuard, split_host
from tests.helpers import AppServer, image_bytes

# What Chromium sends with a form submitted from a page of another site.
CROSS_SITE = {
    "Origin": "http://attacker.example",
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
}


def count(client: httpx.Client, name: str) -> int:
    return int(sum(client.get(f"/v1/collections/{name}").json()["counts"].values()))


@pytest.mark.parametrize(
    "headers",
    [
        CROSS_SITE,
        {"Origin": "http://attacker.example"},  # a browser without Sec-Fetch-*
        {"Origin": "null"},  # a sandboxed frame, a file:// page
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:3000"},  # another port
    ],
)
def test_writes_from_another_site_without_a_key_are_refused(
    client: httpx.Client, collection: str, headers: dict[str, str]
) -> None:
    files = [("files", ("p.png", image_bytes((1, 2, 3)), "image/png"))]
    r = client.post(f"/v1/collections/{collection}/images", files=files, headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request", r.text
    r = client.post(
        f"/v1/collections/{collection}-x/snapshots/restore",
        files={"file": ("a.tar", b"x" * 600, "application/x-tar")},
        headers=headers,
    )
    assert r.status_code == 403
    assert client.delete(f"/v1/collections/{collection}", headers=headers).status_code == 403
    assert count(client, collection) == 0


def test_the_same_origin_and_clients_that_are_not_browsers_write(
    client: httpx.Client, collection: str, server: AppServer
) -> None:
    same = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    files = [("files", ("p.png", image_bytes((1, 2, 3)), "image/png"))]
    r = client.post(f"/v1/collections/{collection}/images", files=files, headers=same)
    assert r.status_code == 200, r.text
    typed = {"Sec-Fetch-Site": "none"}  # the user typed the address
    texts = {"items": [{"id": "t", "text": "a text"}]}
    assert client.post(f"/v1/collections/{collection}/texts", json=texts, headers=typed).is_success
    assert count(client, collection) == 2


def test_clip_fronts_reads_answer_any_origin(client: httpx.Client, collection: str) -> None:
    body = {"text": "a red square", "indice_name": collection, "num_images": 2}
    r = client.post("/knn-service", json=body, headers=CROSS_SITE)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "*"


def raw(server: AppServer, host: str, path: str = "/v1/collections") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_hosts_the_server_does_not_answer_for_are_refused(server: AppServer) -> None:
    port = server.port
    for host in (f"attacker.example:{port}", "rebind.attacker.example", f"10.0.0.1:{port}"):
        status, body = raw(server, host)
        assert status == 400 and b"host_not_allowed" in body, host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert raw(server, host)[0] == 200, host


def test_a_server_bound_to_every_address_answers_ip_addresses_and_named_hosts() -> None:
    guard = SiteGuard(None, bound="0.0.0.0", allowed_hosts=["search.example.org"])  # type: ignore[arg-type]
    assert guard.host_allowed("192.0.2.7:8000") and guard.host_allowed("[2001:db8::1]:80")
    assert guard.host_allowed("search.example.org") and guard.host_allowed("localhost")
    assert not guard.host_allowed("rebind.attacker.example")
    loopback = SiteGuard(None, bound="127.0.0.1")  # type: ignore[arg-type]
    assert not loopback.host_allowed("192.0.2.7") and loopback.host_allowed("127.0.0.1:1")
    assert SiteGuard(None, bound="127.0.0.1", allowed_hosts=["*"]).host_allowed("a.b")  # type: ignore[arg-type]
    assert split_host("[::1]:8000") == ("::1", "8000") and split_host("A.b:1") == ("a.b", "1")


def test_an_origin_named_in_cors_origins_may_write(tmp_path: object) -> None:
    guard = SiteGuard(None, bound="127.0.0.1", cors_origins=["https://ui.example"])  # type: ignore[arg-type]
    scope = {"method": "POST", "path": "/v1/collections"}
    opened = {b"origin": "https://ui.example", b"sec-fetch-site": "cross-site"}
    assert guard.cross_site(scope, opened) is None
    other = {b"origin": "https://other.example", b"sec-fetch-site": "cross-site"}
    assert guard.cross_site(scope, other) is not None
    keyed = {**other, b"authorization": "Bearer k"}
    assert guard.cross_site(scope, keyed) is None
