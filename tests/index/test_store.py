from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index import (
    CollectionExists,
    CollectionStore,
    DimensionMismatch,
    FaissBackends,
    InvalidFilter,
    InvalidIndexSpec,
    JobFinished,
    JobNotCancellable,
    JobState,
    JobStore,
    Modality,
    ModelMismatch,
    NewItem,
    Progress,
    UnknownCollection,
    UnknownItem,
)
from index.catalogue.jobs import MAX_STARTS
from index.values import InvalidValue
from tests.stores import CPU, D, V, die, items, normalised, top_ids


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CollectionStore]:
    s = CollectionStore(tmp_path / "data", backends=CPU)
    yield s
    s.close()


def test_search_returns_nearest_items_of_the_target_modality(store: CollectionStore) -> None:
    store.create_collection("c", D, V)
    xb_img, xb_txt = normalised(100, 0), normalised(100, 1)
    store.upsert("c", items(100, Modality.IMAGE), xb_img, V)
    store.upsert("c", items(100, Modality.TEXT), xb_txt, V)
    xq = normalised(3, 2)
    want = np.argsort(-(xq @ xb_img.T), axis=1)[:, :5]
    assert top_ids(store, "c", Modality.IMAGE, xq) == [[f"img-{i}" for i in row] for row in want]
    want = np.argsort(-(xq @ xb_txt.T), axis=1)[:, :5]
    assert top_ids(store, "c", Modality.TEXT, xq) == [[f"txt-{i}" for i in row] for row in want]
    hit = store.search("c", Modality.TEXT, xb_txt[7:8], 1, model_version=V)[0][0]
    assert hit.id == "txt-7" and hit.text == "caption 7" and hit.metadata["n"] == 7
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    info = store.get_collection("c")
    assert info.counts == {Modality.IMAGE: 100, Modality.TEXT: 100}


def test_filters_match_metadata_values(store: CollectionStore) -> None:
    store.create_collection("c", D, V)
    xb = normalised(100, 0)
    store.upsert("c", items(100), xb, V)
    xq = normalised(1, 5)
    for where, ok in [
        ({"parity": "odd"}, lambda i: i % 2 == 1),
        ({"n": 42}, lambda i: i == 42),
        ({"big": True}, lambda i: i >= 50),
        ({"parity": "even", "big": False}, lambda i: i % 2 == 0 and i < 50),
    ]:
        keep = np.array([i for i in range(100) if ok(i)])
        want = keep[np.argsort(-(xq @ xb[keep].T)[0])[:5]]
        assert top_ids(store, "c", Modality.IMAGE, xq, where=where) == [[f"img-{i}" for i in want]]
    assert top_ids(store, "c", Modality.IMAGE, xq, where={"parity": "none"}) == [[]]
    with pytest.raises(InvalidFilter):
        store.search("c", Modality.IMAGE, xq, 5, model_version=V, where={"n": [1, 2]})


def test_adding_an_existing_id_replaces_it_even_across_modalities(store: CollectionStore) -> None:
    store.create_collection("c", D, V)
    xb = normalised(10, 0)
    store.upsert("c", items(10), xb, V)
    new = normalised(1, 9)
    store.upsert("c", [NewItem("img-3", Modality.TEXT, {"v": 2}, text="now a caption")], new, V)
    assert store.get_item("c", "img-3").modality is Modality.TEXT
    assert "img-3" not in top_ids(store, "c", Modality.IMAGE, xb[3:4], k=10)[0]
    assert top_ids(store, "c", Modality.TEXT, new, k=1) == [["img-3"]]
    assert store.get_collection("c").counts == {Modality.IMAGE: 9, Modality.TEXT: 1}


def test_delete_removes_from_search_at_once_and_frees_the_image(store: CollectionStore) -> None:
    store.create_collection("c", D, V)
    xb = normalised(10, 0)
    store.upsert("c", items(10), xb, V)
    digest = store.get_item("c", "img-4").content_sha256
    assert digest and store.blobs.exists(digest)
    store.delete_item("c", "img-4")
    assert "img-4" not in top_ids(store, "c", Modality.IMAGE, xb[4:5], k=10)[0]
    with pytest.raises(UnknownItem):
        store.get_item("c", "img-4")
    with pytest.raises(UnknownItem):
        store.delete_item("c", "img-4")
    assert not store.blobs.exists(digest)


def test_shared_image_bytes_stay_while_any_item_uses_them(store: CollectionStore) -> None:
    store.create_collection("c", D, V)
    same = [
        NewItem(f"dup-{i}", Modality.IMAGE, {}, content=b"same bytes", media_type="image/png")
        for i in range(2)
    ]
    store.upsert("c", same, normalised(2, 0), V)
    digest = store.get_item("c", "dup-0").content_sha256
    assert digest
    store.delete_item("c", "dup-0")
    assert store.get_item_content("c", "dup-1")[:2] == (b"same bytes", "image/png")
    store.delete_item("c", "dup-1")
    assert not store.blobs.exists(digest)


def test_reopening_after_a_clean_close_gives_the_same_results(tmp_path: Path) -> None:
    xb, xq = normalised(300, 0), normalised(4, 1)
    s = CollectionStore(tmp_path, backends=CPU)
    s.create_collection("c", D, V)
    s.upsert("c", items(300), xb, V)
    s.delete_item("c", "img-0")
    before = top_ids(s, "c", Modality.IMAGE, xq, k=10)
    s.close()
    assert (tmp_path / "indexes" / "c" / "image.xmidx").exists()
    s = CollectionStore(tmp_path, backends=CPU)
    assert top_ids(s, "c", Modality.IMAGE, xq, k=10) == before
    s.close()


def test_without_a_final_dump_the_index_is_caught_up_from_sqlite(tmp_path: Path) -> None:
    """Snapshot, keep writing (adds, replaces, deletes), then 'crash' (no close): reopening
    loads the snapshot and applies everything written after it."""
    xb, xq = normalised(400, 0), normalised(4, 1)
    s = CollectionStore(tmp_path, backends=CPU)
    s.create_collection("c", D, V)
    s.upsert("c", items(200), xb[:200], V)
    s.dump()
    s.upsert("c", items(200, start=200), xb[200:], V)
    s.delete_item("c", "img-5")
    s.upsert("c", [NewItem("img-6", Modality.IMAGE, {}, content=b"x")], normalised(1, 77), V)
    before = top_ids(s, "c", Modality.IMAGE, xq, k=20)
    counts = s.get_collection("c").counts
    # No close(): the process "dies" with the snapshot behind the database.
    die(s)
    s2 = CollectionStore(tmp_path, backends=CPU)
    assert top_ids(s2, "c", Modality.IMAGE, xq, k=20) == before
    assert s2.get_collection("c").counts == counts
    s2.close()


def test_unreadable_snapshot_is_rebuilt_from_sqlite(tmp_path: Path) -> None:
    xb, xq = normalised(50, 0), normalised(2, 1)
    s = CollectionStore(tmp_path, backends=CPU)
    s.create_collection("c", D, V)
    s.upsert("c", items(50), xb, V)
    before = top_ids(s, "c", Modality.IMAGE, xq)
    s.close()
    (tmp_path / "indexes" / "c" / "image.xmidx").write_bytes(b"garbage")
    s = CollectionStore(tmp_path, backends=CPU)
    assert top_ids(s, "c", Modality.IMAGE, xq) == before
    s.close()


def test_trainable_spec_trains_in_the_background_and_keeps_answering(tmp_path: Path) -> None:
    s = CollectionStore(tmp_path, backends=FaissBackends(use_gpu=False, nprobe=8))
    s.create_collection("ivf", D, V, "IVF8,Flat")
    xb, xq = normalised(1200, 0), normalised(3, 1)
    s.upsert("ivf", items(600), xb[:600], V)
    assert s.get_collection("ivf").trained[Modality.IMAGE] is False
    s.upsert("ivf", items(600, start=600), xb[600:], V)
    s.wait_idle()
    assert s.get_collection("ivf").trained[Modality.IMAGE] is True
    want = np.argsort(-(xq @ xb.T), axis=1)[:, :5]
    assert top_ids(s, "ivf", Modality.IMAGE, xq) == [[f"img-{i}" for i in row] for row in want]
    s.close()
    s = CollectionStore(tmp_path, backends=FaissBackends(use_gpu=False, nprobe=8))
    assert s.get_collection("ivf").trained[Modality.IMAGE] is True
    assert top_ids(s, "ivf", Modality.IMAGE, xq) == [[f"img-{i}" for i in row] for row in want]
    s.close()


def test_collection_lifecycle_and_errors(store: CollectionStore) -> None:
    store.create_collection("c", D, V)
    with pytest.raises(CollectionExists):
        store.create_collection("c", D, V)
    with pytest.raises(InvalidIndexSpec):
        store.create_collection("bad", D, V, "IVF-nonsense")
    with pytest.raises(ValueError):
        store.create_collection("../escape", D, V)
    with pytest.raises(DimensionMismatch):
        store.upsert("c", items(2), np.zeros((2, D + 1), np.float32), V)
    with pytest.raises(ModelMismatch):
        store.upsert("c", items(2), normalised(2, 0), "another-model")
    with pytest.raises(ModelMismatch):
        store.search("c", Modality.IMAGE, normalised(1, 0), 3, model_version="another-model")
    store.upsert("c", items(3), normalised(3, 0), V)
    store.dump()
    assert [c.name for c in store.list_collections()] == ["c"]
    digest = store.get_item("c", "img-1").content_sha256
    store.delete_collection("c")
    assert digest and not store.blobs.exists(digest)
    assert not (store.index_dir / "c").exists()
    for call in (
        lambda: store.get_collection("c"),
        lambda: store.delete_collection("c"),
        lambda: store.search("c", Modality.IMAGE, normalised(1, 0), 3, model_version=V),
    ):
        with pytest.raises(UnknownCollection):
            call()
    # A new collection of the same name starts empty.
    store.create_collection("c", D, V)
    assert store.get_collection("c").counts == {Modality.IMAGE: 0, Modality.TEXT: 0}


def test_images_are_not_kept_when_storage_is_off(tmp_path: Path) -> None:
    s = CollectionStore(tmp_path, backends=CPU, store_images=False)
    s.create_collection("c", D, V)
    s.upsert("c", items(2), normalised(2, 0), V)
    with pytest.raises(UnknownItem, match="no stored image"):
        s.get_item_content("c", "img-0")
    assert not any(p.is_file() for p in (tmp_path / "blobs").rglob("*"))
    s.close()


def test_soft_deleted_vectors_are_compacted_away(tmp_path: Path) -> None:
    """HNSW cannot remove vectors: replacing 1,200 items leaves 1,200 soft deletes, which
    triggers a background rebuild that drops them, while answers stay correct."""
    s = CollectionStore(tmp_path, backends=CPU)
    s.create_collection("h", D, V, "HNSW16")
    old, new = normalised(1200, 0), normalised(1200, 1)
    s.upsert("h", items(1200), old, V)
    s.upsert("h", items(1200), new, V)  # same ids: every old vector becomes a tombstone
    s.wait_idle()
    side = s.collections["h"].sides[Modality.IMAGE]
    assert not side.index.soft_deleted and side.index.ntotal == 1200
    hits = s.search("h", Modality.IMAGE, new[:20], 1, model_version=V)
    assert sum(h[0].id == f"img-{i}" for i, h in enumerate(hits)) >= 19  # HNSW is approximate
    s.close()
    s = CollectionStore(tmp_path, backends=CPU)
    assert s.get_collection("h").counts[Modality.IMAGE] == 1200
    s.close()


def test_a_chunk_whose_job_was_cancelled_meanwhile_is_not_stored(store: CollectionStore) -> None:
    """A job's progress is committed with its chunk; once the cancel is acknowledged no
    chunk of that job lands, so what the cancelled job says it did is what is stored."""
    jobs = JobStore(store.db)
    store.create_collection("c", D, V)
    job = jobs.create("index", "c", {})
    assert jobs.start(job.id)
    first = jobs.recorder(job.id, Progress(cursor=4, done=4))
    store.upsert("c", items(4, Modality.TEXT), normalised(4, 0), V, extra=first)
    jobs.cancel(job.id)
    late = jobs.recorder(job.id, Progress(cursor=8, done=4))
    with pytest.raises(JobFinished):
        store.upsert("c", items(4, Modality.TEXT, start=4), normalised(4, 1), V, extra=late)
    assert jobs.get(job.id).done == 4
    assert store.get_collection("c").counts == {Modality.IMAGE: 0, Modality.TEXT: 4}
    hits = top_ids(store, "c", Modality.TEXT, normalised(4, 1), k=8)
    assert all(h in {f"txt-{i}" for i in range(4)} for row in hits for h in row)


def test_a_job_past_its_point_of_no_return_stays_past_it(store: CollectionStore) -> None:
    jobs = JobStore(store.db)
    switching = jobs.create("reindex", None, {})
    assert jobs.start(switching.id)
    assert jobs.pass_point_of_no_return(switching.id, {"phase": "switching"})
    jobs.report(switching.id, {"phase": "done"})  # the report after the switch keeps the mark
    with pytest.raises(JobNotCancellable):
        jobs.cancel(switching.id)
    cancelled = jobs.create("reindex", None, {})
    assert jobs.start(cancelled.id)
    jobs.cancel(cancelled.id)
    assert not jobs.pass_point_of_no_return(cancelled.id, {"phase": "switching"})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_vector_refuses_the_whole_write(store: CollectionStore, bad: float) -> None:
    """What a diverged model or a broken version gives never reaches an index: every search
    would answer NaN."""
    store.create_collection("c", D, V)
    xb = normalised(4, seed=1)
    xb[2, 0] = bad
    with pytest.raises(InvalidValue, match="'img-2' is not finite"):
        store.upsert("c", items(4), xb, V)
    raw = [NewItem("r", Modality.TEXT, text="t", raw_embedding=np.full(D, bad, np.float32))]
    with pytest.raises(InvalidValue, match="not finite"):
        store.upsert("c", raw, normalised(1, seed=2), V)
    assert store.get_collection("c").counts == {"image": 0, "text": 0}


def test_a_job_the_server_died_under_again_and_again_fails_instead_of_starting(
    store: CollectionStore,
) -> None:
    """A job that takes the server down (out of memory) would otherwise be restarted at
    every start, forever; one that gets further between deaths, or is stopped cleanly,
    keeps being resumed."""
    jobs = JobStore(store.db)
    store.create_collection("c", D, V)
    dying = jobs.create("finetune", None, {})
    for _ in range(MAX_STARTS):  # each start, then the process dies before it ends
        assert jobs.start(dying.id)
    assert not jobs.start(dying.id)
    failed = jobs.get(dying.id)
    assert failed.state is JobState.FAILED and failed.finished_at is not None
    assert f"stopped {MAX_STARTS} times" in (failed.message or "")
    assert "out of memory" in (failed.message or "")
    # An index job whose resume point moves between deaths, and one stopped cleanly.
    moving = jobs.create("index", "c", {})
    stopping = jobs.create("index", "c", {})
    for life in range(2 * MAX_STARTS):
        assert jobs.start(moving.id) and jobs.start(stopping.id)
        jobs.advance(moving.id, Progress(cursor=10 * (life + 1), done=10))
        jobs.stopped(stopping.id)
    assert jobs.get(moving.id).starts == 0 and jobs.get(stopping.id).starts == 0
    assert jobs.get(moving.id).state is JobState.RUNNING
