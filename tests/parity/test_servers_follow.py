"""Two servers over one catalogue on PostgreSQL, each with its own FAISS indexes in its own
data dir: what one writes, deletes, creates or drops, the other's indexes follow
(``index.follow``), and a change one made itself is applied once."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from bench.postgres import PgCluster
from index import CollectionStore, FaissBackends, Modality, NewItem
from tests.helpers import AppServer
from tests.stores import D, V, normalised


def ids(store: CollectionStore, name: str, k: int = 50) -> list[str]:
    (hits,) = store.search(name, Modality.TEXT, normalised(1, 9), k, model_version=V)
    return sorted(h.id for h in hits)


def texts(start: int, n: int) -> list[NewItem]:
    return [
        NewItem(f"t{i}", Modality.TEXT, {"i": i}, text=f"text {i}") for i in range(start, start + n)
    ]


def test_a_second_server_follows_what_the_first_writes(tmp_path: Path, pg: PgCluster) -> None:
    url = pg.database()
    a = CollectionStore(tmp_path / "a", backends=FaissBackends(use_gpu=False), database_url=url)
    b = CollectionStore(tmp_path / "b", backends=FaissBackends(use_gpu=False), database_url=url)
    try:
        a.create_collection("c", D, V)
        assert b.follow() and "c" in b.collections  # created elsewhere: opened
        a.upsert("c", texts(0, 10), normalised(10, 1), V)
        b.upsert("c", texts(10, 5), normalised(5, 2), V)  # its own write, applied once
        b.follow()
        a.follow()
        everything = [f"t{i}" for i in range(15)]
        assert ids(a, "c") == ids(b, "c") == sorted(everything)
        assert b.get_collection("c").counts[Modality.TEXT] == 15  # nothing twice
        # A delete and a replacement on one, seen by the other; a filter too.
        a.delete_item("c", "t3")
        a.upsert("c", [NewItem("t4", Modality.TEXT, {"i": 99}, text="new")], normalised(1, 3), V)
        b.follow()
        assert "t3" not in ids(b, "c") and b.get_collection("c").counts[Modality.TEXT] == 14
        (hits,) = b.search(
            "c", Modality.TEXT, normalised(1, 3), 1, model_version=V, where={"i": 99}
        )
        assert [h.id for h in hits] == ["t4"]
        assert not b.follow()  # level: nothing more to do
        # Dropped on one: gone from the other; created again: the new one opened.
        a.delete_collection("c")
        b.follow()
        assert "c" not in b.collections
        a.create_collection("c", D, V)
        a.upsert("c", texts(0, 2), normalised(2, 4), V)
        b.follow()
        assert ids(b, "c") == ["t0", "t1"]
    finally:
        a.close()
        b.close()


def test_a_write_to_one_server_is_searchable_on_the_other_within_a_second(
    tmp_path: Path, pg: PgCluster
) -> None:
    """Two servers on one catalogue, each with its own data dir and FAISS indexes: a
    collection created and texts written through one are found through the other within
    a moment (the follower wakes on the commit's notification), and a delete is gone there too."""
    url = pg.database()
    servers = [AppServer(tmp_path / n, database_url=url).start() for n in ("a", "b")]
    try:
        a, b = (httpx.Client(base_url=s.url, timeout=30) for s in servers)
        assert a.post("/v1/collections", json={"name": "shared"}).status_code == 201
        items = [{"id": f"d{i}", "text": f"document {i}"} for i in range(6)]
        assert a.post("/v1/collections/shared/texts", json={"items": items}).status_code == 200
        written = time.monotonic()
        query = {"text": "document 3", "target": "text", "k": 10}

        def found() -> list[str]:
            r = b.post("/v1/collections/shared/search", json=query)
            return [h["id"] for h in r.json()["results"]] if r.status_code == 200 else []

        while len(found()) < 6:
            assert time.monotonic() - written < 5, "the second server never saw the writes"
            time.sleep(0.05)
        assert time.monotonic() - written < 2
        assert a.delete("/v1/collections/shared/items/d3").status_code == 204
        deleted = time.monotonic()
        while "d3" in found():
            assert time.monotonic() - deleted < 5, "the delete never reached the second server"
            time.sleep(0.05)
        a.close()
        b.close()
    finally:
        for s in servers:
            s.stop()
