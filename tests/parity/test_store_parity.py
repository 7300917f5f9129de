"""One scenario, two vector backends: the same writes, replacements, deletes, filtered
searches with odd keys, deep pages, a restart and a move to another model version on
FAISS (in the process) and on Milvus Lite (embedded), and the answers compared at each
step. The answers themselves are checked against NumPy where they can be."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.postgres import PgCluster
from index import CollectionStore, FaissBackends, Migration, MilvusBackends, Modality
from index.types import StoredItem
from index.vectors.dumps import backend_key
from index.vectors.milvus_backend import collection_name
from tests.parity.test_milvus import ODD, odd_items
from tests.stores import D, V, items, normalised

V2 = "test-model@v2"


def open_store(root: Path, backend: str, url: str | None = None) -> CollectionStore:
    """A store on ``backend`` with its catalogue in SQLite, or at ``url`` (PostgreSQL)."""
    if backend == "milvus":
        return CollectionStore(
            root / "d", backends=MilvusBackends(str(root / "lite.db")), database_url=url
        )
    return CollectionStore(root / "d", backends=FaissBackends(use_gpu=False), database_url=url)


def answers(
    store: CollectionStore,
    target: Modality,
    xq: np.ndarray,
    k: int,
    where: dict[str, Any] | None = None,
    version: str = V,
) -> list[list[tuple[str, float]]]:
    hits = store.search("c", target, xq, k, model_version=version, where=where)
    return [[(h.id, round(h.score, 4)) for h in row] for row in hits]


def every_answer(store: CollectionStore, version: str = V) -> dict[str, Any]:
    """The same questions asked of one store: unfiltered and filtered searches of both
    modalities, a deep page, counts and a stored vector."""
    xq = normalised(3, 77)
    filters: list[dict[str, Any] | None] = [None, {"parity": True}, {"maybe": None}]
    filters += [{word or "empty": ODD[1]} for word in ODD] + [{"n": 5, "parity": False}]
    out: dict[str, Any] = {
        "texts": [answers(store, Modality.TEXT, xq, 10, w, version) for w in filters],
        "images": answers(store, Modality.IMAGE, xq, 10, {"parity": "odd"}, version),
        "deep": answers(store, Modality.TEXT, xq, 60, None, version),
        "counts": store.get_collection("c").counts,
    }
    modality, vector = store.item_vector("c", "t-11", version)
    out["vector"] = (modality, np.round(vector, 5).tolist())
    return out


def scenario(root: Path, backend: str, url: str | None = None) -> list[dict[str, Any]]:
    """Writes, replacements and deletes, answers after each phase, a restart, then a move
    of every collection to V2 (vectors turned by a fixed rotation)."""
    store = open_store(root, backend, url)
    steps = []
    try:
        store.create_collection("c", D, V)
        texts, images = odd_items(80), items(40)
        store.upsert("c", texts, normalised(80, 1), V)
        store.upsert("c", images, normalised(40, 2), V)
        steps.append(every_answer(store))
        store.upsert("c", texts[10:20], normalised(10, 3), V)  # replaced: new vectors
        for item_id in ("t-4", "t-12", "t-50", "img-3", "img-8"):
            store.delete_item("c", item_id)
        steps.append(every_answer(store))
    finally:
        store.close()
    store = open_store(root, backend, url)  # a clean restart: the same answers
    try:
        steps.append(every_answer(store))
        rotation = np.linalg.qr(np.random.default_rng(5).standard_normal((D, D)))[0]

        def reembed(stored: Sequence[StoredItem]) -> tuple[np.ndarray, list[None]]:
            xb = np.stack([it.embedding for it in stored])
            return (xb @ rotation).astype(np.float32), [None] * len(stored)

        move = Migration(store, V, V2, reembed, batch=16)
        while move.copy():
            pass
        store.delete_item("c", "t-70")  # written to the original mid-move
        move.commit()
        steps.append(every_answer(store, V2))
        if backend == "milvus":  # only the live collection's Milvus collections remain
            live = {collection_name(backend_key(store.get("c").uid, m)) for m in Modality}
            assert set(store.backends.client.list_collections()) == live
    finally:
        store.close()
    return steps


def test_both_backends_and_catalogues_answer_the_same_through_writes_deletes_restart_and_a_move(
    tmp_path: Path, pg: PgCluster
) -> None:
    faiss = scenario(tmp_path / "faiss", "faiss")
    milvus = scenario(tmp_path / "milvus", "milvus")
    assert len(faiss) == len(milvus) == 4
    for step, (a, b) in enumerate(zip(faiss, milvus, strict=True)):
        assert a == b, f"the backends differ after step {step}"
    # The catalogue on PostgreSQL, under each vector backend: the same answers again.
    for backend in ("faiss", "milvus"):
        on_pg = scenario(tmp_path / f"{backend}-pg", backend, pg.database())
        for step, (a, b) in enumerate(zip(faiss, on_pg, strict=True)):
            assert a == b, f"{backend} on PostgreSQL differs from SQLite after step {step}"
    # And the answers are right: the exact ranking, computed here, after the deletes.
    first, after = faiss[0], faiss[1]
    assert first["counts"] == {Modality.TEXT: 80, Modality.IMAGE: 40}
    assert after["counts"] == {Modality.TEXT: 77, Modality.IMAGE: 38}
    assert faiss[2] == after  # the restart changed nothing
    assert faiss[3]["counts"] == {Modality.TEXT: 76, Modality.IMAGE: 38}
    xb = normalised(80, 1)
    xb[10:20] = normalised(10, 3)
    alive = [i for i in range(80) if i not in (4, 12, 50)]
    xq = normalised(3, 77)
    exact = [
        [f"t-{alive[j]}" for j in np.argsort(-(xb[alive] @ q), kind="stable")[:60]] for q in xq
    ]
    assert [[i for i, _ in row] for row in after["deep"]] == exact
