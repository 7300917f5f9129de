"""Filters and word matching pay for the rows they read: a filter of many negations reads
the collection once, not once per negation; its work counts in the request's hit budget
and makes it heavy in the fair queue; the catalogue's reads stop at the request's
deadline; and a ``k: 1`` search of another collection answers while three batches of the
costliest filters the limits allow run."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from index import CollectionStore, Interrupted, Modality, NewItem
from index.catalogue.filters import Scope, labels_sql, stored_compare, work
from index.filter_tree import parse
from index.vectors.faiss_backends import FaissBackends
from tests.helpers import TINY_SPACE, AppServer

N = 20_000
# 252 conditions, every one a negation: the filter the hardening round stalled a server with.
NEGATIONS = {
    "$and": [{"$and": [{f"f{j}": {"$ne": j + 64 * i}} for j in range(63)]} for i in range(4)]
}


SCOPE = Scope("c", ("text",), stored_compare)


def test_negations_read_the_collection_once_and_are_counted() -> None:
    sql, _ = labels_sql(parse(NEGATIONS), SCOPE)
    assert sql.count("FROM items WHERE collection") == 1
    assert work(parse(NEGATIONS)) == (252, True)
    mixed = {"$or": [{"a": 1}, {"b": {"$nin": [1, 2]}}, {"c": {"$exists": False}}]}
    sql, _ = labels_sql(parse(mixed), SCOPE)
    assert sql.count("FROM items WHERE collection") == 1 and work(parse(mixed)) == (3, True)
    assert work(parse({"a": 1, "b": {"$gt": 2}})) == (2, False)


def test_a_read_stops_at_its_deadline(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path, backends=FaissBackends(use_gpu=False))
    try:
        conn = store.db.reader()
        endless = (
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
            "SELECT COUNT(*) FROM n WHERE i < 10000000000"
        )
        started = time.monotonic()
        with pytest.raises(Interrupted), store.db.deadline(conn, time.monotonic() + 0.2):
            conn.execute(endless).fetchone()
        assert time.monotonic() - started < 5
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection serves on
    finally:
        store.close()


@pytest.fixture(scope="module")
def stalled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    data = tmp_path_factory.mktemp("cost") / "data"
    store = CollectionStore(data, backends=FaissBackends(use_gpu=False))
    rng = np.random.default_rng(0)
    for name, n in (("big", N), ("small", 1)):
        store.create_collection(name, 64, TINY_SPACE)
        xb = rng.standard_normal((n, 64)).astype(np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        meta = [{f"f{j}": (i * 7 + j) % 300 for j in range(40)} for i in range(n)]
        items = [NewItem(f"t{i}", Modality.TEXT, meta[i], text=f"text {i}") for i in range(n)]
        store.upsert(name, items, xb, TINY_SPACE)
    store.close()
    server = AppServer(data).start()
    yield server
    server.stop()


def test_filter_work_counts_in_the_requests_budget(stalled: AppServer) -> None:
    with httpx.Client(base_url=stalled.url, timeout=60) as c:
        body = {"text": "x", "target": "text", "k": 1, "filter": NEGATIONS}
        r = c.post("/v1/collections/big/search", json=body)
        assert r.status_code == 200, r.text
        # Different filters in one batch each count: 64 of them are over the budget.
        queries = [{**body, "filter": {"$and": [NEGATIONS, {"q": {"$ne": i}}]}} for i in range(64)]
        r = c.post("/v1/collections/big/search/batch", json={"queries": queries})
        assert r.status_code == 413 and "filters" in r.json()["error"]["message"], r.text


def test_a_light_search_answers_while_costly_filters_run(stalled: AppServer) -> None:
    heavy = {
        "queries": [
            {"text": f"q {i}", "target": "text", "k": 1, "filter": NEGATIONS} for i in range(64)
        ]
    }
    light = {"text": "a light query", "target": "text", "k": 1}
    answers: list[Any] = []
    stop = threading.Event()

    def attacker() -> None:
        with httpx.Client(base_url=stalled.url, timeout=120) as c:
            while not stop.is_set():
                r = c.post("/v1/collections/big/search/batch", json=heavy)
                answers.append(r.status_code)

    threads = [threading.Thread(target=attacker) for _ in range(3)]
    for t in threads:
        t.start()
    took = []
    try:
        with httpx.Client(base_url=stalled.url, timeout=60) as c:
            time.sleep(1.0)  # the three batches are in
            for _ in range(8):
                started = time.monotonic()
                r = c.post("/v1/collections/small/search", json=light)
                took.append(time.monotonic() - started)
                assert r.status_code == 200, r.text
                time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert answers and set(answers) == {200}, answers
    assert statistics.median(took) < 1.0, took
