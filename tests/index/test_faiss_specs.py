"""Index specs: the grammar lets through only what FAISS builds, fills, searches (filtered
and not) and deletes from without crashing, and refuses the rest before FAISS sees it."""

from __future__ import annotations

import numpy as np
import pytest

from index import FaissBackends, FaissIndex, InvalidIndexSpec, gpu_count
from index.vectors.faiss_specs import parse_spec
from tests.stores import unit_vectors

D = 32

# One of each family and form; numbers small so that training needs few vectors.
ACCEPTED = [
    "Flat",
    "SQ8",
    "SQ4",
    "SQfp16",
    "PQ8x4",
    "PQ4x6",
    "HNSW16",
    "HNSW4,Flat",
    "HNSW8,SQ8",
    "HNSW8_PQ4",
    "IVF8,Flat",
    "IVF4,SQ6",
    "IVF4,SQ8",
    "IVF4,SQfp16",
    "IVF4,PQ8x4",
    "PCA16,Flat",
    "PCAR16,IVF4,Flat",
    "OPQ4,PQ4x4",
    "OPQ4_16,IVF4,PQ4x4",
    "PCA8,HNSW8",
]

REFUSED = [
    "HNSW1",  # built by FAISS, then a segmentation fault on the first add
    "HNSW0",
    "HNSW100000",
    "IVF0,Flat",
    "IVF100000000,Flat",  # gigabytes for the inverted lists
    "IVF" + "9" * 5000 + ",Flat",
    "PQ7",  # 32 is not divisible by 7
    "PQ8x16",  # 65,536 centroids per sub-quantizer
    "PQ8x2",
    "PCA64,Flat",  # more dimensions out than in
    "PCA0,Flat",
    "OPQ5_32,Flat",
    "IVF4",
    "IVF4,HNSW8",
    "HNSW8,PQ4",
    "Flat,Flat",
    "LSH",
    "IDMap,Flat",
    "IDMap2,HNSW32",
    "RFlat",
    "IVF4,Flat,RFlat",
    "IVF4_HNSW8,Flat",
    "PQ8x4fs",
    "SQ3",
    "PCA16",
    "ＦＬＡＴ",
    "Flat\x00",
    "x" * 201,
]


def normalised(n: int, seed: int) -> np.ndarray:
    return unit_vectors(n, D, seed)


@pytest.mark.parametrize("spec", ACCEPTED)
def test_every_accepted_spec_builds_trains_searches_and_deletes(spec: str) -> None:
    index = FaissIndex(D, spec)
    n = max(index.train_size, 200) + 50
    xb = normalised(n, 0)
    labels = np.arange(10, 10 + n, dtype=np.int64)
    index.add(labels, xb)
    index.train()
    assert index.trained
    xq = xb[:5]
    allowed = labels[::3]
    for result in index.search(xq, 10):
        assert len(result.labels) == 10 and set(result.labels) <= set(labels)
        assert np.all(np.isfinite(result.scores))
    for result in index.search(xq, 10, allowed=allowed):
        assert set(result.labels) <= set(allowed) and len(result.labels) > 0
    index.remove(labels[:100])
    assert index.ntotal == n - 100
    for result in index.search(xq, 10):
        assert not set(result.labels) & set(labels[:100])
    restored, _ = FaissIndex.from_bytes(index.to_bytes({}))
    assert restored.ntotal == index.ntotal


@pytest.mark.parametrize("spec", REFUSED)
def test_specs_outside_the_grammar_are_refused_before_faiss_sees_them(spec: str) -> None:
    with pytest.raises(InvalidIndexSpec) as info:
        parse_spec(spec, D)
    assert len(str(info.value)) < 1000  # says what is supported, not the whole input back
    with pytest.raises(InvalidIndexSpec):
        FaissIndex(D, spec)


def test_specs_are_normalised() -> None:
    assert parse_spec(None, D) == "Flat"
    assert parse_spec("  ", D) == "Flat"
    assert parse_spec(" IVF8 , Flat ", D) == "IVF8,Flat"


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ACCEPTED)
def test_every_accepted_spec_is_safe_served_from_the_gpu(spec: str) -> None:
    """On the GPU as on the CPU: what FAISS can place there is served from there, the rest
    stays on the CPU; either way no spec of the grammar crashes or answers wrongly."""
    if gpu_count() == 0:
        pytest.skip("FAISS reports no GPU")
    backends = FaissBackends(use_gpu=True, nprobe=8)
    probe = backends.create(D, spec)
    n = max(probe.train_size, 200) + 50
    xb = normalised(n, 0)
    labels = np.arange(10, 10 + n, dtype=np.int64)
    index = backends.build(D, spec, labels, xb)
    assert index.trained
    allowed = labels[::3]
    for result in index.search(xb[:5], 10):
        assert len(result.labels) == 10 and set(result.labels) <= set(labels)
    for result in index.search(xb[:5], 10, allowed=allowed):
        assert len(result.labels) > 0 and set(result.labels) <= set(allowed)
    index.remove(labels[:100])
    for result in index.search(xb[:5], 10):
        assert not set(result.labels) & set(labels[:100])
    restored, _ = backends.load(index.to_bytes({}))
    assert restored.ntotal == index.ntotal == n - 100
    # The families FAISS serves safely from the GPU are; the rest (IVF with 4-, 6- or 8-bit
    # scalar quantizers: their first search aborted the process) stay on the CPU.
    on_gpu = spec in (
        "Flat",
        "SQfp16",
        "IVF8,Flat",
        "IVF4,SQfp16",
        "PCAR16,IVF4,Flat",
        "PCA16,Flat",
    )
    assert index.on_gpu is on_gpu, spec
