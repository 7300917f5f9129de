"""The Milvus backend against Milvus Lite (the embedded Milvus, a local file): the same
answers as FAISS for the same items and filters, including keys and values that would
break out of a pasted expression; index specs; a lost connection caught up; collections
gone while the process was down dropped on start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index import (
    BackendUnavailable,
    CollectionStore,
    FaissBackends,
    InvalidIndexSpec,
    InvalidValue,
    MilvusBackends,
    Modality,
    NewItem,
)
from index.filter_tree import parse
from index.vectors.milvus_filters import filter_expression, literal
from index.vectors.milvus_specs import parse_spec
from tests.stores import D, V, die, normalised

# Keys and values that a pasted expression would choke on, or be steered by.
ODD = ['quo"te', "back\\slash", "new\nline", "it's", 'x"] or true or metadata["a', "ünï", ""]


def odd_items(n: int) -> list[NewItem]:
    out = []
    for i in range(n):
        meta: dict[str, Any] = {"n": i, "parity": i % 2 == 0, "ratio": i / 4}
        for j, word in enumerate(ODD):
            meta[word or "empty"] = ODD[(i + j) % len(ODD)]
        if i % 3 == 0:
            meta["maybe"] = None
        out.append(NewItem(f"t-{i}", Modality.TEXT, meta, text=f"text {i}"))
    return out


def open_pair(root: Path) -> tuple[CollectionStore, CollectionStore]:
    faiss = CollectionStore(root / "faiss", backends=FaissBackends(use_gpu=False))
    milvus = CollectionStore(root / "milvus", backends=MilvusBackends(str(root / "m" / "lite.db")))
    return faiss, milvus


def answers(store: CollectionStore, xq: np.ndarray, where: dict[str, Any] | None) -> list:
    hits = store.search("c", Modality.TEXT, xq, 10, model_version=V, where=where)
    return [[(h.id, round(h.score, 5)) for h in row] for row in hits]


def test_filtered_searches_answer_as_faiss_does(tmp_path: Path) -> None:
    faiss, milvus = open_pair(tmp_path)
    try:
        batch, xb = odd_items(60), normalised(60, 0)
        for s in (faiss, milvus):
            s.create_collection("c", D, V)
            s.upsert("c", batch, xb, V)
            s.delete_item("c", "t-4")
        xq = normalised(3, 1)
        filters: list[dict[str, Any] | None] = [None, {"parity": True}, {"ratio": 2.5}]
        filters += [{"maybe": None}, {"n": 7, "parity": False}, {"n": 7, "parity": True}]
        filters += [{word or "empty": ODD[0]} for word in ODD]
        filters += [{"missing": None}, {'quo"te': 'x"] or true or metadata["a'}]
        for where in filters:
            expected = answers(faiss, xq, where)
            assert answers(milvus, xq, where) == expected, where
        assert any(answers(milvus, xq, {"maybe": None})[0])
        assert answers(milvus, xq, {"missing": None}) == [[], [], []]
        assert milvus.get_collection("c").counts == {Modality.TEXT: 59, Modality.IMAGE: 0}
    finally:
        faiss.close()
        milvus.close()


def test_literals_cannot_leave_their_quotes() -> None:
    for value in ODD:
        text = literal(value)
        assert json.loads(text.replace("\\'", "'")) == value  # one literal, every quote escaped
    assert literal(True) == "true" and literal(-3) == "-3" and literal(0.25) == "0.25"
    assert filter_expression(parse({"a": None})) == 'json_contains(null_keys, "a")'


@pytest.mark.parametrize(
    ("spec", "normal"),
    [
        (None, "FLAT"),
        ("Flat", "FLAT"),
        ("hnsw", "HNSW:M=16,efConstruction=200"),
        ("HNSW:efConstruction=64,M=8", "HNSW:M=8,efConstruction=64"),
        ("IVF_SQ8:nlist=4", "IVF_SQ8:nlist=4"),
    ],
)
def test_specs_are_normalised(spec: str | None, normal: str) -> None:
    assert parse_spec(spec, D, server=False) == normal


def test_server_only_specs_are_refused_on_lite_and_taken_for_a_server() -> None:
    for spec in ("GPU_CAGRA", "IVF_PQ:m=4", "GPU_IVF_PQ:nlist=64,m=8"):
        with pytest.raises(InvalidIndexSpec, match="Milvus server"):
            parse_spec(spec, D, server=False)
    assert parse_spec("GPU_CAGRA", D, server=True) == (
        "GPU_CAGRA:intermediate_graph_degree=128,graph_degree=64"
    )
    assert parse_spec("IVF_PQ:m=4", D, server=True) == "IVF_PQ:nlist=128,m=4,nbits=8"
    with pytest.raises(InvalidIndexSpec, match="divide"):
        parse_spec("IVF_PQ:m=5", D, server=True)


def test_metadata_milvus_cannot_keep_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    s = CollectionStore(tmp_path / "d", backends=MilvusBackends(str(tmp_path / "lite.db")))
    try:
        s.create_collection("c", D, V)
        big = NewItem("big", Modality.TEXT, {"blob": "x" * 70_000}, text="t")
        with pytest.raises(InvalidValue, match="Milvus keeps at most"):
            s.upsert("c", [big], normalised(1, 0), V)
        assert s.get_collection("c").counts[Modality.TEXT] == 0
        assert s.existing("c", ["big"]) == {}
    finally:
        s.close()


def test_a_lost_connection_fails_the_write_which_is_caught_up_later(tmp_path: Path) -> None:
    backends = MilvusBackends(str(tmp_path / "lite.db"))
    s = CollectionStore(tmp_path / "d", backends=backends)
    try:
        s.create_collection("c", D, V)
        batch, xb = odd_items(30), normalised(30, 0)
        s.upsert("c", batch[:10], xb[:10], V)
        backends.client.close()  # the connection goes: the next write cannot reach Milvus
        with pytest.raises(BackendUnavailable):
            s.upsert("c", batch[10:20], xb[10:20], V)
        assert set(s.existing("c", ["t-15"])) == {"t-15"}  # durable in SQLite all the same
        backends._client = None  # the connection comes back
        s.upsert("c", batch[20:], xb[20:], V)  # catches up the batch Milvus missed
        s.delete_item("c", "t-0")
        assert s.get_collection("c").counts[Modality.TEXT] == 29
        hits = s.search("c", Modality.TEXT, xb[15:16], 1, model_version=V)
        assert hits[0][0].id == "t-15"
    finally:
        s.close()


def test_restart_after_a_crash_and_a_collection_deleted_meanwhile(tmp_path: Path) -> None:
    lite = str(tmp_path / "lite.db")
    s = CollectionStore(tmp_path / "d", backends=MilvusBackends(lite))
    s.create_collection("keep", D, V)
    s.create_collection("gone", D, V)
    batch, xb = odd_items(20), normalised(20, 0)
    s.upsert("keep", batch, xb, V)
    s.upsert("gone", batch, xb, V)
    s.dump()
    s.delete_item("keep", "t-3")  # after the snapshot: only SQLite's tombstone knows
    gone_uid = s.get("gone").uid
    with s.db.transaction() as conn:  # a delete that died before it reached Milvus
        conn.execute("DELETE FROM items WHERE collection = 'gone'")
        conn.execute("DELETE FROM collections WHERE name = 'gone'")
    s.backends.close()
    die(s)

    backends = MilvusBackends(lite)
    s = CollectionStore(tmp_path / "d", backends=backends)
    try:
        assert [c.name for c in s.list_collections()] == ["keep"]
        assert s.get_collection("keep").counts[Modality.TEXT] == 19
        names = backends.client.list_collections()
        assert not [n for n in names if gone_uid in n]
        hits = s.search("keep", Modality.TEXT, xb[3:4], 20, model_version=V)
        assert "t-3" not in [h.id for h in hits[0]] and len(hits[0]) == 19
    finally:
        s.close()
