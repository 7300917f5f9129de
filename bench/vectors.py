"""The vector backends side by side through the store (what the service runs): insert rate
and search latency at 100k vectors, with a metadata filter and without, on FAISS and on
Milvus Lite (the embedded Milvus; a Milvus server adds a network hop, and its own nodes).

    .venv/bin/python -m bench.vectors --vectors 100000 --dim 512
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from index import CollectionStore, FaissBackends, MilvusBackends, Modality, NewItem
from index.vectors.advice import ladder, measure
from index.vectors.backend import BackendFactory

VERSION = "bench@v1"
SHARDS = 100  # items carry {"shard": i % 100}: one shard is 1% of them
FILTERS = {
    "filtered": {"shard": 3},  # 1%
    "tenth": {"shard": {"$lt": 10}},  # 10%, an operator
}


def backends(name: str, root: Path) -> BackendFactory:
    if name == "milvus":
        return MilvusBackends(str(root / "milvus.db"))
    return FaissBackends(use_gpu=False)


def bench_backend(
    name: str, n: int, d: int, queries: int, filtered: int, chunk: int = 1000
) -> dict[str, float]:
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = rng.standard_normal((queries, d), dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = CollectionStore(Path(tmp) / "data", backends=backends(name, Path(tmp)))
        try:
            store.create_collection("bench", d, VERSION)
            started = time.perf_counter()
            for start in range(0, n, chunk):
                items = [
                    NewItem(f"t{i}", Modality.TEXT, {"shard": i % SHARDS}, text=f"text {i}")
                    for i in range(start, min(n, start + chunk))
                ]
                store.upsert("bench", items, xb[start : start + len(items)], VERSION)
            insert_s = time.perf_counter() - started
            out: dict[str, float] = {"inserts_per_s": n / insert_s}
            for label, where in (("all", None), *FILTERS.items()):
                # Fewer filtered queries: Milvus evaluates broad filters row by row.
                lat = search_latencies(store, xq if where is None else xq[:filtered], where)
                out[f"{label}_p50_ms"] = float(np.percentile(lat, 50))
                out[f"{label}_p99_ms"] = float(np.percentile(lat, 99))
            return out
        finally:
            store.close()


def search_latencies(
    store: CollectionStore, xq: np.ndarray, where: dict[str, Any] | None
) -> np.ndarray:
    def one(q: np.ndarray) -> None:
        hits = store.search("bench", Modality.TEXT, q[None], 10, model_version=VERSION, where=where)
        assert len(hits[0]) == 10

    for q in xq[:3]:
        one(q)  # warm-up
    lat = []
    for q in xq:
        t = time.perf_counter()
        one(q)
        lat.append(time.perf_counter() - t)
    return np.array(lat) * 1000


def rows(
    n: int, d: int, queries: int, filtered: int
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Both backends, one after the other in this process: results and table rows."""
    results: dict[str, Any] = {}
    table = []
    for name in ("faiss", "milvus"):
        r = results[name] = bench_backend(name, n, d, queries, filtered)
        where = "in process" if name == "faiss" else "Milvus Lite, embedded"
        table += [
            (
                f"{name} backend: insert {n:,} x {d} through the store, 1,000 a call",
                f"{r['inserts_per_s']:,.0f} vectors/s",
                where,
            ),
            (
                f"{name} backend: search {n:,} x {d}, exact, k=10, no filter / filters keeping"
                f" 1% and 10% ({queries} / {filtered} queries)",
                f"p50 {r['all_p50_ms']:.2f} / {r['filtered_p50_ms']:.2f} /"
                f" {r['tenth_p50_ms']:.2f} ms, p99 {r['all_p99_ms']:.2f} /"
                f" {r['filtered_p99_ms']:.2f} / {r['tenth_p99_ms']:.2f} ms",
                where,
            ),
        ]
    return results, table


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in clusters of about 50 (each a random centre plus noise of 0.8 its
    length), so neighbourhoods exist as in real embeddings. Uniform random vectors in 512
    dimensions have none (every pair near cosine 0): no approximate index can find their
    "nearest" neighbours, which says nothing about embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, d)).astype(np.float32)
    noise *= 0.8 / np.linalg.norm(noise, axis=1, keepdims=True)
    xb = centres[rng.integers(len(centres), size=n)] + noise
    return np.ascontiguousarray(xb / np.linalg.norm(xb, axis=1, keepdims=True), dtype=np.float32)


def spec_rows(n: int, d: int) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """Each spec of the advice ladder at ``n`` x ``d`` clustered unit vectors: recall@10
    against exact search (as served, and the index's own), p50 latency, bytes per vector,
    measured as a re-index job measures them (``index.vectors.advice``)."""
    xb = clustered(n, d)
    labels = np.arange(1, n + 1, dtype=np.int64)
    backends = FaissBackends(use_gpu=False)
    reports, table = [], []
    for spec in ladder(d, n):
        _, r = measure(backends, backends.check(d, spec), labels, xb)
        reports.append(r.as_dict())
        table.append(
            (
                f"index {r.spec}, {n:,} x {d} clustered: recall@10 as served / raw, p50, size",
                f"{r.recall_at_10:.3f} / {r.raw_recall_at_10:.3f}, {r.p50_ms:.2f} ms, "
                f"{r.bytes_per_vector:,.0f} B/vector (build {r.build_s:.1f} s)",
                "CPU",
            )
        )
    return reports, table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--filtered-queries", type=int, default=30)
    parser.add_argument("--specs-only", action="store_true", help="only the index-spec table")
    parser.add_argument("--backends-only", action="store_true", help="only the backends' rows")
    args = parser.parse_args()
    _, table = ([], []) if args.backends_only else spec_rows(args.vectors, args.dim)
    if not args.specs_only:
        table += rows(args.vectors, args.dim, args.queries, args.filtered_queries)[1]
    for name, value, where in table:
        print(f"| {name} | {value} | {where} |")


if __name__ == "__main__":
    main()
