"""Lexical and hybrid text search through the API, on both vector backends: BM25 finds
the exact code among look-alikes, hybrid is the reciprocal-rank fusion of the two
rankings the API gives (recomputed here), with filters, pages and deletes; what the modes
cannot do is a 400."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.helpers import image_bytes

# The same answers with the catalogue on PostgreSQL (issue 37): run against both.
pytestmark = pytest.mark.both_catalogues

COLOURS = ["red", "blue", "green", "black"]
KINDS = ["running shoe", "hiking boot", "sandal"]


def catalogue() -> list[dict[str, Any]]:
    items = []
    for i in range(36):
        colour, kind = COLOURS[i % 4], KINDS[i % 3]
        code = f"XR-{4400 + i}"
        items.append(
            {
                "id": f"sku-{i:02d}",
                "text": f"a {colour} {kind}, product code {code}",
                "metadata": {"colour": colour, "price": 20 + i},
            }
        )
    items.append({"id": "rare", "text": "the zeppelin-shaped lamp", "metadata": {"price": 99}})
    return items


def post(client: httpx.Client, name: str, **body: Any) -> dict[str, Any]:
    r = client.post(f"/v1/collections/{name}/search", json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def ids(answer: dict[str, Any]) -> list[str]:
    return [h["id"] for h in answer["results"]]


@pytest.mark.both_backends
def test_lexical_and_hybrid_rankings(client: httpx.Client, collection: str) -> None:
    items = catalogue()
    for start in range(0, len(items), 16):
        r = client.post(
            f"/v1/collections/{collection}/texts", json={"items": items[start : start + 16]}
        )
        assert r.status_code == 200, r.text
    # The exact code first, and the rare word, whatever the vectors say.
    lexical = post(client, collection, text="XR-4417", mode="lexical", k=5)
    assert ids(lexical)[0] == "sku-17" and lexical["results"][0]["score"] > 0
    assert ids(post(client, collection, text="zeppelin", mode="lexical"))[:1] == ["rare"]
    assert post(client, collection, text="nothing matches qqq", mode="lexical")["results"] == []
    # Hybrid is the fusion of the two rankings, each 100 deep: recomputed from the API's own.
    query = "a red hiking boot XR-4416"
    vec = ids(post(client, collection, text=query, target="text", k=100))
    lex = ids(post(client, collection, text=query, mode="lexical", k=100))
    assert lex[0] == "sku-16"  # every word, the code included
    fused: dict[str, float] = {}
    for ranking in (vec, lex):
        for rank, item_id in enumerate(ranking, 1):
            fused[item_id] = fused.get(item_id, 0.0) + 1 / (60 + rank)
    hybrid = post(client, collection, text=query, mode="hybrid", k=10)
    scores = [round(h["score"], 9) for h in hybrid["results"]]
    assert scores == sorted((round(s, 9) for s in fused.values()), reverse=True)[:10]
    assert all(round(fused[h["id"]], 9) == round(h["score"], 9) for h in hybrid["results"])
    # Pages of the fused list: two pages of 5 are the first 10.
    first = post(client, collection, text=query, mode="hybrid", k=5)
    second = post(client, collection, text=query, mode="hybrid", k=5, offset=5)
    assert ids(first) + ids(second) == ids(hybrid) and first["next_offset"] == 5
    # Filters apply to both rankings; a deleted item leaves the lexical index with it.
    cheap = post(client, collection, text=query, mode="hybrid", k=50, filter={"price": {"$lt": 30}})
    assert ids(cheap) and all(h["metadata"]["price"] < 30 for h in cheap["results"])
    assert client.delete(f"/v1/collections/{collection}/items/sku-17").status_code == 204
    assert "sku-17" not in ids(post(client, collection, text="XR-4417", mode="lexical"))
    # In a batch, each query its own mode.
    r = client.post(
        f"/v1/collections/{collection}/search/batch",
        json={
            "queries": [
                {"text": "zeppelin", "mode": "lexical", "k": 1},
                {"text": query, "mode": "hybrid", "k": 10},
            ]
        },
    )
    assert r.status_code == 200, r.text
    answers = r.json()["answers"]
    assert [h["id"] for h in answers[0]["results"]] == ["rare"]
    assert [h["id"] for h in answers[1]["results"]] == ids(hybrid)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"text": "x", "mode": "lexical", "target": "image"}, "target must be text"),
        ({"image_base64": "IMAGE", "mode": "hybrid"}, "give the query a text"),
        ({"text": "x", "mode": "hybrid", "dedup": 0.9}, "dedup"),
        ({"text": "x", "mode": "lexical", "min_score": 0.2}, "min_relative"),
    ],
)
def test_what_the_lexical_modes_cannot_do_is_a_400(
    client: httpx.Client, collection: str, body: dict[str, Any], says: str
) -> None:
    if body.get("image_base64") == "IMAGE":
        import base64

        body = {**body, "image_base64": base64.b64encode(image_bytes((1, 2, 3))).decode()}
    r = client.post(f"/v1/collections/{collection}/search", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_query" and says in r.json()["error"]["message"]
    r = client.post(f"/v1/collections/{collection}/search", json={"text": "x", "mode": "fuzzy"})
    assert r.status_code == 422


@pytest.mark.both_backends
def test_a_filtered_hybrid_search_reads_its_filter_once(
    client: httpx.Client, collection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The filter's rows are read once for both rankings (and any deeper read), and the
    lexical ranking under a filter is the unfiltered one with the others left out."""
    import index.search

    items = catalogue()
    for start in range(0, len(items), 16):
        r = client.post(
            f"/v1/collections/{collection}/texts", json={"items": items[start : start + 16]}
        )
        assert r.status_code == 200, r.text
    reads: list[int] = []
    real = index.search.filter_labels

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(index.search, "filter_labels", counted)
    cut = {"colour": {"$in": ["red", "blue"]}}
    query = "a red hiking boot XR-4416"
    hybrid = post(client, collection, text=query, mode="hybrid", k=5, filter=cut)
    assert len(reads) == 1
    assert ids(hybrid) and all(
        h["metadata"]["colour"] in ("red", "blue") for h in hybrid["results"]
    )
    everything = ids(post(client, collection, text=query, mode="lexical", k=100))
    kept = ids(post(client, collection, text=query, mode="lexical", k=100, filter=cut))
    colour = {it["id"]: it["metadata"].get("colour") for it in items}
    assert kept == [i for i in everything if colour[i] in ("red", "blue")]
    assert len(reads) == 2


def shop(n: int = 240) -> list[dict[str, Any]]:
    """Look-alikes by the dozen: every product's description is shared with many others,
    only its code is its own."""
    styles = ["classic", "modern", "rustic", "compact", "deluxe"]
    return [
        {
            "id": f"p{i:03d}",
            "text": f"a {styles[i % 5]} {COLOURS[i % 4]} {KINDS[i % 3]}, product code "
            f"XR-{5000 + i}",
            "metadata": {"i": i},
        }
        for i in range(n)
    ]


@pytest.mark.both_backends
def test_relative_fusion_keeps_an_exact_code_first(client: httpx.Client, collection: str) -> None:
    """Queries that name a product's exact code and describe it as its look-alikes are
    described, with the random-weight model's vectors (uninformative): the code's text is
    first lexically every time; relative fusion keeps it first in at least 9 of 10 queries
    (reciprocal rank fusion, counting ranks only, is reported beside it), and its scores
    are the spread-normalised weighed sum of the API's own two rankings."""
    items = shop()
    for start in range(0, len(items), 16):
        r = client.post(
            f"/v1/collections/{collection}/texts", json={"items": items[start : start + 16]}
        )
        assert r.status_code == 200, r.text
    picks = [7, 31, 58, 77, 102, 133, 150, 171, 199, 226]
    first = {"lexical": 0, "rrf": 0, "relative": 0}
    for i in picks:
        text = items[i]["text"].replace("a ", "", 1).replace(", product code", "")
        want = items[i]["id"]
        first["lexical"] += ids(post(client, collection, text=text, mode="lexical", k=1)) == [want]
        for fusion in ("rrf", "relative"):
            got = ids(post(client, collection, text=text, mode="hybrid", fusion=fusion, k=10))
            first[fusion] += got[:1] == [want]
    print(f"\nexact code first, of {len(picks)}: {first}")
    assert first["lexical"] == len(picks)
    assert first["relative"] >= 9, first
    # The fused scores, recomputed from the two rankings the API gives: hybrid reads the
    # lexical one 100 deep and the vector one 99 (``hybrid.vector_part``).
    query = "rustic red running shoe XR-5002"

    def normalised(answer: dict[str, Any]) -> dict[str, float]:
        scores = [h["score"] for h in answer["results"]]
        mean = sum(scores) / len(scores)
        dev = (sum((s - mean) ** 2 for s in scores) / len(scores)) ** 0.5
        return {h["id"]: (h["score"] - (mean - 3 * dev)) / (6 * dev) for h in answer["results"]}

    v = normalised(post(client, collection, text=query, target="text", k=99))
    w = normalised(post(client, collection, text=query, mode="lexical", k=100))
    for alpha in (0.5, 0.8):
        expected = {i: alpha * v.get(i, 0) + (1 - alpha) * w.get(i, 0) for i in {*v, *w}}
        body = {"text": query, "mode": "hybrid", "fusion": "relative", "k": 10}
        if alpha != 0.5:
            body["alpha"] = alpha
        answer = post(client, collection, **body)
        assert [round(h["score"], 6) for h in answer["results"]] == sorted(
            (round(s, 6) for s in expected.values()), reverse=True
        )[:10]
        assert all(abs(expected[h["id"]] - h["score"]) < 1e-6 for h in answer["results"])


@pytest.mark.parametrize(
    "body",
    [
        {"text": "x", "fusion": "relative"},  # not hybrid
        {"text": "x", "mode": "lexical", "alpha": 0.3},
        {"text": "x", "mode": "hybrid", "alpha": 0.3},  # alpha weighs relative fusion only
    ],
)
def test_fusion_settings_outside_hybrid_relative_are_a_400(
    client: httpx.Client, collection: str, body: dict[str, Any]
) -> None:
    r = client.post(f"/v1/collections/{collection}/search", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_query"
    for bad in ({"fusion": "borda"}, {"alpha": 1.5}, {"alpha": -0.1}):
        r = client.post(
            f"/v1/collections/{collection}/search",
            json={"text": "x", "mode": "hybrid", "fusion": "relative", **bad},
        )
        assert r.status_code == 422, r.text
