"""Snapshot routes as an attacker tries them: uploads removed whatever the outcome, names
that are not collections (``.uploads``, ``..``, dot-names) answered 404, no server path in
any job, snapshots gone with their collection, a restored archive's HTML never served as
a page."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.service.config import Settings
from app.service.jobs.snapshots import Uploads
from index.archive_check import FORMAT
from tests.calls import wait_for_job
from tests.helpers import AppServer, image_bytes

# The same answers with the catalogue on PostgreSQL (issue 37): run against both.
pytestmark = pytest.mark.both_catalogues


def job(client: httpx.Client, r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    return wait_for_job(client, r.json()["id"])


def snapshot_of(client: httpx.Client, name: str) -> bytes:
    texts = [{"id": f"t{i}", "text": f"a note {i}"} for i in range(3)]
    assert client.post(f"/v1/collections/{name}/texts", json={"items": texts}).is_success
    files = [("files", ("p.png", image_bytes((200, 20, 20)), "image/png"))]
    assert client.post(f"/v1/collections/{name}/images", files=files).is_success
    taken = job(client, client.post(f"/v1/collections/{name}/snapshots"))
    assert taken["state"] == "succeeded", taken
    r = client.get(f"/v1/collections/{name}/snapshots/{taken['detail']['snapshot']}")
    assert r.status_code == 200
    return r.content


def restore(client: httpx.Client, name: str, data: bytes) -> dict[str, Any]:
    client.delete(f"/v1/collections/{name}")
    url = f"/v1/collections/{name}/snapshots/restore"
    return job(client, client.post(url, files={"file": ("c.tar", data, "application/x-tar")}))


def test_uploads_are_removed_whatever_the_outcome_and_no_job_shows_a_path(
    client: httpx.Client, collection: str, server: AppServer
) -> None:
    uploads = server.data_dir / "uploads"
    data = snapshot_of(client, collection)
    done = restore(client, f"{collection}-ok"[:60], data)
    assert done["state"] == "succeeded", done
    assert not list(uploads.iterdir())
    damaged = bytearray(data)
    damaged[damaged.find(b"a note 1")] ^= 1
    failed = restore(client, f"{collection}-bad"[:60], bytes(damaged))
    assert failed["state"] == "failed" and "damaged" in failed["message"]
    assert not list(uploads.iterdir())
    assert not list((server.data_dir / "archives").glob(".uploads*"))
    listing = client.get("/v1/jobs", params={"limit": 200}).text
    assert str(server.data_dir) not in listing and str(server.data_dir.resolve()) not in listing
    assert '"upload"' in listing  # the upload's id, not its path


def test_leftover_uploads_are_removed_at_start_unless_a_job_holds_them(tmp_path: Path) -> None:
    uploads = Uploads(Settings(data_dir=tmp_path).data_dir)
    held, path = uploads.new()
    _, stray = uploads.new()
    path.write_bytes(b"x")
    stray.write_bytes(b"y")
    uploads.clear(keep={held})
    assert [p.name for p in uploads.folder.iterdir()] == [path.name]


def raw_get(server: AppServer, path: str) -> int:
    """A GET with the path sent as given (a client would resolve its dot segments)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_snapshot_routes_take_collection_names_only(
    client: httpx.Client, collection: str, server: AppServer
) -> None:
    snapshot_of(client, collection)
    (server.data_dir / "stray.tar").write_bytes(b"a tar in the data dir")
    for name in (".uploads", "..", ".", ".hidden", "archives", "no-such-collection"):
        assert raw_get(server, f"/v1/collections/{name}/snapshots") == 404, name
        assert raw_get(server, f"/v1/collections/{name}/snapshots/stray.tar") == 404, name
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("DELETE", "/v1/collections/../snapshots/stray.tar")
    assert conn.getresponse().status == 404
    conn.close()
    assert (server.data_dir / "stray.tar").exists()


def test_snapshots_go_with_their_collection(client: httpx.Client, collection: str) -> None:
    snapshot_of(client, collection)
    assert client.get(f"/v1/collections/{collection}/snapshots").json()["snapshots"]
    assert client.delete(f"/v1/collections/{collection}").status_code == 204
    assert client.post("/v1/collections", json={"name": collection}).status_code == 201
    assert client.get(f"/v1/collections/{collection}/snapshots").json()["snapshots"] == []


def test_served_bytes_cannot_become_a_page(
    client: httpx.Client, collection: str, server: AppServer
) -> None:
    """A restored archive whose image item says ``text/html`` and holds HTML is refused;
    what ``/image`` serves is an image item's bytes with their real type, nosniff and a
    policy that runs nothing; a text item has no image."""
    data = snapshot_of(client, collection)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    html = b"<html><script>fetch('/v1/collections')</script></html>"
    digest = hashlib.sha256(html).hexdigest()
    lines = [json.loads(x) for x in members["items/000000.jsonl"].decode().splitlines()]
    for r in lines:
        if r["modality"] == "image":
            r["content_sha256"], r["media_type"] = digest, "text/html"
    members["items/000000.jsonl"] = "".join(json.dumps(r) + "\n" for r in lines).encode()
    members[f"images/{digest}"] = html
    listed = {
        n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)}
        for n, b in members.items()
        if n != "MANIFEST.json"
    }
    members["MANIFEST.json"] = json.dumps({"format": FORMAT, "members": listed}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n in [n for n in members if n != "MANIFEST.json"] + ["MANIFEST.json"]:
            info = tarfile.TarInfo(n)
            info.size = len(members[n])
            tar.addfile(info, io.BytesIO(members[n]))
    refused = restore(client, f"{collection}-html"[:60], out.getvalue())
    assert refused["state"] == "failed" and "not an image" in refused["message"], refused
    # The honest image: its type, and headers that keep it an image.
    hits = client.get(f"/v1/collections/{collection}/items", params={"modality": "image"})
    item = hits.json()["items"][0]["id"] if hits.status_code == 200 else None
    if item is None:  # no listing route: the search finds it
        r = client.post(f"/v1/collections/{collection}/search", json={"text": "red"})
        item = r.json()["results"][0]["id"]
    r = client.get(f"/v1/collections/{collection}/items/{item}/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert "sandbox" in r.headers["content-security-policy"]
    r = client.get(f"/v1/collections/{collection}/items/t1/image")
    assert r.status_code == 404
    # Every answer but the page itself carries them; the page runs its own script.
    for path in ("/v1/collections", "/healthz", "/openapi.json"):
        h = client.get(path).headers
        assert h["x-content-type-options"] == "nosniff", path
        assert "default-src 'none'" in h["content-security-policy"], path
    page = client.get("/")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" not in page.headers.get("content-security-policy", "")


def test_a_cancelled_restore_stops_at_once_and_frees_the_job_loop(
    client: httpx.Client, collection: str, server: AppServer, tmp_path: Path
) -> None:
    import numpy as np

    from index import CollectionStore, FaissBackends, Modality, NewItem
    from index.archives import write_archive
    from tests.helpers import TINY_SPACE

    store = CollectionStore(tmp_path / "big", backends=FaissBackends(use_gpu=False))
    try:
        store.create_collection("big", 64, TINY_SPACE)
        n = 30_000
        xb = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        items = [NewItem(f"t{i}", Modality.TEXT, {"n": i}, text=f"note {i}") for i in range(n)]
        store.upsert("big", items, xb, TINY_SPACE)
        root = server.data_dir / "import"
        root.mkdir(exist_ok=True)
        write_archive(store, "big", root / "big.tar")
    finally:
        store.close()
    target = "cancelled-restore"
    client.delete(f"/v1/collections/{target}")
    r = client.post(f"/v1/collections/{target}/snapshots/restore", json={"source": "big.tar"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}").json()["done"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.delete(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
    cancelled = time.monotonic()
    # The loop takes the next job once the restore has stopped (at its next chunk).
    after = job(client, client.post(f"/v1/collections/{collection}/snapshots"))
    assert after["state"] == "succeeded"
    assert time.monotonic() - cancelled < 10
    assert client.get(f"/v1/collections/{target}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}").json()["done"] < 30_000
