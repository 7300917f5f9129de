"""What an index spec costs and gives on a collection's own vectors: recall against exact
search, latency and memory, measured by building it; and a ladder of specs to choose from.

Queries are a sample of the vectors themselves, each leaving itself out of its answers
(a vector always finds itself, which would flatter every index). The exact top 10 comes
from a brute-force scan. "As served" is what a search of the service returns: the index
asked ``candidates(spec, k)`` deep, then the candidates re-ranked on their stored vectors
(``index.search``); "raw" is the index's own top 10.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from index.errors import InvalidIndexSpec
from index.search import candidates
from index.vectors.backend import VectorBackend
from index.vectors.faiss_backend import training_size
from index.vectors.faiss_backends import FaissBackends

K = 10
MAX_QUERIES = 200


@dataclass(frozen=True)
class IndexReport:
    spec: str
    vectors: int
    queries: int
    recall_at_1: float  # as served: the exact nearest neighbour comes first
    recall_at_10: float  # as served: share of the exact top 10 in the top 10
    raw_recall_at_10: float  # the index's own top 10, before re-ranking
    p50_ms: float  # one query at a time, at the served depth
    bytes_per_vector: float  # the serialised index over its vectors
    build_s: float
    trained: bool  # False: too few vectors to train; it searches exactly until it is

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def faiss_only(backends: Any) -> FaissBackends:
    if not isinstance(backends, FaissBackends):
        raise InvalidIndexSpec(
            "re-indexing and index advice measure FAISS indexes; on the Milvus backend the "
            "index type is chosen when the collection is created"
        )
    return backends


def check_trainable(backends: FaissBackends, d: int, spec: str, n: int) -> str:
    """``spec`` normalised, if ``n`` vectors can train it: an untrained index searches
    exactly (there is nothing of it to measure), and training far more centroids than
    there are vectors costs minutes for nothing."""
    normal = backends.check(d, spec)
    need = training_size(faiss.index_factory(d, normal, faiss.METRIC_INNER_PRODUCT))
    if need > n:
        raise InvalidIndexSpec(
            f"{normal} needs {need} vectors to train (39 per centroid of its IVF lists or PQ "
            f"codes); the sample has {n}: use fewer centroids (IVF nlist, PQ nbits) or a "
            "larger sample"
        )
    return normal


def sample_queries(n: int, seed: int = 0) -> np.ndarray:
    """Rows of up to ``MAX_QUERIES`` vectors used as queries."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, min(n, MAX_QUERIES), replace=False))


def measure(
    backends: FaissBackends, spec: str, labels: np.ndarray, xb: np.ndarray
) -> tuple[VectorBackend, IndexReport]:
    """Build ``spec`` over ``(labels, xb)`` (labels ascending) and measure it."""
    d = xb.shape[1]
    started = time.perf_counter()
    index = backends.build(d, spec, labels, xb)
    build_s = time.perf_counter() - started
    n = len(labels)
    if n < 2:
        return index, IndexReport(spec, n, 0, 1.0, 1.0, 1.0, 0.0, 0.0, build_s, index.trained)
    rows = sample_queries(n)
    k = min(K, n - 1)
    depth = candidates(spec, k) + 1  # one more: the query finds itself
    # The searches first, timed alone (NumPy's threads between FAISS's calls slow them).
    latencies, answers = [], []
    for row in rows:
        t = time.perf_counter()
        answers.append(index.search(xb[row][None], depth)[0].labels)
        latencies.append(time.perf_counter() - t)
    hits1 = hits10 = raw10 = 0.0
    for row, found in zip(rows, answers, strict=True):
        q = xb[row]
        scores = xb @ q
        scores[row] = -np.inf
        truth = np.argsort(-scores, kind="stable")[:k]
        found_rows = np.searchsorted(labels, found)
        found_rows = found_rows[found_rows != row]
        raw = found_rows[:k]
        served = found_rows[np.argsort(-(xb[found_rows] @ q), kind="stable")][:k]
        hits1 += float(len(served) > 0 and served[0] == truth[0])
        hits10 += len(np.intersect1d(served, truth)) / k
        raw10 += len(np.intersect1d(raw, truth)) / k
    size = len(index.to_bytes({}))
    report = IndexReport(
        spec=index.spec,
        vectors=n,
        queries=len(rows),
        recall_at_1=hits1 / len(rows),
        recall_at_10=hits10 / len(rows),
        raw_recall_at_10=raw10 / len(rows),
        p50_ms=float(np.median(latencies) * 1000),
        bytes_per_vector=size / n,
        build_s=build_s,
        trained=index.trained,
    )
    return index, report


def ladder(d: int, n: int) -> list[str]:
    """Specs from exact to most compressed, sized for ``n`` vectors of dimension ``d``."""
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39, 65536))
    m = next((m for m in (d // 8, d // 4, d // 2) if m >= 1 and d % m == 0), 1)
    half = max(1, d // 2)
    specs = ["Flat", "SQfp16", "SQ8", "HNSW32", f"IVF{nlist},Flat", f"IVF{nlist},SQ8"]
    specs += [f"IVF{nlist},PQ{m}", f"PCA{half},IVF{nlist},Flat"]
    return specs


def advise(
    backends: FaissBackends,
    labels: np.ndarray,
    xb: np.ndarray,
    targets: dict[str, float],
    specs: list[str] | None = None,
) -> dict[str, Any]:
    """Measure each spec of the ladder (or ``specs``) on ``(labels, xb)``; the smallest
    (bytes per vector, then latency) meeting every target: ``recall_at_1``,
    ``recall_at_10`` at least, ``p50_ms`` at most."""
    rows = []
    for spec in specs or ladder(xb.shape[1], len(labels)):
        try:
            normal = backends.check(xb.shape[1], spec)
        except InvalidIndexSpec:
            continue  # a ladder step this dimension cannot take
        _, report = measure(backends, normal, labels, xb)
        rows.append(report.as_dict())

    def meets(r: dict[str, Any]) -> bool:
        for key, value in targets.items():
            if key == "p50_ms" and r[key] > value:
                return False
            if key != "p50_ms" and r[key] < value:
                return False
        return True

    passing = sorted(
        (r for r in rows if meets(r)), key=lambda r: (r["bytes_per_vector"], r["p50_ms"])
    )
    return {"targets": targets, "rows": rows, "choice": passing[0]["spec"] if passing else None}
