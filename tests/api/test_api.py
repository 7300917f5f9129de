"""The HTTP API end to end, against a real ``xmodal serve`` process on loopback."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import SPECS, AppServer, image_bytes

COLOURS = {
    "red": (230, 20, 20),
    "green": (20, 200, 40),
    "blue": (20, 40, 230),
    "yellow": (240, 230, 30),
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def embed_texts(client: httpx.Client, texts: list[str]) -> np.ndarray:
    r = client.post("/v1/embed", json={"texts": texts})
    assert r.status_code == 200, r.text
    return np.array(r.json()["vectors"], dtype=np.float32)


def embed_images(client: httpx.Client, images: list[bytes]) -> np.ndarray:
    r = client.post("/v1/embed", json={"images_base64": [b64(i) for i in images]})
    assert r.status_code == 200, r.text
    return np.array(r.json()["vectors"], dtype=np.float32)


def upload(
    client: httpx.Client,
    name: str,
    images: dict[str, bytes],
    metadata: dict[str, Any] | None = None,
) -> httpx.Response:
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in images.items()]
    data: dict[str, Any] = {"ids": list(images)}
    if metadata is not None:
        data["metadata"] = [json.dumps(metadata.get(i, {})) for i in images]
    return client.post(f"/v1/collections/{name}/images", files=files, data=data)


def search(client: httpx.Client, name: str, **body: Any) -> httpx.Response:
    return client.post(f"/v1/collections/{name}/search", json=body)


@pytest.fixture
def indexed(client: httpx.Client, collection: str) -> dict[str, Any]:
    """A collection with four coloured noise images and four captions."""
    images = {c: image_bytes(rgb, seed=i) for i, (c, rgb) in enumerate(COLOURS.items())}
    r = upload(
        client,
        collection,
        images,
        {c: {"colour": c, "warm": c in ("red", "yellow")} for c in images},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"ids": list(images)}
    texts = [
        {"id": f"cap-{c}", "text": f"a {c} square", "metadata": {"colour": c}} for c in COLOURS
    ]
    r = client.post(f"/v1/collections/{collection}/texts", json={"items": texts})
    assert r.status_code == 200, r.text
    assert r.json() == {"ids": [t["id"] for t in texts]}
    return {"name": collection, "images": images, "texts": {t["id"]: t["text"] for t in texts}}


# --- collections ------------------------------------------------------------------------------
@pytest.mark.both_backends
def test_collections_can_be_created_listed_read_and_deleted(
    client: httpx.Client, backend: str
) -> None:
    client.delete("/v1/collections/lifecycle")
    hnsw = SPECS[backend]["hnsw"]
    r = client.post("/v1/collections", json={"name": "lifecycle", "index": hnsw})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "lifecycle" and body["index"] == hnsw
    assert body["counts"] == {"image": 0, "text": 0} and body["model"] == "xmodal-tiny@random-seed0"
    assert client.post("/v1/collections", json={"name": "lifecycle"}).status_code == 409
    listed = {c["name"]: c for c in client.get("/v1/collections").json()["collections"]}
    assert listed["lifecycle"]["dim"] == body["dim"]
    assert client.get("/v1/collections/lifecycle").json()["index"] == hnsw
    assert client.delete("/v1/collections/lifecycle").status_code == 204
    r = client.get("/v1/collections/lifecycle")
    assert r.status_code == 404 and r.json()["error"]["code"] == "collection_not_found"


def test_counts_per_modality(client: httpx.Client, indexed: dict[str, Any]) -> None:
    r = client.get(f"/v1/collections/{indexed['name']}")
    assert r.json()["counts"] == {"image": 4, "text": 4}


# --- search in four directions --------------------------------------------------------------
def test_image_to_image_finds_the_same_picture_first(
    client: httpx.Client, indexed: dict[str, Any]
) -> None:
    for colour, data in indexed["images"].items():
        r = search(client, indexed["name"], image_base64=b64(data), target="image", k=2)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert results[0]["id"] == colour and results[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert results[0]["metadata"]["colour"] == colour and results[0]["modality"] == "image"


def test_text_to_text_finds_the_same_caption_first(
    client: httpx.Client, indexed: dict[str, Any]
) -> None:
    for item_id, text in indexed["texts"].items():
        results = search(client, indexed["name"], text=text, target="text", k=1).json()["results"]
        assert results == [
            {
                "id": item_id,
                "score": pytest.approx(1.0, abs=1e-4),
                "modality": "text",
                "metadata": {"colour": item_id[4:]},
                "text": text,
            }
        ]


def test_text_to_image_ranks_images_by_their_embedding_similarity(
    client: httpx.Client, indexed: dict[str, Any]
) -> None:
    """The default target of a text query is images; scores are the inner products of the
    embeddings /v1/embed gives, best first."""
    name, images = indexed["name"], indexed["images"]
    query = "a red square"
    r = search(client, name, text=query, k=10)
    assert r.status_code == 200
    body = r.json()
    assert body["took_ms"] >= 0
    results = body["results"]
    assert [h["modality"] for h in results] == ["image"] * 4
    q = embed_texts(client, [query])[0]
    xb = embed_images(client, list(images.values()))
    expected = sorted(zip(images, xb @ q, strict=True), key=lambda t: -t[1])
    assert [h["id"] for h in results] == [i for i, _ in expected]
    np.testing.assert_allclose([h["score"] for h in results], [s for _, s in expected], atol=1e-4)


def test_image_to_text_ranks_captions_by_their_embedding_similarity(
    client: httpx.Client, indexed: dict[str, Any]
) -> None:
    name = indexed["name"]
    picture = indexed["images"]["green"]
    files = {"file": ("green.png", picture, "image/png")}
    r = client.post(f"/v1/collections/{name}/search/image", files=files, data={"k": "3"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and all(h["modality"] == "text" for h in results)
    q = embed_images(client, [picture])[0]
    captions = indexed["texts"]
    xb = embed_texts(client, list(captions.values()))
    expected = sorted(zip(captions, xb @ q, strict=True), key=lambda t: -t[1])[:3]
    assert [h["id"] for h in results] == [i for i, _ in expected]
    assert [h["text"] for h in results] == [captions[i] for i, _ in expected]
    # The JSON form with base64 gives the same answer.
    again = search(client, name, image_base64=b64(picture), k=3).json()["results"]
    assert [h["id"] for h in again] == [h["id"] for h in results]


def test_filter_keeps_matching_metadata_only(client: httpx.Client, indexed: dict[str, Any]) -> None:
    name = indexed["name"]
    warm = search(client, name, text="a colour", k=10, filter={"warm": True}).json()["results"]
    assert sorted(h["id"] for h in warm) == ["red", "yellow"]
    one = search(
        client, name, text="a colour", k=10, target="text", filter={"colour": "blue"}
    ).json()["results"]
    assert [h["id"] for h in one] == ["cap-blue"]
    files = {"file": ("q.png", indexed["images"]["red"], "image/png")}
    r = client.post(
        f"/v1/collections/{name}/search/image",
        files=files,
        data={"target": "image", "filter": json.dumps({"warm": False})},
    )
    assert sorted(h["id"] for h in r.json()["results"]) == ["blue", "green"]


# --- items ------------------------------------------------------------------------------------
def test_items_can_be_read_fetched_as_image_replaced_and_deleted(
    client: httpx.Client, indexed: dict[str, Any]
) -> None:
    name, images = indexed["name"], indexed["images"]
    item = client.get(f"/v1/collections/{name}/items/red").json()
    assert item["modality"] == "image" and item["has_image"] and item["metadata"]["colour"] == "red"
    r = client.get(f"/v1/collections/{name}/items/red/image")
    assert (
        r.status_code == 200
        and r.content == images["red"]
        and r.headers["content-type"] == "image/png"
    )
    cap = client.get(f"/v1/collections/{name}/items/cap-red").json()
    assert cap["text"] == "a red square" and not cap["has_image"]
    assert client.get(f"/v1/collections/{name}/items/cap-red/image").status_code == 404

    # Same id, new picture: the old one is gone from search, the new one found.
    new_red = image_bytes((128, 0, 0), seed=99)
    assert upload(client, name, {"red": new_red}).status_code == 200
    top = search(client, name, image_base64=b64(new_red), target="image", k=1).json()["results"][0]
    assert top["id"] == "red" and top["score"] == pytest.approx(1.0, abs=1e-4)
    assert client.get(f"/v1/collections/{name}/items/red/image").content == new_red
    assert client.get(f"/v1/collections/{name}").json()["counts"]["image"] == 4

    assert client.delete(f"/v1/collections/{name}/items/green").status_code == 204
    ids = [
        h["id"]
        for h in search(
            client, name, image_base64=b64(images["green"]), target="image", k=10
        ).json()["results"]
    ]
    assert "green" not in ids and len(ids) == 3
    r = client.get(f"/v1/collections/{name}/items/green")
    assert r.status_code == 404 and r.json()["error"]["code"] == "item_not_found"
    assert client.delete(f"/v1/collections/{name}/items/green").status_code == 404


def test_ids_may_contain_slashes_and_default_to_the_content_hash(
    client: httpx.Client, collection: str
) -> None:
    data = image_bytes((1, 2, 3), seed=5)
    r = client.post(
        f"/v1/collections/{collection}/images", files=[("files", ("a.png", data, "image/png"))]
    )
    import hashlib

    assert r.json() == {"ids": [hashlib.sha256(data).hexdigest()]}
    r = upload(client, collection, {"holiday/2024/beach.png": data})
    assert r.status_code == 200
    assert (
        client.get(f"/v1/collections/{collection}/items/holiday/2024/beach.png").status_code == 200
    )
    assert (
        client.get(f"/v1/collections/{collection}/items/holiday/2024/beach.png/image").content
        == data
    )


def test_embed_returns_normalised_vectors_in_order(client: httpx.Client) -> None:
    r = client.post("/v1/embed", json={"texts": ["one", "two", "one"]})
    body = r.json()
    v = np.array(body["vectors"])
    assert v.shape == (3, body["dim"]) and body["model"] == "xmodal-tiny@random-seed0"
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v[0], v[2], atol=1e-6)
    assert not np.allclose(v[0], v[1])


def test_concurrent_searches_each_get_their_own_answer(
    client: httpx.Client, indexed: dict[str, Any], server: AppServer
) -> None:
    name, captions = indexed["name"], indexed["texts"]

    def one(i: int) -> tuple[str, str]:
        item_id, text = list(captions.items())[i % len(captions)]
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = search(c, name, text=text, target="text", k=1)
            assert r.status_code == 200, r.text
            return item_id, r.json()["results"][0]["id"]

    with ThreadPoolExecutor(16) as pool:
        pairs = list(pool.map(one, range(96)))
    assert all(want == got for want, got in pairs)
    metrics = client.get("/metrics").text
    assert 'xmodal_encoder_batch_size_count{modality="text"}' in metrics
    assert "xmodal_search_batch_size_count" in metrics


# --- health and metrics -----------------------------------------------------------------------
def test_health_readiness_and_metrics(client: httpx.Client, indexed: dict[str, Any]) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "xmodal-tiny@random-seed0"
    text = client.get("/metrics").text
    for name in (
        "xmodal_requests_total",
        "xmodal_request_duration_seconds_bucket",
        "xmodal_encoder_batch_size_bucket",
        "xmodal_encoder_queue_depth",
        "xmodal_encoder_queue_wait_seconds_bucket",
    ):
        assert name in text
    assert f'xmodal_index_vectors{{collection="{indexed["name"]}",modality="image"}} 4.0' in text
    assert 'route="/v1/collections/{name}/search"' in text
