"""A collection's label set: its pictures tagged with their most probable labels (the
same ranking ``/v1/classify`` gives), those stored by a job, new ones as they are written
(uploads and index jobs); the tags filter and count like any list; removing the set
removes them."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.calls import wait_for_job
from tests.helpers import AppServer, image_bytes

LABELS = ["red", "blue", "green", "a cat"]
COLOURS = [(220, 30, 30), (30, 60, 220), (30, 170, 60), (200, 200, 200), (90, 20, 140)]


def upload(
    client: httpx.Client, collection: str, ids: list[str], seed: int = 0
) -> dict[str, bytes]:
    pictures = {i: image_bytes(COLOURS[n % len(COLOURS)], seed=seed + n) for n, i in enumerate(ids)}
    r = client.post(
        f"/v1/collections/{collection}/images",
        files=[("files", (f"{i}.png", data)) for i, data in pictures.items()],
        data={"ids": list(pictures)},
    )
    assert r.status_code == 200, r.text
    return pictures


def ranked(client: httpx.Client, picture: bytes, top: int, threshold: float) -> list[str]:
    r = client.post(
        "/v1/classify",
        json={"image_base64": base64.b64encode(picture).decode(), "labels": LABELS},
    )
    kept = [e["label"] for e in r.json()["labels"] if e["probability"] >= threshold]
    return kept[:top]


def tags(client: httpx.Client, collection: str, item: str) -> Any:
    r = client.get(f"/v1/collections/{collection}/items/{item}")
    assert r.status_code == 200, r.text
    return r.json()["metadata"].get("labels")


def test_a_label_set_tags_the_pictures(client: httpx.Client, collection: str) -> None:
    pictures = upload(client, collection, ["p0", "p1", "p2"])
    client.post(f"/v1/collections/{collection}/texts", json={"items": [{"id": "t", "text": "x"}]})
    assert client.get(f"/v1/collections/{collection}/labels").status_code == 404
    body = {"labels": LABELS, "top": 2, "threshold": 0.0}
    r = client.put(f"/v1/collections/{collection}/labels", json=body)
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"])
    assert job["state"] == "succeeded" and job["done"] == 3, job
    assert client.get(f"/v1/collections/{collection}/labels").json()["labels"] == LABELS
    for item, picture in pictures.items():
        assert tags(client, collection, item) == ranked(client, picture, 2, 0.0)
    assert tags(client, collection, "t") is None  # texts are not tagged
    # A picture written now is tagged as it is written.
    later = upload(client, collection, ["p3"], seed=40)
    assert tags(client, collection, "p3") == ranked(client, later["p3"], 2, 0.0)
    # Tags filter and count as any list does; searches still find every picture.
    every = {i: tags(client, collection, i) for i in ["p0", "p1", "p2", "p3"]}
    label = every["p0"][0]
    r = client.post(
        f"/v1/collections/{collection}/search",
        json={"text": "x", "k": 10, "filter": {"labels": label}, "facets": ["labels"]},
    )
    assert {h["id"] for h in r.json()["results"]} == {i for i, t in every.items() if label in t}
    counts = {e["value"]: e["count"] for e in r.json()["facets"]["labels"]}
    assert counts[label] == sum(label in t for t in every.values())
    # Removed: a job takes the tags away; new pictures are not tagged.
    r = client.delete(f"/v1/collections/{collection}/labels")
    assert wait_for_job(client, r.json()["id"])["state"] == "succeeded"
    assert all(tags(client, collection, i) is None for i in every)
    upload(client, collection, ["p4"], seed=80)
    assert tags(client, collection, "p4") is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"labels": []}, 422),
        ({"labels": ["a"], "top": 0}, 422),
        ({"labels": ["a"], "top": 21}, 422),
        ({"labels": ["a"], "threshold": 1.5}, 422),
        ({"labels": ["a", "a"]}, 400),
        ({"labels": ["a"], "templates": ["none"]}, 400),
        ({"labels": [f"l{i}" for i in range(6)]}, 400),  # 18 texts: over the limit of 16
    ],
)
def test_what_a_label_set_cannot_be(
    client: httpx.Client, collection: str, body: dict[str, Any], status: int
) -> None:
    r = client.put(f"/v1/collections/{collection}/labels", json=body)
    assert r.status_code == status, r.text
    assert client.get(f"/v1/collections/{collection}/labels").status_code == 404


def test_an_index_job_tags_what_it_indexes(tmp_path: Path) -> None:
    """Pictures indexed by a batch job are tagged as they are committed, as uploads are."""
    from tests.corpus import write_many

    data = tmp_path / "data"
    write_many(data / "import", "corpus", 12)
    server = AppServer(data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.post("/v1/collections", json={"name": "c"}).status_code == 201
            r = c.put("/v1/collections/c/labels", json={"labels": LABELS, "top": 1})
            assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"
            r = c.post("/v1/collections/c/jobs/index", json={"source": "corpus"})
            assert wait_for_job(c, r.json()["id"])["done"] == 12
            picture = (data / "import" / "corpus" / "00003.png").read_bytes()
            want = ranked(c, picture, 1, 0.1)
            got = c.get("/v1/collections/c/items/00003.png").json()["metadata"]["labels"]
            assert got == want
            # Deleting the collection takes its label set with it.
            assert c.delete("/v1/collections/c").status_code == 204
            assert c.post("/v1/collections", json={"name": "c"}).status_code == 201
            assert c.get("/v1/collections/c/labels").status_code == 404
    finally:
        server.stop()
