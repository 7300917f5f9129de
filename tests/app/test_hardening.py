"""One regression test per defect class found by trying the service as a hostile user
would (see the README's Security section). Each test is named after its class."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from index import DB_FILE
from tests.app.test_bad_input import assert_error
from tests.helpers import AppServer


# --- 1. a collection's FAISS factory string is trusted -------------------------------------------
@pytest.mark.parametrize(
    "spec", ["HNSW1", "IVF100000000,Flat", "IVF4", "PQ8x2", "LSH", "IDMap2,Flat", "Flat" * 60]
)
def test_untrusted_index_spec_is_refused_with_400(client: httpx.Client, spec: str) -> None:
    r = client.post("/v1/collections", json={"name": "spec-check", "index": spec})
    assert r.status_code in (400, 422), r.text
    assert client.get("/v1/collections/spec-check").status_code == 404


def test_untrusted_index_spec_stored_earlier_does_not_stop_start_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = AppServer(data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/v1/collections", json={"name": "good"}).status_code == 201
            r = c.post("/v1/collections/good/texts", json={"items": [{"id": "a", "text": "hi"}]})
            assert r.status_code == 200
    finally:
        server.stop()
    # Written by an older version, before specs were checked: HNSW1 used to crash FAISS
    # on its first add, and again on every start while the index was rebuilt.
    with sqlite3.connect(data / DB_FILE) as conn:
        dim, version = conn.execute("SELECT dim, model_version FROM collections").fetchone()
        for name, spec in (("h", "HNSW1"), ("huge", "IVF100000000,Flat")):
            conn.execute(
                "INSERT INTO collections (name, uid, index_spec, dim, model_version, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, name * 4, spec, dim, version, time.time()),
            )
    server = AppServer(data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            listed = {x["name"]: x for x in c.get("/v1/collections").json()["collections"]}
            assert set(listed) == {"good", "h", "huge"}
            assert listed["good"]["error"] is None and listed["good"]["counts"]["text"] == 1
            assert "HNSW1" in listed["h"]["error"]
            assert c.get("/v1/collections/h").json()["error"] == listed["h"]["error"]
            for r in (
                c.post("/v1/collections/h/search", json={"text": "hi"}),
                c.post("/v1/collections/h/texts", json={"items": [{"id": "a", "text": "x"}]}),
                c.get("/v1/collections/h/items/a"),
                c.post("/v1/collections/huge/jobs/index", json={"source": "x.jsonl"}),
            ):
                assert_error(r, 409, "collection_broken")
            assert c.post(
                "/v1/collections/good/search", json={"text": "hi", "target": "text"}
            ).json()["results"]
            assert_error(c.post("/v1/collections", json={"name": "h"}), 409, "collection_exists")
            assert c.delete("/v1/collections/h").status_code == 204
            assert c.post("/v1/collections", json={"name": "h"}).status_code == 201
            assert c.get("/v1/collections/h").json()["error"] is None
    finally:
        server.stop()
