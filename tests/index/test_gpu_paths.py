"""The GPU code paths of the vector index.

On a machine whose FAISS reports a GPU the `gpu` tests run for real. Elsewhere the parts
of those paths that do not need a device (no selectors, soft deletes, over-fetch and
filter) are driven on a CPU index by telling it to behave as if it were on the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from index import FaissIndex, gpu_count
from index.vectors.faiss_backend import new_gpu_resources
from tests.stores import unit_vectors

D = 32


def normalised(n: int, seed: int) -> np.ndarray:
    return unit_vectors(n, D, seed)


def exact(xq: np.ndarray, xb: np.ndarray, labels: np.ndarray, k: int) -> list[list[int]]:
    order = np.argsort(-(xq @ xb.T), axis=1)[:, :k]
    return [[int(x) for x in labels[row]] for row in order]


def as_if_on_gpu(index: FaissIndex) -> FaissIndex:
    index._gpu = True  # the search/remove logic only asks `on_gpu`
    return index


def test_gpu_style_soft_deletes_are_filtered_out() -> None:
    xb, xq = normalised(500, 0), normalised(5, 1)
    labels = np.arange(500, dtype=np.int64)
    index = as_if_on_gpu(FaissIndex.build(D, "Flat", labels, xb))
    assert not index.can_remove
    gone = np.array(exact(xq[:1], xb, labels, 3)[0])
    index.remove(gone)
    keep = np.setdiff1d(labels, gone)
    assert [list(r.labels) for r in index.search(xq, 10)] == exact(xq, xb[keep], keep, 10)
    assert index.ntotal == 497


def test_gpu_style_filter_overfetches_and_stays_exact() -> None:
    xb, xq = normalised(800, 0), normalised(5, 1)
    labels = np.arange(800, dtype=np.int64)
    index = as_if_on_gpu(FaissIndex.build(D, "Flat", labels, xb))
    allowed = labels[::13]
    got = [list(r.labels) for r in index.search(xq, 5, allowed=allowed)]
    assert got == exact(xq, xb[allowed], allowed, 5)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["Flat", "IVF64,PQ16"])
def test_index_served_from_the_gpu_matches_the_cpu(spec: str) -> None:
    if gpu_count() == 0:
        pytest.skip("FAISS reports no GPU")
    xb, xq = normalised(12_000, 0), normalised(20, 1)  # IVF64,PQ16 trains from 9,984
    labels = np.arange(10, 12_010, dtype=np.int64)
    cpu = FaissIndex.build(D, spec, labels, xb, nprobe=64)
    gpu = FaissIndex.build(D, spec, labels, xb, gpu_resources=new_gpu_resources(), nprobe=64)
    assert gpu.on_gpu and not cpu.on_gpu
    agree = np.mean(
        [
            len(set(a.labels) & set(b.labels)) / 10
            for a, b in zip(cpu.search(xq, 10), gpu.search(xq, 10), strict=True)
        ]
    )
    assert agree >= 0.9
    gpu.remove(labels[:5])
    restored, _ = FaissIndex.from_bytes(gpu.to_bytes({}))
    assert restored.ntotal == gpu.ntotal == 11_995
