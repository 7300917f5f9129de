"""Issue 26, third hardening round: what one request may cost (bodies, searches, advice,
fetches) and how long it may take."""

from __future__ import annotations

import json
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.api import bodies
from app.api.bodies import CONTROL_BODY_BYTES, json_values
from app.service.advice import AdviceStopped, Advisor
from app.service.search.ranking import Budget, SearchSpec, rank
from index import CollectionStore, Hit, Modality
from index.vectors.faiss_backends import FaissBackends
from models.errors import DeadlineExceeded
from tests.calls import assert_error, wait_until
from tests.helpers import AppServer, children, store_vectors


# --- 9. counting a body's values, and bodies per route -------------------------------------------
def _bare_count(body: bytes) -> int:
    bare = bodies._STRING.sub(b"", body)
    return bare.count(b",") + bare.count(b":")


def test_value_count_is_exact_across_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(26)
    parts: list[object] = ["a,b", 'x"y:', "\\", "", 'q\\"', 7, {"k:": "v,"}, [1, 2], "é,\u2028"]
    for _ in range(400):
        monkeypatch.setattr(bodies, "_SCAN_BYTES", rng.choice([1, 2, 3, 5, 8, 17, 64]))
        body = json.dumps([rng.choice(parts) for _ in range(rng.randint(0, 30))]).encode()
        assert json_values(body, 0) == _bare_count(body), body
        cut = body[: rng.randint(1, len(body))]  # malformed: a string left open
        assert json_values(cut, 0) <= _bare_count(body)


def test_value_count_takes_constant_memory() -> None:
    body = b'{"texts": [' + b'"a",' * 599_999 + b'"a"]}'
    tracemalloc.start()
    try:
        count = json_values(body, 100_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 600_000
    # Whole-body removal of the strings took about 40 times the body (about 100 MB here).
    assert peak < 4_000_000, peak


@pytest.fixture
def big_control_body() -> bytes:
    return json.dumps({"name": "x", "index": "Flat", "pad": "p" * CONTROL_BODY_BYTES}).encode()


def _chunks(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 8192):
        yield body[i : i + 8192]


@pytest.mark.parametrize(
    "path", ["/v1/collections", "/v1/finetune", "/v1/collections/x/jobs/index", "/v1/evaluate"]
)
def test_control_routes_take_small_bodies(
    client: httpx.Client, big_control_body: bytes, path: str
) -> None:
    headers = {"content-type": "application/json"}
    declared = client.post(path, content=big_control_body, headers=headers)
    assert f"at most {CONTROL_BODY_BYTES} bytes" in assert_error(declared, 413)["error"]["message"]
    streamed = client.post(path, content=_chunks(big_control_body), headers=headers)
    assert f"at most {CONTROL_BODY_BYTES} bytes" in assert_error(streamed, 413)["error"]["message"]
    assert client.get("/v1/collections/x").status_code == 404


# --- 2. what one search may cost, and how long it may take ---------------------------------------
def test_a_requests_searches_share_one_hit_budget(client: httpx.Client, collection: str) -> None:
    items = [{"id": f"t{i}", "text": "the same words"} for i in range(12)]
    assert client.post(f"/v1/collections/{collection}/texts", json={"items": items}).is_success
    search = f"/v1/collections/{collection}/search"
    # The shared server allows k up to 500 and, by default, 20,000 hits a request (and 16
    # texts: these queries are stored items).
    ok = {"queries": [{"item_id": "t1", "k": 500}] * 40}
    assert client.post(search + "/batch", json=ok).status_code == 200
    for body in (
        {"queries": [{"item_id": "t1", "k": 500}] * 41},
        {"queries": [{"item_id": "t2", "k": 250, "offset": 250, "dedup": 0.5}] * 41},
    ):
        r = client.post(search + "/batch", json=body)
        message = assert_error(r, 413, "search_too_large")["error"]["message"]
        assert "20500 hits" in message and "20000" in message, message


def _deep(depths: list[int]) -> Callable[[int], list[Hit]]:
    """A collection of 1,000 items tied at one score: every ranking must deepen."""

    def fetch(depth: int) -> list[Hit]:
        depths.append(depth)
        return [Hit(f"i{n:04d}", 0.5, Modality.TEXT, {}, None) for n in range(depth)]

    return fetch


def test_deepening_stops_at_the_requests_budget_and_deadline() -> None:
    unbounded: list[int] = []
    rank(_deep(unbounded), SearchSpec(k=10), 1000)
    assert unbounded[-1] == 1000  # ties at the page's end: down to max_depth
    spent: list[int] = []
    budget = Budget(hits=200, timeout_s=60)
    for _ in range(3):  # three queries of one request
        rank(_deep(spent), SearchSpec(k=10, budget=budget), 1000)
    assert sum(spent) - 3 * spent[0] <= 200 and budget.hits >= 0
    late: list[int] = []
    page = rank(_deep(late), SearchSpec(k=10, budget=Budget(10**6, 1, deadline=1.0)), 1000)
    assert late == [12] and len(page.hits) == 10  # past its deadline: no deepening


@pytest.fixture(scope="module")
def hurried(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """A server whose searches time out at once, holding 5,000 vectors to advise on."""
    data = tmp_path_factory.mktemp("hurried") / "data"
    store_vectors(data, "many", 5000)
    server = AppServer(data, search_timeout_s=0.001)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_search_past_its_deadline_gets_504(hurried: AppServer) -> None:
    with httpx.Client(base_url=hurried.url, timeout=30) as c:
        assert c.post("/v1/collections", json={"name": "c"}).status_code == 201
        texts = {"items": [{"id": "a", "text": "a red bus"}]}
        assert c.post("/v1/collections/c/texts", json=texts).is_success
        for path, body in (
            ("/v1/collections/c/search", {"text": "bus"}),
            ("/v1/collections/c/search/batch", {"queries": [{"text": "bus"}] * 3}),
            ("/knn-service", {"text": "bus", "indice_name": "c", "modality": "text"}),
        ):
            r = c.post(path, json=body)
            message = assert_error(r, 504, "deadline_exceeded")["error"]["message"]
            assert "longer than 0.001 s" in message, (path, message)
        assert c.get("/v1/collections/c/items/a").status_code == 200  # the rest still answers


# --- 3. index advice: refused up front, or stopped ------------------------------------------------
SLOW_SPECS = ["HNSW128"] * 12  # about 0.7 s each on 5,000 vectors here


def _advice_processes(pid: int | None = None) -> list[int]:
    """The processes of ``pid`` (this one by default) measuring an index advice."""
    return children(pid or os.getpid(), b"index.vectors.advice_run")


def test_specs_the_sample_cannot_train_are_refused_up_front(
    client: httpx.Client, collection: str
) -> None:
    items = [{"id": f"t{i}", "text": f"text number {i}"} for i in range(12)]
    assert client.post(f"/v1/collections/{collection}/texts", json={"items": items}).is_success
    url = f"/v1/collections/{collection}/index-advice"
    for spec in ("OPQ16_64,IVF65536,PQ16x12", "IVF64,Flat", "PQ8x12", "HNSW16_PQ8"):
        r = client.post(url, json={"specs": ["Flat", spec], "sample": 20000})
        message = assert_error(r, 400, "invalid_index")["error"]["message"]
        assert "vectors to train" in message and "the sample has 12" in message, message
    assert client.post(url, json={"specs": ["Flat", "HNSW16"]}).status_code == 200


def test_advice_ends_at_its_deadline_when_stopped_and_when_closed(tmp_path: Path) -> None:
    store_vectors(tmp_path / "data", "many", 5000)
    store = CollectionStore(tmp_path / "data", backends=FaissBackends(use_gpu=False))
    advisor = Advisor(store, 1.0, tmp_path / "tmp")
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="longer than 1 s"):
            advisor.advise("many", {}, specs=SLOW_SPECS)
        assert time.monotonic() - started < 4
        for stopper in ("event", "close"):
            stop = threading.Event()
            trigger = stop.set if stopper == "event" else advisor.close
            threading.Timer(0.5, trigger).start()
            started = time.monotonic()
            with pytest.raises(AdviceStopped):
                advisor.advise("many", {}, specs=SLOW_SPECS, stop=stop)
            assert time.monotonic() - started < 3
        assert _advice_processes() == [] and list((tmp_path / "tmp").iterdir()) == []
    finally:
        store.close()


def test_advice_stops_when_its_client_leaves(hurried: AppServer) -> None:
    url = f"{hurried.url}/v1/collections/many/index-advice"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json={"specs": SLOW_SPECS}, timeout=1.0)
    wait_until(lambda: not _advice_processes(), timeout=5, what="the advice process ended")
    # The advisor is free again at once (one advice at a time: a running one answers 429).
    r = httpx.post(url, json={"specs": ["Flat"], "sample": 500}, timeout=30)
    assert r.status_code == 200 and r.json()["rows"][0]["recall_at_10"] == 1.0, r.text
