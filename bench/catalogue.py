"""The two catalogues side by side, in one run: SQLite under the data dir and PostgreSQL
(a throwaway local cluster on a Unix socket, ``bench.postgres``), each behind the same
store with FAISS exact search.

- inserts through the store: texts with their vectors and metadata, 1,000 a call;
- exact search of the collection, unfiltered and with a filter keeping 1% and 10%;
- lexical queries (a few words each).

    .venv/bin/python -m bench.catalogue [--items 100000] [--queries 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.postgres import PgCluster
from index import CollectionStore, FaissBackends, Modality, NewItem

VERSION = "bench@v1"
D = 128
BATCH = 1000
WORDS = ["red", "blue", "lamp", "chair", "table", "classic", "modern", "oak", "glass", "steel"]


def items(start: int, n: int) -> list[NewItem]:
    out = []
    for i in range(start, start + n):
        text = f"{WORDS[i % 10]} {WORDS[(i // 10) % 10]} {WORDS[(i // 100) % 10]} item {i}"
        meta = {"bucket": i % 100, "tenth": i % 10, "name": f"n{i}"}
        out.append(NewItem(f"i{i}", Modality.TEXT, meta, text=text))
    return out


def vectors(seed: int, n: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def median_ms(fn: Callable[[int], Any], runs: int) -> float:
    times = []
    for i in range(runs):
        started = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure(root: Path, url: str | None, n: int, queries: int) -> dict[str, float]:
    store = CollectionStore(root, backends=FaissBackends(use_gpu=False), database_url=url)
    try:
        store.create_collection("c", D, VERSION)
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            count = min(BATCH, n - start)
            store.upsert("c", items(start, count), vectors(start, count), VERSION)
        inserted = n / (time.perf_counter() - started)
        xq = vectors(10**9, queries)

        def search(where: dict[str, Any] | None) -> Callable[[int], Any]:
            return lambda i: store.search(
                "c", Modality.TEXT, xq[i : i + 1], 10, model_version=VERSION, where=where
            )

        for i in range(3):  # warm: the first reads load pages and prepare statements
            search({"bucket": 1})(i)
        out = {
            "inserts_per_s": inserted,
            "search_ms": median_ms(search(None), queries),
            "filter_1pct_ms": median_ms(lambda i: search({"bucket": i % 100})(i), queries),
            "filter_10pct_ms": median_ms(lambda i: search({"tenth": i % 10})(i), queries),
            "lexical_ms": median_ms(
                lambda i: store.lexical("c", f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} lamp", 10),
                queries,
            ),
        }
    finally:
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    cluster = PgCluster().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = {
                "SQLite": measure(Path(tmp) / "s", None, args.items, args.queries),
                "PostgreSQL": measure(
                    Path(tmp) / "p", cluster.database(), args.items, args.queries
                ),
            }
    finally:
        cluster.stop()
    print(
        f"| {args.items:,} texts, d={D} | inserts/s (1,000 a call) | search ms | 1% filter ms"
        " | 10% filter ms | lexical ms |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['inserts_per_s']:,.0f} | {r['search_ms']:.2f} |"
            f" {r['filter_1pct_ms']:.2f} | {r['filter_10pct_ms']:.2f} | {r['lexical_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
