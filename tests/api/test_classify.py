"""Zero-shot labels through the API: the probabilities are the softmax of the picture's
cosines to each label's template-averaged text vector (recomputed here from /v1/embed),
the same for a picture given as base64, uploaded, or stored; bad input is refused."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import image_bytes

LABELS = ["red", "a blue square", "grass", "night sky"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def expected(
    client: httpx.Client, picture: bytes, labels: list[str], templates: list[str]
) -> dict[str, float]:
    texts = [t.replace("{}", label) for label in labels for t in templates]
    r = client.post("/v1/embed", json={"texts": texts})
    vectors = np.array(r.json()["vectors"]).reshape(len(labels), len(templates), -1).mean(axis=1)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    r = client.post("/v1/embed", json={"images_base64": [b64(picture)]})
    image = np.array(r.json()["vectors"][0])
    logits = 100 * vectors @ image
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return dict(zip(labels, probs.tolist(), strict=True))


def answer(r: httpx.Response) -> dict[str, float]:
    assert r.status_code == 200, r.text
    got = r.json()["labels"]
    probs = [g["probability"] for g in got]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-6
    return {g["label"]: g["probability"] for g in got}


def test_labels_of_a_picture_every_way_it_can_be_given(
    client: httpx.Client, collection: str
) -> None:
    picture = image_bytes((200, 40, 40), seed=3)
    want = expected(client, picture, LABELS, ["a photo of {}.", "a picture of {}.", "{}"])
    given = answer(
        client.post("/v1/classify", json={"image_base64": b64(picture), "labels": LABELS})
    )
    assert given.keys() == want.keys()
    assert all(abs(given[k] - want[k]) < 1e-4 for k in want), (given, want)
    uploaded = answer(
        client.post(
            "/v1/classify/image",
            files={"file": ("p.png", picture)},
            data={"labels": LABELS},
        )
    )
    assert all(abs(uploaded[k] - want[k]) < 1e-4 for k in want)
    r = client.post(
        f"/v1/collections/{collection}/images",
        files=[("files", ("p.png", picture))],
        data={"ids": ["pic"]},
    )
    assert r.status_code == 200, r.text
    stored = answer(
        client.post(
            "/v1/classify", json={"collection": collection, "item_id": "pic", "labels": LABELS}
        )
    )
    assert all(abs(stored[k] - want[k]) < 1e-4 for k in want)
    # The caller's own templates.
    mine = ["an image of {}", "{}, close up"]
    want = expected(client, picture, LABELS, mine)
    got = answer(
        client.post(
            "/v1/classify",
            json={"image_base64": b64(picture), "labels": LABELS, "templates": mine},
        )
    )
    assert all(abs(got[k] - want[k]) < 1e-4 for k in want)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"labels": ["a"]}, 400),  # no picture
        ({"labels": ["a"], "image_base64": "IMG", "item_id": "x"}, 400),  # two pictures
        ({"labels": [], "image_base64": "IMG"}, 422),
        ({"labels": ["a"] * 101, "image_base64": "IMG"}, 422),
        ({"labels": ["x" * 201], "image_base64": "IMG"}, 422),
        ({"labels": ["  "], "image_base64": "IMG"}, 422),
        ({"labels": ["a", "a"], "image_base64": "IMG"}, 400),
        ({"labels": ["a"], "image_base64": "IMG", "templates": ["no slot"]}, 400),
        ({"labels": ["a"], "image_base64": "IMG", "templates": ["{} and {}"]}, 400),
        ({"labels": ["a"], "image_base64": "IMG", "templates": ["{0.__class__}"]}, 400),
        ({"labels": [f"l{i}" for i in range(20)], "image_base64": "IMG"}, 413),  # 60 texts
        ({"labels": ["a"], "image_base64": "bm90IGFuIGltYWdl"}, 415),
        ({"labels": ["a"], "collection": "nope", "item_id": "x"}, 404),
    ],
)
def test_what_classify_refuses(client: httpx.Client, body: dict[str, Any], status: int) -> None:
    if body.get("image_base64") == "IMG":
        body = {**body, "image_base64": b64(image_bytes((1, 2, 3)))}
    r = client.post("/v1/classify", json=body)
    assert r.status_code == status, r.text


def test_a_text_item_is_not_a_picture(client: httpx.Client, collection: str) -> None:
    r = client.post(
        f"/v1/collections/{collection}/texts", json={"items": [{"id": "t", "text": "words"}]}
    )
    assert r.status_code == 200
    r = client.post(
        "/v1/classify", json={"collection": collection, "item_id": "t", "labels": ["a"]}
    )
    assert r.status_code == 400 and "not a picture" in r.text
