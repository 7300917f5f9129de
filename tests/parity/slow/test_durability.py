"""Acknowledged writes survive ``kill -9`` of the server."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import BACKENDS, SPECS, ServerProcess, image_bytes


def run_searches(
    client: httpx.Client, name: str, images: dict[str, bytes]
) -> list[list[tuple[str, float]]]:
    queries: list[dict[str, Any]] = [
        {"text": "a photo of a dog", "k": 15},
        {"text": "caption number 3", "target": "text", "k": 15},
        {"image_base64": base64.b64encode(images["img-7"]).decode(), "k": 15},
        {"image_base64": base64.b64encode(images["img-20"]).decode(), "target": "image", "k": 15},
        {"text": "anything", "k": 30, "filter": {"group": 1}},
    ]
    out = []
    for q in queries:
        r = client.post(f"/v1/collections/{name}/search", json=q)
        assert r.status_code == 200, r.text
        out.append([(h["id"], round(h["score"], 4)) for h in r.json()["results"]])
    return out


# Every backend with and without index dumps midway on SQLite; on PostgreSQL, the two
# far ends (FAISS rebuilt from the catalogue alone, Milvus after dumps).
CASES = [
    pytest.param(b, every, "sqlite", id=f"{name}-{b}")
    for every, name in ((1_000_000, "no-snapshot"), (25, "snapshots-midway"))
    for b in BACKENDS
] + [
    pytest.param("faiss", 1_000_000, "postgres", id="no-snapshot-faiss-postgres"),
    pytest.param("milvus", 25, "postgres", id="snapshots-midway-milvus-postgres"),
]


@pytest.mark.parametrize(("backend", "index_dump_every", "catalogue"), CASES)
def test_acknowledged_items_survive_kill_9(
    tmp_path: Path,
    index_dump_every: int,
    backend: str,
    catalogue: str,
    request: pytest.FixtureRequest,
) -> None:
    extra = {}
    if catalogue == "postgres":
        extra["database_url"] = request.getfixturevalue("pg").database()
    server = ServerProcess(
        tmp_path / "data",
        index_dump_every=index_dump_every,
        index_dump_interval_s=3600,
        vector_backend=backend,
        **extra,
    ).start()
    images = {
        f"img-{i}": image_bytes((i * 9 % 256, 80, 200 - i), seed=i, size=(24, 24))
        for i in range(40)
    }
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/v1/collections", json={"name": "durable"}).status_code == 201
            assert (
                c.post(
                    "/v1/collections", json={"name": "hnsw", "index": SPECS[backend]["hnsw"]}
                ).status_code
                == 201
            )
            ids = list(images)
            for start in range(0, len(ids), 8):
                batch = ids[start : start + 8]
                files = [("files", (f"{i}.png", images[i], "image/png")) for i in batch]
                meta = [f'{{"group": {int(i.split("-")[1]) % 3}}}' for i in batch]
                for name in ("durable", "hnsw"):
                    r = c.post(
                        f"/v1/collections/{name}/images",
                        files=files,
                        data={"ids": batch, "metadata": meta},
                    )
                    assert r.status_code == 200, r.text
            texts = [
                {"id": f"cap-{i}", "text": f"caption number {i}", "metadata": {"group": i % 3}}
                for i in range(30)
            ]
            for name in ("durable", "hnsw"):
                for start in range(0, 30, 10):
                    r = c.post(
                        f"/v1/collections/{name}/texts", json={"items": texts[start : start + 10]}
                    )
                    assert r.status_code == 200
                # After the snapshots: deletes and a replacement that must also survive.
                assert c.delete(f"/v1/collections/{name}/items/img-3").status_code == 204
                assert c.delete(f"/v1/collections/{name}/items/cap-4").status_code == 204
                new = image_bytes((0, 0, 0), seed=1234, size=(24, 24))
                r = c.post(
                    f"/v1/collections/{name}/images",
                    files=[("files", ("n.png", new))],
                    data={"ids": ["img-5"]},
                )
                assert r.status_code == 200
            images["img-5"] = new
            before = {name: run_searches(c, name, images) for name in ("durable", "hnsw")}
            counts = {
                name: c.get(f"/v1/collections/{name}").json()["counts"]
                for name in ("durable", "hnsw")
            }
        server.kill()

        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for name in ("durable", "hnsw"):
                assert c.get(f"/v1/collections/{name}").json()["counts"] == counts[name]
                assert run_searches(c, name, images) == before[name]
                assert c.get(f"/v1/collections/{name}/items/img-3").status_code == 404
                assert c.get(f"/v1/collections/{name}/items/img-5/image").content == images["img-5"]
                assert (
                    c.get(f"/v1/collections/{name}/items/img-39/image").content == images["img-39"]
                )
            assert counts["durable"] == {"image": 39, "text": 29}
    finally:
        server.stop()
