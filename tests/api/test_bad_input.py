"""Every bad input gets a clear 4xx in the one error shape, and loses nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.calls import assert_error
from tests.helpers import image_bytes

PNG = image_bytes((10, 20, 30), seed=1)
TEXT_FILE = b"this is plainly not an image\n"


@pytest.fixture
def populated(client: httpx.Client, collection: str) -> Iterator[str]:
    r = client.post(
        f"/v1/collections/{collection}/images",
        files=[("files", ("a.png", PNG, "image/png"))],
        data={"ids": ["keep"]},
    )
    assert r.status_code == 200
    r = client.post(
        f"/v1/collections/{collection}/texts", json={"items": [{"id": "t", "text": "kept text"}]}
    )
    assert r.status_code == 200
    yield collection
    # Whatever the test sent, nothing that was stored is gone and nothing half-stored appeared.
    assert client.get(f"/v1/collections/{collection}").json()["counts"] == {"image": 1, "text": 1}
    assert client.get(f"/v1/collections/{collection}/items/keep/image").content == PNG
    assert client.get("/healthz").status_code == 200


def test_unknown_collection_is_404_everywhere(client: httpx.Client) -> None:
    calls = [
        client.get("/v1/collections/missing"),
        client.delete("/v1/collections/missing"),
        client.post("/v1/collections/missing/search", json={"text": "x"}),
        client.post("/v1/collections/missing/search/image", files={"file": ("a.png", PNG)}),
        client.post("/v1/collections/missing/images", files=[("files", ("a.png", PNG))]),
        client.post("/v1/collections/missing/texts", json={"items": [{"id": "a", "text": "b"}]}),
        client.get("/v1/collections/missing/items/a"),
        client.delete("/v1/collections/missing/items/a"),
        client.get("/v1/collections/missing/items/a/image"),
    ]
    for r in calls:
        assert_error(r, 404, "collection_not_found")
    assert_error(client.get("/v1/nowhere"), 404, "not_found")
    assert_error(client.put("/v1/collections"), 405, "method_not_allowed")


def test_non_images_get_415(client: httpx.Client, populated: str) -> None:
    name = populated
    r = client.post(
        f"/v1/collections/{name}/images", files=[("files", ("notes.txt", TEXT_FILE, "text/plain"))]
    )
    assert "notes.txt" in assert_error(r, 415, "unsupported_media_type")["error"]["message"]
    truncated = image_bytes((1, 2, 3), size=(64, 64), fmt="JPEG")[:100]
    assert_error(
        client.post(f"/v1/collections/{name}/images", files=[("files", ("t.jpg", truncated))]), 415
    )
    assert_error(
        client.post(f"/v1/collections/{name}/search/image", files={"file": ("x.txt", TEXT_FILE)}),
        415,
    )
    assert_error(
        client.post(
            f"/v1/collections/{name}/search",
            json={"image_base64": base64.b64encode(TEXT_FILE).decode()},
        ),
        415,
    )
    assert_error(
        client.post("/v1/embed", json={"images_base64": [base64.b64encode(TEXT_FILE).decode()]}),
        415,
    )


def test_one_bad_file_rejects_the_whole_upload(client: httpx.Client, populated: str) -> None:
    files = [
        ("files", ("good.png", image_bytes(seed=2))),
        ("files", ("bad.bin", TEXT_FILE)),
        ("files", ("good2.png", image_bytes(seed=3))),
    ]
    r = client.post(
        f"/v1/collections/{populated}/images", files=files, data={"ids": ["g1", "bad", "g2"]}
    )
    assert "bad.bin" in assert_error(r, 415)["error"]["message"]
    assert client.get(f"/v1/collections/{populated}/items/g1").status_code == 404


def test_oversized_uploads_get_413(client: httpx.Client, populated: str) -> None:
    name = populated
    big_file = b"\x89PNG" + b"\0" * 250_000  # over the 200 kB per-file limit
    assert_error(
        client.post(f"/v1/collections/{name}/images", files=[("files", ("big.png", big_file))]),
        413,
        "too_large",
    )
    # A declared body over the 1 MB request limit is refused before it is read.
    huge = b"\0" * 1_100_000
    assert_error(
        client.post(f"/v1/collections/{name}/images", files=[("files", ("huge.png", huge))]),
        413,
        "too_large",
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(20):
            yield b"x" * 100_000

    r = client.post(
        f"/v1/collections/{name}/search",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert_error(r, 413, "too_large")
    assert_error(
        client.post(
            f"/v1/collections/{name}/search",
            json={"image_base64": base64.b64encode(big_file).decode()},
        ),
        413,
    )
    # Decompression bomb: a small file that would decode to 25 megapixels.
    bomb = image_bytes((0, 0, 0), size=(5000, 5000))
    assert len(bomb) < 200_000
    r = client.post(f"/v1/collections/{name}/images", files=[("files", ("bomb.png", bomb))])
    assert "pixels" in assert_error(r, 413, "image_too_large")["error"]["message"]
    assert_error(
        client.post(f"/v1/collections/{name}/search/image", files={"file": ("bomb.png", bomb)}), 413
    )


def test_count_and_length_limits_get_413(client: httpx.Client, populated: str) -> None:
    name = populated
    files = [("files", (f"{i}.png", image_bytes(seed=i, size=(8, 8)))) for i in range(9)]  # limit 8
    assert_error(client.post(f"/v1/collections/{name}/images", files=files), 413)
    items = [{"id": str(i), "text": "t"} for i in range(17)]  # limit 16
    assert_error(client.post(f"/v1/collections/{name}/texts", json={"items": items}), 413)
    assert_error(
        client.post(
            f"/v1/collections/{name}/texts", json={"items": [{"id": "x", "text": "a" * 2001}]}
        ),
        413,
    )
    assert_error(client.post(f"/v1/collections/{name}/search", json={"text": "a" * 2001}), 413)
    assert_error(client.post("/v1/embed", json={"texts": ["t"] * 17}), 413)


def test_malformed_bodies_get_422(client: httpx.Client, populated: str) -> None:
    name = populated
    headers = {"content-type": "application/json"}
    bad = [
        client.post(f"/v1/collections/{name}/search", content=b'{"text": ', headers=headers),
        client.post(f"/v1/collections/{name}/search", json={"text": "x", "k": "many"}),
        client.post(f"/v1/collections/{name}/search", json={"text": "x", "target": "audio"}),
        client.post(f"/v1/collections/{name}/search", json={"image_base64": "***not base64***"}),
        client.post(f"/v1/collections/{name}/search", json=["text"]),
        client.post(f"/v1/collections/{name}/texts", json={"items": [{"id": "a"}]}),
        client.post(f"/v1/collections/{name}/texts", json={"items": []}),
        client.post(f"/v1/collections/{name}/texts", json={"texts": ["a"]}),
        client.post(f"/v1/collections/{name}/texts", json={"items": [{"id": "", "text": "a"}]}),
        client.post(f"/v1/collections/{name}/images", data={"ids": ["a"]}),  # no files
        client.post(f"/v1/collections/{name}/search/image", data={"k": "3"}),  # no file
        client.post("/v1/collections", json={"name": "../escape"}),
        # A field the route does not know: a misspelt filter is not an unfiltered search.
        client.post(f"/v1/collections/{name}/search", json={"text": "x", "fliter": {"a": 1}}),
        client.post("/v1/collections", json={"name": "fine", "indx": "HNSW32"}),
        client.post("/v1/collections", json={}),
        client.post("/v1/embed", json={"texts": "not a list"}),
    ]
    for r in bad:
        assert_error(r, 422, "invalid_request")
    assert "JSON" in bad[0].json()["error"]["message"]
    assert any("fliter" in r.json()["error"]["message"] for r in bad)
    # JSON sent as a form (curl -d without a content type) says what to send instead.
    form = client.post(
        "/v1/collections",
        content=b'{"name": "x"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    message = assert_error(form, 422, "invalid_request")["error"]["message"]
    assert "Content-Type: application/json" in message, message
    assert client.get("/v1/collections/fine").status_code == 404
    # Well-formed parts that disagree, or a form's filter that is not JSON: 400.
    disagree = client.post(
        f"/v1/collections/{name}/images",
        files=[("files", ("a.png", PNG))],
        data={"ids": ["a", "b"]},
    )
    assert "one id per file" in assert_error(disagree, 400)["error"]["message"]
    unreadable = client.post(
        f"/v1/collections/{name}/search/image",
        files={"file": ("a.png", PNG)},
        data={"filter": "{oops"},
    )
    assert_error(unreadable, 400, "invalid_filter")
    # A list where a filter value belongs is well-formed JSON the filter cannot take.
    listed = client.post(
        f"/v1/collections/{name}/search", json={"text": "x", "filter": {"tags": ["a", "b"]}}
    )
    assert "$in" in assert_error(listed, 400, "invalid_filter")["error"]["message"]
    for metadata in ("{not json", "[1, 2]", '{"a": NaN}'):
        r = client.post(
            f"/v1/collections/{name}/images",
            files=[("files", ("a.png", PNG))],
            data={"metadata": [metadata]},
        )
        assert "metadata 0" in assert_error(r, 400, "invalid_metadata")["error"]["message"]


def test_empty_queries_and_k_out_of_range_get_400(client: httpx.Client, populated: str) -> None:
    name = populated
    for body in ({"text": ""}, {"text": "   "}, {}, {"k": 5}):
        assert_error(client.post(f"/v1/collections/{name}/search", json=body), 400, "empty_query")
    assert_error(
        client.post(f"/v1/collections/{name}/search", json={"image_base64": ""}), 400, "empty_query"
    )
    assert_error(
        client.post(f"/v1/collections/{name}/search/image", files={"file": ("e.png", b"")}), 400
    )
    assert_error(
        client.post(f"/v1/collections/{name}/images", files=[("files", ("e.png", b""))]), 400
    )
    assert_error(
        client.post(f"/v1/collections/{name}/search", json={"text": "x", "image_base64": "AAAA"}),
        400,
    )
    for k in (0, -3, 501, 10**9):  # the test server's XMODAL_MAX_K is 500
        assert_error(
            client.post(f"/v1/collections/{name}/search", json={"text": "x", "k": k}),
            400,
            "invalid_k",
        )
    r = client.post(
        f"/v1/collections/{name}/search/image", files={"file": ("a.png", PNG)}, data={"k": "0"}
    )
    assert_error(r, 400, "invalid_k")
    assert (
        client.post(f"/v1/collections/{name}/search", json={"text": "x", "k": 500}).status_code
        == 200
    )
    assert_error(client.post("/v1/embed", json={"texts": []}), 400)
    assert_error(client.post("/v1/embed", json={}), 400)


def test_bad_index_spec_and_duplicate_names(client: httpx.Client) -> None:
    r = client.post("/v1/collections", json={"name": "badspec", "index": "IVF0,Nope"})
    assert "IVF0,Nope" in assert_error(r, 400, "invalid_index")["error"]["message"]
    assert client.get("/v1/collections/badspec").status_code == 404


def test_json_filter_as_form_field_must_be_an_object(client: httpx.Client, populated: str) -> None:
    r = client.post(
        f"/v1/collections/{populated}/search/image",
        files={"file": ("a.png", PNG)},
        data={"filter": json.dumps([1])},
    )
    assert "a JSON object" in assert_error(r, 400, "invalid_filter")["error"]["message"]
