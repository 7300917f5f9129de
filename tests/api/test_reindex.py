"""Re-indexing without re-embedding, and index advice: measured against exact search on
the collection's own vectors; the switch keeps every write made while the new index was
built; the spec and its report survive a restart; a collection can be switched back."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from index import CollectionStore, FaissBackends, Modality, NewItem
from index.vectors.reindex import build_new_index, switch_index
from tests.calls import add_texts, assert_error, search, wait_for_job
from tests.corpus import BIG
from tests.helpers import AppServer, xmodal
from tests.stores import D, V, normalised


def test_a_switch_keeps_the_writes_made_while_the_index_was_built(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path / "data", backends=FaissBackends(use_gpu=False))
    try:
        store.create_collection("c", D, V)
        xb = normalised(1200, 0)
        items = [NewItem(f"t{i}", Modality.TEXT, {"n": i}, text=f"t{i}") for i in range(1200)]
        store.upsert("c", items[:1000], xb[:1000], V)
        uid = store.get("c").uid
        built = build_new_index(store, "c", "IVF16,Flat")
        # Meanwhile: new items, deletes, a replacement, and a snapshot that prunes tombstones.
        store.upsert("c", items[1000:], xb[1000:], V)
        for i in (3, 500, 999, 1100):
            store.delete_item("c", f"t{i}")
        store.upsert("c", [items[7]], xb[8:9], V)  # t7 now holds t8's vector
        store.dump()
        switch_index(store, "c", uid, "IVF16,Flat", built, {"index": "IVF16,Flat"})
        c = store.get("c")
        assert c.spec == "IVF16,Flat" and c.sides[Modality.TEXT].index.trained
        assert store.get_collection("c").counts[Modality.TEXT] == 1196
        for row in (1100, 3, 1150, 8):
            hits = store.search("c", Modality.TEXT, xb[row : row + 1], 2, model_version=V)
            ids = [h.id for h in hits[0]]
            if row in (1100, 3):
                assert f"t{row}" not in ids
            elif row == 8:
                assert set(ids) == {"t7", "t8"}
            else:
                assert ids[0] == f"t{row}"
        store.close()
        store = CollectionStore(tmp_path / "data", backends=FaissBackends(use_gpu=False))
        info = store.get_collection("c")
        assert info.index_spec == "IVF16,Flat" and info.index_report == {"index": "IVF16,Flat"}
        assert info.counts[Modality.TEXT] == 1196
    finally:
        store.close()


@pytest.fixture
def texts(client: httpx.Client, collection: str) -> str:
    add_texts(client, collection, BIG)
    return collection


def answers(client: httpx.Client, name: str) -> list[list[tuple[str, float]]]:
    """Ids and scores (to 5 places: Flat scores come from FAISS, re-ranked ones from
    NumPy) of a few text searches."""
    out = []
    for q in ["river stone", "blue bird 40", "red house", "sun 7", "a quiet lake"]:
        hits = search(client, name, text=q, target="text", k=10)["results"]
        out.append([(h["id"], round(h["score"], 5)) for h in hits])
    return out


@pytest.mark.both_backends
def test_reindex_measures_switches_and_switches_back(
    client: httpx.Client, texts: str, backend: str
) -> None:
    r = client.post(f"/v1/collections/{texts}/jobs/reindex", json={"index": "HNSW16"})
    if backend == "milvus":  # the index type is chosen when a Milvus collection is created
        assert "FAISS" in assert_error(r, 400, "invalid_index")["error"]["message"]
        return
    before = answers(client, texts)
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"], timeout=120)
    assert job["state"] == "succeeded", job
    report = job["detail"]["report"]["text"]
    assert report["spec"] == "HNSW16" and report["vectors"] == len(BIG)
    assert 0.9 <= report["recall_at_10"] <= 1 and report["raw_recall_at_10"] <= 1
    assert report["bytes_per_vector"] > 4 * 64  # float vectors plus the graph
    info = client.get(f"/v1/collections/{texts}").json()
    assert info["index"] == "HNSW16" and info["index_report"]["previous_index"] == "Flat"
    assert info["index_report"]["modalities"]["text"] == report
    after = answers(client, texts)
    # Re-ranked exactly: the same hits and scores wherever HNSW found the exact top 10.
    same = sum(a == b for a, b in zip(after, before, strict=True))
    assert same >= len(before) - 1, (same, report)

    r = client.post(f"/v1/collections/{texts}/jobs/reindex", json={"index": "Flat"})
    assert wait_for_job(client, r.json()["id"], timeout=120)["state"] == "succeeded"
    info = client.get(f"/v1/collections/{texts}").json()
    assert info["index"] == "Flat" and info["index_report"]["previous_index"] == "HNSW16"
    assert info["index_report"]["modalities"]["text"]["recall_at_10"] == 1.0
    assert answers(client, texts) == before


def test_bad_reindex_requests_fail_before_a_job(client: httpx.Client, collection: str) -> None:
    for spec in ("HNSW1", "IVF100000000,Flat", "LSH"):
        r = client.post(f"/v1/collections/{collection}/jobs/reindex", json={"index": spec})
        assert_error(r, 400, "invalid_index")
    r = client.post("/v1/collections/no-such/jobs/reindex", json={"index": "Flat"})
    assert_error(r, 404, "collection_not_found")


@pytest.mark.both_backends
def test_index_advice_measures_a_ladder_and_picks_the_smallest_that_meets_the_target(
    client: httpx.Client, texts: str, backend: str
) -> None:
    url = f"/v1/collections/{texts}/index-advice"
    r = client.post(url, json={"targets": {"recall_at_10": 0.9}, "sample": 1000})
    if backend == "milvus":
        assert_error(r, 400, "invalid_index")
        return
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["modality"] == "text" and answer["sample"] == 1000
    rows = {row["spec"]: row for row in answer["rows"]}
    assert {"Flat", "SQfp16", "SQ8", "HNSW32"} <= set(rows)
    assert rows["Flat"]["recall_at_10"] == 1.0 and rows["Flat"]["bytes_per_vector"] >= 4 * 64
    assert rows["SQ8"]["bytes_per_vector"] < rows["SQfp16"]["bytes_per_vector"]
    passing = [s for s, row in rows.items() if row["recall_at_10"] >= 0.9]
    smallest = min(passing, key=lambda s: (rows[s]["bytes_per_vector"], rows[s]["p50_ms"]))
    assert answer["choice"] == smallest
    r = client.post(url, json={"targets": {"p50_ms": 1e-9}, "specs": ["Flat", "HNSW8"]})
    assert r.status_code == 200 and r.json()["choice"] is None
    assert [row["spec"] for row in r.json()["rows"]] == ["Flat", "HNSW8"]
    for bad in ({"targets": {"recall_at_10": 1.5}}, {"targets": {"speed": 1}}, {"sample": 5}):
        assert_error(client.post(url, json=bad), 422)
    assert_error(client.post(url, json={"specs": ["HNSW1"]}), 400, "invalid_index")


@pytest.mark.both_backends
def test_the_cli_reindexes_and_advises_in_process_and_against_a_server(
    tmp_path: Path, client: httpx.Client, server: AppServer, backend: str
) -> None:
    data = tmp_path / "data"
    store = CollectionStore(data, backends=FaissBackends(use_gpu=False))
    store.create_collection("c", 64, "xmodal-tiny@random-seed0")
    xb = np.random.default_rng(0).standard_normal((600, 64)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    items = [NewItem(f"t{i}", Modality.TEXT, {}, text=f"t{i}") for i in range(600)]
    store.upsert("c", items, xb, "xmodal-tiny@random-seed0")
    store.close()
    run = xmodal("reindex", "c", "HNSW16", data_dir=data)
    assert run.returncode == 0, run.stderr
    assert "c now uses HNSW16" in run.stderr and run.stdout.startswith("modality\trecall_at_1")
    assert run.stdout.splitlines()[1].startswith("text\t")
    run = xmodal("index-advice", "c", "--sample", "300", "--recall-at-10", "0.99", data_dir=data)
    assert run.returncode == 0, run.stderr
    table = [line.split("\t") for line in run.stdout.splitlines()]
    assert table[0][0] == "spec" and {"Flat", "SQ8", "HNSW32"} <= {row[0] for row in table[1:]}
    assert "smallest meeting recall_at_10 0.99 on 300 texts:" in run.stderr
    assert xmodal("index-advice", "c", "--sample", "5", data_dir=data).returncode == 2
    store = CollectionStore(data, backends=FaissBackends(use_gpu=False))
    assert store.get_collection("c").index_spec == "HNSW16"
    store.close()
    # Against a server: the same commands over HTTP.
    client.delete("/v1/collections/cli-rx")
    client.post("/v1/collections", json={"name": "cli-rx"})
    add_texts(client, "cli-rx", dict(list(BIG.items())[:200]))
    remote = xmodal("reindex", "cli-rx", "SQ8", "--server", server.url, data_dir=data)
    if backend == "milvus":
        assert remote.returncode == 1 and "FAISS" in remote.stderr
        return
    assert remote.returncode == 0, remote.stderr
    assert client.get("/v1/collections/cli-rx").json()["index"] == "SQ8"
    advice = xmodal(
        "index-advice", "cli-rx", "--sample", "150", "--server", server.url, data_dir=data
    )
    assert advice.returncode in (0, 1) and advice.stdout.startswith("spec\t"), advice.stderr
