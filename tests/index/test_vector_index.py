from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from index import DimensionMismatch, FaissIndex, InvalidIndexSpec
from index.vectors.faiss_backend import SMALL_QUERY_BATCH
from tests.stores import unit_vectors

D = 32


def normalised(n: int, seed: int) -> np.ndarray:
    return unit_vectors(n, D, seed)


def brute_force(
    xq: np.ndarray, xb: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    scores = xq @ xb.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return labels[order], np.take_along_axis(scores, order, axis=1)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xb = normalised(3000, 0)
    xq = normalised(20, 1)
    labels = np.arange(1000, 4000, dtype=np.int64)
    return xb, xq, labels


def test_flat_matches_numpy_brute_force(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    xb, xq, labels = data
    index = FaissIndex(D)
    index.add(labels, xb)
    results = index.search(xq, 10)
    I, Dist = brute_force(xq, xb, labels, 10)
    for r, i_row, d_row in zip(results, I, Dist, strict=True):
        np.testing.assert_array_equal(r.labels, i_row)
        np.testing.assert_allclose(r.scores, d_row, rtol=1e-5, atol=1e-5)


def test_a_few_queries_search_on_one_thread_and_many_on_all_with_the_same_answers(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """In a thread of its own, as the server's search workers are: the OpenMP setting is
    per thread. One query and a batch of SMALL_QUERY_BATCH give the same, exact answers."""
    xb, xq, labels = data
    index = FaissIndex(D)
    index.add(labels, xb)
    default = faiss.omp_get_max_threads()
    seen: dict[str, object] = {}

    def work() -> None:
        one = index.search(xq[:1], 10)[0]
        seen["after one"] = faiss.omp_get_max_threads()
        many = index.search(np.tile(xq, (SMALL_QUERY_BATCH // len(xq) + 1, 1)), 10)
        seen["after many"] = faiss.omp_get_max_threads()
        seen["same"] = np.array_equal(one.labels, many[0].labels)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == {"after one": 1, "after many": default, "same": True}
    assert faiss.omp_get_max_threads() == default  # this thread's setting untouched


def test_allowed_labels_restrict_results_exactly(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    xb, xq, labels = data
    index = FaissIndex(D)
    index.add(labels, xb)
    keep = np.arange(0, 3000, 7)
    results = index.search(xq, 5, allowed=labels[keep])
    I, _ = brute_force(xq, xb[keep], labels[keep], 5)
    for r, i_row in zip(results, I, strict=True):
        np.testing.assert_array_equal(r.labels, i_row)
    assert all(
        len(r.labels) == 0 for r in index.search(xq, 5, allowed=np.array([], dtype=np.int64))
    )


def test_removed_labels_never_come_back(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    xb, xq, labels = data
    index = FaissIndex(D)
    index.add(labels, xb)
    top = index.search(xq[:1], 3)[0].labels
    index.remove(top[:2])
    after = index.search(xq[:1], 3)[0].labels
    assert not set(top[:2]) & set(after)
    assert after[0] == top[2]
    assert index.ntotal == 2998


@pytest.mark.parametrize(
    "spec", ["Flat", "SQ8", "HNSW16", "IVF16,Flat", "IVF16,SQ8", "IVF16,PQ8x4", "PCA32,IVF16,Flat"]
)
def test_after_removals_every_label_still_finds_its_own_vector(spec: str) -> None:
    """Removing labels must not move any other label onto another vector."""
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((1200, D)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    labels = np.arange(1, 1201, dtype=np.int64)
    index = FaissIndex.build(D, spec, labels, xb)
    assert index.trained
    gone = labels[::7]
    index.remove(gone)
    kept = np.setdiff1d(labels, gone)
    assert index.ntotal == len(kept)
    found = index.search(xb[kept - 1], 50)
    top = np.array([r.labels[0] for r in found])
    assert not np.isin(top, gone).any()
    # Approximate codes may rank a neighbour first now and then; never a shifted label.
    assert np.mean(top == kept) > (0.999 if "PQ" not in spec else 0.9), spec


def test_k_larger_than_the_index_returns_everything(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    xb, xq, labels = data
    index = FaissIndex(D)
    index.add(labels[:5], xb[:5])
    assert len(index.search(xq[:1], 100)[0].labels) == 5
    assert [len(r.labels) for r in FaissIndex(D).search(xq[:2], 3)] == [0, 0]


def test_ivf_searches_exactly_until_trained_then_trains(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    xb, xq, labels = data
    index = FaissIndex(D, "IVF16,Flat", nprobe=16)
    assert index.train_size >= 16 * 39  # FAISS's rule of thumb: 39 points per centroid
    n = index.train_size - 1
    index.add(labels[:n], xb[:n])
    assert not index.trained and not index.needs_training()
    I, _ = brute_force(xq, xb[:n], labels[:n], 10)
    for r, i_row in zip(index.search(xq, 10), I, strict=True):
        np.testing.assert_array_equal(r.labels, i_row)  # exact before training
    index.add(labels[n:], xb[n:])
    assert index.needs_training()
    index.install_trained(index.train_template(index.training_sample()))
    assert index.trained and index.ntotal == len(labels)
    I, _ = brute_force(xq, xb, labels, 10)
    for r, i_row in zip(index.search(xq, 10), I, strict=True):
        np.testing.assert_array_equal(r.labels, i_row)  # nprobe = nlist: still exact


def test_hnsw_deletes_softly_and_asks_for_compaction(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    xb, xq, labels = data
    index = FaissIndex(D, "HNSW16")
    index.add(labels, xb)
    assert not index.can_remove
    top = index.search(xq[:1], 5)[0].labels
    index.remove(top[:1])
    assert top[0] not in index.search(xq[:1], 5)[0].labels
    assert len(index.search(xq[:1], 5)[0].labels) == 5
    assert index.ntotal == len(labels) - 1
    assert not index.needs_compaction()
    index.remove(labels[:1500])
    assert index.needs_compaction()


@pytest.mark.parametrize("spec", ["Flat", "HNSW16", "IVF16,Flat", "IVF16,PQ8"])
def test_snapshot_round_trip_gives_identical_results(
    spec: str, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    xb, xq, labels = data
    index = FaissIndex.build(D, spec, labels, xb)
    index.remove(labels[:3])
    blob = index.to_bytes({"label_mark": 7})
    restored, meta = FaissIndex.from_bytes(blob)
    assert meta["label_mark"] == 7 and restored.spec == spec and restored.trained == index.trained
    for a, b in zip(index.search(xq, 10), restored.search(xq, 10), strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_bad_specs_and_shapes_are_refused() -> None:
    with pytest.raises(InvalidIndexSpec):
        FaissIndex(D, "NoSuchIndex42")
    with pytest.raises(InvalidIndexSpec):
        FaissIndex(D, "IDMap,Flat")
    with pytest.raises(InvalidIndexSpec):
        FaissIndex(D, "PQ7")  # 32 is not divisible by 7
    index = FaissIndex(D)
    with pytest.raises(DimensionMismatch):
        index.add(np.arange(2), np.zeros((2, D + 1), np.float32))
    with pytest.raises(DimensionMismatch):
        index.search(np.zeros((1, D - 1), np.float32), 3)
