"""Score cut-offs, pages, combined queries, more like this, near-duplicate collapse and
batches of searches, each against exact search done here with numpy on the same vectors
(the server's own embeddings, fetched through /v1/embed)."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import numpy as np
import pytest

from tests.calls import add_texts, search
from tests.corpus import BIG, TEXTS, WORDS
from tests.helpers import SPECS, image_bytes

# The same answers with the catalogue on PostgreSQL (issue 37): run against both.
pytestmark = pytest.mark.both_catalogues


def embed(client: httpx.Client, texts: list[str]) -> np.ndarray:
    out = []
    for start in range(0, len(texts), 16):  # the test server takes 16 texts per request
        r = client.post("/v1/embed", json={"texts": texts[start : start + 16]})
        assert r.status_code == 200, r.text
        out.append(np.array(r.json()["vectors"], dtype=np.float32))
    return np.concatenate(out)


class Exact:
    """Exact search over the stored texts: ties in insertion order, as the server's."""

    def __init__(self, client: httpx.Client, texts: dict[str, str]) -> None:
        self.ids = list(texts)
        self.vectors = embed(client, list(texts.values()))
        self.url = str(client.base_url)

    def vector(self, text: str) -> np.ndarray:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            v: np.ndarray = embed(client, [text])[0]
        return v

    def rank(self, q: np.ndarray) -> tuple[list[str], np.ndarray]:
        scores = self.vectors @ (q / np.linalg.norm(q))
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [self.ids[i] for i in order], scores[order]

    def score(self, item_id: str, q: np.ndarray) -> float:
        return float(self.vectors[self.ids.index(item_id)] @ (q / np.linalg.norm(q)))


def assert_ranking(got: list[str], exact: tuple[list[str], np.ndarray], ex: Exact, q: np.ndarray):
    """``got`` is the exact ranking's prefix, but for near-ties (float noise between FAISS
    and numpy may swap two hits whose scores differ by less than 1e-5)."""
    ids, scores = exact
    assert len(got) == len(set(got)), "a hit appears twice"
    for i, item in enumerate(got):
        assert item == ids[i] or abs(ex.score(item, q) - scores[i]) < 1e-5, (i, item, ids[i])


@pytest.fixture(scope="module")
def texts(server: Any, backend: str) -> dict[str, Any]:
    """The 80 texts in an exact index; 1,040 in an HNSW and in a compressed index (FAISS: IVF-PQ,
    trained once enough arrive; Milvus: IVF-SQ8)."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        names = {kind: f"feat-{kind}" for kind in ("flat", "hnsw", "compressed")}
        for kind, name in names.items():
            client.delete(f"/v1/collections/{name}")
            r = client.post("/v1/collections", json={"name": name, "index": SPECS[backend][kind]})
            assert r.status_code == 201, r.text
            add_texts(client, name, TEXTS if name == "feat-flat" else BIG)
        deadline = time.monotonic() + 60  # the store trains the index in the background
        while not client.get("/v1/collections/feat-compressed").json()["trained"]["text"]:
            assert time.monotonic() < deadline, "the IVF-PQ index was never trained"
            time.sleep(0.2)
        return {"names": names, "exact": Exact(client, TEXTS), "big": Exact(client, BIG)}


def walk(client: httpx.Client, name: str, k: int, pages: int | None = None) -> list[dict]:
    """Hits of ``pages`` pages (all when None) of one text query, in order."""
    got: list[dict[str, Any]] = []
    offset: int | None = 0
    walked = 0
    while offset is not None and (pages is None or walked < pages):
        answer = search(client, name, text="river stone", target="text", k=k, offset=offset)
        assert len(answer["results"]) <= k
        got += answer["results"]
        offset = answer["next_offset"]
        walked += 1
    return got


@pytest.mark.both_backends
def test_pages_walk_the_exact_ranking_once(client: httpx.Client, texts: dict[str, Any]) -> None:
    name, ex = texts["names"]["flat"], texts["exact"]
    q = ex.vector("river stone")
    hits = walk(client, name, 7)
    got = [h["id"] for h in hits]
    assert len(got) == 80 and sorted(got) == sorted(TEXTS)  # each hit once, none skipped
    assert_ranking(got, ex.rank(q), ex, q)
    for hit in hits:
        assert hit["score"] == pytest.approx(ex.score(hit["id"], q), abs=1e-4)
    assert (
        search(client, name, text="river stone", target="text", k=7, offset=77)["next_offset"]
        is None
    )


@pytest.mark.both_backends
@pytest.mark.parametrize("spec", ["hnsw", "compressed"])
def test_pages_of_approximate_indexes_are_the_exact_ones(
    client: httpx.Client, texts: dict[str, Any], spec: str
) -> None:
    """Six pages of 25 deep into 1,040 texts: the pages an exact search gives, with exact
    scores, though the index ranks by approximate ones."""
    name, ex = texts["names"][spec], texts["big"]
    q = ex.vector("river stone")
    hits = walk(client, name, 25, pages=6)
    got = [h["id"] for h in hits]
    assert len(got) == 150
    assert_ranking(got, ex.rank(q), ex, q)
    for hit in hits:
        assert hit["score"] == pytest.approx(ex.score(hit["id"], q), abs=1e-4)


def test_pages_split_no_tie(client: httpx.Client, collection: str) -> None:
    """Identical texts score the same: a page boundary inside the tie neither repeats nor
    skips one of them."""
    same = {f"dup{i}": "the very same words" for i in range(6)}
    other = {f"other{i}": f"{WORDS[i]} {WORDS[i + 3]}" for i in range(6)}
    add_texts(client, collection, {**other, **same})
    seen: list[str] = []
    for offset in range(0, 12, 2):
        answer = search(
            client, collection, text="the very same words", target="text", k=2, offset=offset
        )
        seen += [h["id"] for h in answer["results"]]
    assert seen[:6] == [f"dup{i}" for i in range(6)]  # tied: in the order they were added
    assert sorted(seen) == sorted({**other, **same})


def test_offset_bounds(client: httpx.Client, texts: dict[str, Any]) -> None:
    name = texts["names"]["flat"]
    r = client.post(f"/v1/collections/{name}/search", json={"text": "x", "k": 10, "offset": 495})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_k"
    r = client.post(f"/v1/collections/{name}/search", json={"text": "x", "offset": -1})
    assert r.status_code == 422
    beyond = search(client, name, text="x", target="text", k=10, offset=200)
    assert beyond == {**beyond, "results": [], "next_offset": None}


def test_score_cut_offs(client: httpx.Client, texts: dict[str, Any]) -> None:
    name, ex = texts["names"]["flat"], texts["exact"]
    q = ex.vector("garden mirror")
    ids, scores = ex.rank(q)
    floor = float(scores[20])  # 21 hits at or above it
    answer = search(client, name, text="garden mirror", target="text", k=50, min_score=floor)
    got = [h["id"] for h in answer["results"]]
    expected = int(np.sum(scores >= floor - 1e-6))
    assert abs(len(got) - expected) <= 1 and answer["next_offset"] is None
    assert all(h["score"] >= floor for h in answer["results"])
    # Nothing above the cut-off: 200 with no results.
    none = search(client, name, text="garden mirror", target="text", min_score=1.0)
    assert none["results"] == [] and none["next_offset"] is None
    # Relative to the best hit: within 5% of its score.
    best = float(scores[0])
    rel = search(client, name, text="garden mirror", target="text", k=80, min_relative=0.95)
    kept = [h["score"] for h in rel["results"]]
    assert kept and kept[0] == pytest.approx(best, abs=1e-4)
    assert all(s >= 0.95 * best - 1e-5 for s in kept)
    assert len(kept) == pytest.approx(int(np.sum(scores >= 0.95 * best)), abs=1)
    # Pages of a cut ranking end where the cut-off does.
    first = search(client, name, text="garden mirror", target="text", k=5, min_score=floor)
    assert first["next_offset"] == 5
    for body in ({"min_score": 1.5}, {"min_relative": -0.1}, {"dedup": 0}):
        r = client.post(f"/v1/collections/{name}/search", json={"text": "x", **body})
        assert r.status_code == 422, body


def test_combined_queries_are_the_weighted_sum(client: httpx.Client, texts: dict[str, Any]) -> None:
    name, ex = texts["names"]["flat"], texts["exact"]
    a, b, c = ex.vector("violin harbor"), ex.vector("desert"), ex.vector("number 7")
    parts = [
        {"text": "violin harbor", "weight": 1.0},
        {"text": "desert", "weight": 0.7},
        {"text": "number 7", "weight": -0.3},
    ]
    q = a + 0.7 * b - 0.3 * c
    answer = search(client, name, query=parts, target="text", k=15)
    got = [h["id"] for h in answer["results"]]
    assert_ranking(got, ex.rank(q), ex, q)
    for hit in answer["results"]:
        assert hit["score"] == pytest.approx(ex.score(hit["id"], q), abs=1e-4)
    # A tiny weight still gives a direction; a zero weight gives none.
    tiny = search(client, name, query=[{"text": "desert", "weight": 1e-30}], target="text", k=5)
    assert [h["id"] for h in tiny["results"]] == ex.rank(b)[0][:5]
    r = client.post(f"/v1/collections/{name}/search", json={"query": [{"text": "a", "weight": 0}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_query"
    # The one-part shorthand is the same search as a one-part query.
    one = search(client, name, query=[{"text": "desert"}], target="text", k=5)
    short = search(client, name, text="desert", target="text", k=5)
    assert one["results"] == short["results"]
    # Parts that cancel out, malformed parts and two kinds of query at once are refused.
    for body, code in (
        ({"query": [{"text": "desert"}, {"text": "desert", "weight": -1}]}, "empty_query"),
        ({"query": [{"text": "a", "item_id": "t001"}]}, "invalid_query"),
        ({"query": [{"weight": 1}]}, "invalid_query"),
        ({"text": "a", "item_id": "t001"}, "invalid_query"),
    ):
        r = client.post(f"/v1/collections/{name}/search", json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (body, r.text)
    for body in (
        {"query": []},
        {"query": [{"text": "a"}] * 9},
        {"query": [{"text": "a", "weight": 11}]},
    ):
        assert client.post(f"/v1/collections/{name}/search", json=body).status_code == 422


def test_an_image_and_a_text_combined(client: httpx.Client, collection: str) -> None:
    """An image part with a text part, in JSON and in the multipart variant."""
    add_texts(client, collection, dict(list(TEXTS.items())[:30]))
    picture = image_bytes((200, 40, 40), size=(64, 64), seed=3)
    image_vec = np.array(
        client.post(
            "/v1/embed", json={"images_base64": [base64.b64encode(picture).decode()]}
        ).json()["vectors"][0],
        dtype=np.float32,
    )
    ex = Exact(client, dict(list(TEXTS.items())[:30]))
    q = 0.5 * image_vec + 1.0 * ex.vector("stone")
    parts = [
        {"image_base64": base64.b64encode(picture).decode(), "weight": 0.5},
        {"text": "stone"},
    ]
    answer = search(client, collection, query=parts, k=10)  # default: texts, for an image
    assert {h["modality"] for h in answer["results"]} == {"text"}
    assert_ranking([h["id"] for h in answer["results"]], ex.rank(q), ex, q)
    r = client.post(
        f"/v1/collections/{collection}/search/image",
        files={"file": ("q.png", picture, "image/png")},
        data={"weight": "0.5", "text": "stone", "k": "10"},
    )
    assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["results"]] == [h["id"] for h in answer["results"]]


def test_more_like_this_uses_the_stored_vector(client: httpx.Client, texts: dict[str, Any]) -> None:
    name, ex = texts["names"]["flat"], texts["exact"]
    q = ex.vectors[ex.ids.index("t010")]
    answer = search(client, name, item_id="t010", k=10)  # default: its own modality
    got = [h["id"] for h in answer["results"]]
    assert "t010" not in got
    ids, scores = ex.rank(q)
    assert_ranking(got, ([i for i in ids if i != "t010"], scores[1:]), ex, q)
    with_self = search(client, name, item_id="t010", k=3, include_self=True)
    assert with_self["results"][0]["id"] == "t010"
    assert with_self["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    # More like this, but about desserts: a stored item and a text combined.
    mixed = search(client, name, query=[{"text": "desert", "weight": 0.5}, {"item_id": "t010"}])
    got = [h["id"] for h in mixed["results"]]
    q = 0.5 * ex.vector("desert") + q
    assert got and "t010" not in got  # texts, like the item, though a text part came first
    ids, scores = ex.rank(q)
    keep = [i for i, item in enumerate(ids) if item != "t010"]
    assert_ranking(got, ([ids[i] for i in keep], scores[keep]), ex, q)
    r = client.post(f"/v1/collections/{name}/search", json={"item_id": "nope"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "item_not_found"


def greedy_collapse(ids: list[str], vectors: np.ndarray, threshold: float) -> list[str]:
    kept: list[int] = []
    for i in range(len(ids)):
        if all(float(vectors[i] @ vectors[j]) < threshold for j in kept):
            kept.append(i)
    return [ids[i] for i in kept]


def test_dedup_keeps_the_best_of_each_group(client: httpx.Client, collection: str) -> None:
    """Hand-made near-duplicates: the same caption in other cases (the same vector) and
    with punctuation (close ones). The collapse is checked against numpy's."""
    base = {f"p{i}": f"{WORDS[i]} by the {WORDS[(i + 4) % 12]}" for i in range(10)}
    dups = {}
    for i in range(0, 10, 2):
        dups[f"p{i}-upper"] = base[f"p{i}"].upper()
        dups[f"p{i}-dot"] = base[f"p{i}"] + "."
    corpus = {**base, **dups}
    add_texts(client, collection, corpus)
    ex = Exact(client, corpus)
    q = ex.vector("river by the garden")
    ids, _ = ex.rank(q)
    order = [ex.ids.index(i) for i in ids]
    plain = search(client, collection, text="river by the garden", target="text", k=20)
    assert len(plain["results"]) == 20  # without dedup: every copy
    for threshold in (0.9999, 0.95, 0.9):
        expected = greedy_collapse(ids, ex.vectors[order], threshold)
        answer = search(
            client, collection, text="river by the garden", target="text", k=20, dedup=threshold
        )
        got = [h["id"] for h in answer["results"]]
        assert got == expected[:20], threshold
        assert not any(g.endswith("-upper") for g in got)  # identical vectors always collapse
    # Pages of a collapsed ranking: the same hits, page by page.
    paged = []
    for offset in range(0, 10, 3):
        page = search(
            client,
            collection,
            text="river by the garden",
            target="text",
            k=3,
            offset=offset,
            dedup=0.95,
        )
        paged += [h["id"] for h in page["results"]]
    assert paged == greedy_collapse(ids, ex.vectors[order], 0.95)[: len(paged)]


def test_batch_answers_as_one_by_one(client: httpx.Client, texts: dict[str, Any]) -> None:
    name = texts["names"]["flat"]
    bodies: list[dict[str, Any]] = [
        {"text": "river stone", "target": "text", "k": 5},
        {"text": "desert", "target": "text", "k": 3, "offset": 3},
        {"item_id": "t005", "k": 4},
        {"text": "garden", "target": "text", "k": 10, "min_score": 0.9},
        {"text": "violin", "target": "text", "k": 6, "dedup": 0.99},
        {"text": "engine", "target": "text", "k": 4, "filter": {"n": 7}},
        {"query": [{"text": "pencil"}, {"item_id": "t001", "weight": -0.5}], "target": "text"},
    ]
    r = client.post(f"/v1/collections/{name}/search/batch", json={"queries": bodies})
    assert r.status_code == 200, r.text
    answers = r.json()["answers"]
    assert len(answers) == len(bodies)
    for body, answer in zip(bodies, answers, strict=True):
        single = search(client, name, **body)
        assert [h["id"] for h in answer["results"]] == [h["id"] for h in single["results"]]
        assert answer["next_offset"] == single["next_offset"]
    # One bad query refuses the batch and is named; too many queries is 413.
    bad = client.post(
        f"/v1/collections/{name}/search/batch",
        json={"queries": [{"text": "a"}, {"text": "b", "k": 0}]},
    )
    assert bad.status_code == 400 and "queries[1]" in bad.json()["error"]["message"]
    many = client.post(
        f"/v1/collections/{name}/search/batch", json={"queries": [{"text": "a"}] * 65}
    )
    assert many.status_code == 413
    # The batch as a whole within one request's limits (here 16 texts, 8 images): texts
    # and images counted over every query's parts and shorthands.
    eight = [{"text": f"word {j}"} for j in range(8)]
    for queries, what in (
        ([{"query": eight}] * 2 + [{"text": "one more"}], "texts"),
        ([{"query": [{"image_base64": "aGk="}] * 2}] * 4 + [{"image_base64": "aGk="}], "files"),
    ):
        r = client.post(f"/v1/collections/{name}/search/batch", json={"queries": queries})
        assert r.status_code == 413 and what in r.json()["error"]["message"], r.text
    full = client.post(
        f"/v1/collections/{name}/search/batch", json={"queries": [{"query": eight}] * 2}
    )
    assert full.status_code == 200, full.text  # 16 texts: at the limit
    # A stored item that is not there is named by its query.
    r = client.post(
        f"/v1/collections/{name}/search/batch",
        json={"queries": [{"text": "a"}, {"item_id": "no-such-item"}]},
    )
    assert r.status_code == 404 and "queries[1]" in r.json()["error"]["message"], r.text
    empty = client.post(f"/v1/collections/{name}/search/batch", json={"queries": []})
    assert empty.status_code == 422
