"""Why this picture: the occlusion map of a stored picture for a query, as numbers and as
a PNG overlay; its bounds. (Whether the map points at the right region is measured with a
fine-tuned model in tests/models/slow/test_finetune.py.)"""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import image_bytes


def stored(client: httpx.Client, collection: str) -> bytes:
    picture = image_bytes((30, 160, 220), seed=5, size=(120, 80))
    r = client.post(
        f"/v1/collections/{collection}/images",
        files=[("files", ("p.png", picture))],
        data={"ids": ["pic"]},
    )
    assert r.status_code == 200, r.text
    return picture


def test_a_map_for_a_text_or_a_picture_query(client: httpx.Client, collection: str) -> None:
    picture = stored(client, collection)
    url = f"/v1/collections/{collection}/explain"
    r = client.post(url, json={"item_id": "pic", "text": "a blue sky"})
    assert r.status_code == 200, r.text
    answer = r.json()
    cells = np.array(answer["grid"])
    assert cells.shape == (7, 7) and np.isfinite(cells).all() and np.abs(cells).max() > 0
    # Its score is the picture's cosine to the query, as a search gives it.
    r = client.post(
        f"/v1/collections/{collection}/search",
        json={"text": "a blue sky", "target": "image", "k": 1},
    )
    assert abs(r.json()["results"][0]["score"] - answer["score"]) < 1e-4
    # The same query again: the same map (nothing random in it).
    again = client.post(url, json={"item_id": "pic", "text": "a blue sky"}).json()
    assert np.allclose(np.array(again["grid"]), cells, atol=1e-5)
    # A picture as the query, and another grid.
    query = base64.b64encode(image_bytes((200, 30, 30), seed=9)).decode()
    r = client.post(url, json={"item_id": "pic", "image_base64": query, "grid": 3})
    assert r.status_code == 200 and np.array(r.json()["grid"]).shape == (3, 3)
    # As a PNG: the picture (at most 512 on a side), red where the map is high.
    r = client.post(url, json={"item_id": "pic", "text": "a blue sky", "format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as png:
        assert png.size == Image.open(io.BytesIO(picture)).size


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"item_id": "pic"}, 400),  # no query
        ({"item_id": "pic", "text": "x", "image_base64": "AAAA"}, 400),
        ({"item_id": "pic", "text": "x", "grid": 1}, 422),
        ({"item_id": "pic", "text": "x", "grid": 13}, 422),
        ({"item_id": "pic", "text": "x", "format": "gif"}, 422),
        ({"item_id": "nope", "text": "x"}, 404),
        ({"item_id": "note", "text": "x"}, 404),  # a text has no picture
        ({"item_id": "pic", "text": "x" * 5000}, 413),
    ],
)
def test_what_explain_refuses(
    client: httpx.Client, collection: str, body: dict[str, Any], status: int
) -> None:
    stored(client, collection)
    client.post(
        f"/v1/collections/{collection}/texts", json={"items": [{"id": "note", "text": "a"}]}
    )
    r = client.post(f"/v1/collections/{collection}/explain", json=body)
    assert r.status_code == status, r.text


def test_the_cli_explains_and_classifies(
    client: httpx.Client, collection: str, server: Any, tmp_path: Any
) -> None:
    """``xmodal explain`` writes the overlay and prints the grid; ``xmodal classify``
    prints the labels the API ranks, for a file and for a stored picture."""
    from tests.helpers import xmodal

    picture = stored(client, collection)
    out = tmp_path / "map.png"
    run = xmodal(
        "explain",
        collection,
        "pic",
        "a blue sky",
        "--grid",
        "4",
        "--png",
        str(out),
        "--server",
        server.url,
        data_dir=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == 1 + 4 + 1  # the score, 4 rows, the file written
    with Image.open(out) as png:
        assert png.format == "PNG"
    (tmp_path / "p.png").write_bytes(picture)
    labels = ["blue", "red", "green"]
    want = client.post(
        "/v1/classify",
        json={"image_base64": base64.b64encode(picture).decode(), "labels": labels},
    ).json()["labels"]
    for source in (["p.png"], [f"{collection}/pic", "--stored"]):
        path = str(tmp_path / source[0]) if source[0] == "p.png" else source[0]
        run = xmodal(
            "classify", path, *labels, *source[1:], "--server", server.url, data_dir=tmp_path
        )
        assert run.returncode == 0, run.stderr
        assert [line.split()[-1] for line in run.stdout.splitlines()] == [w["label"] for w in want]
