"""Hybrid text search against vector-only and lexical-only: Recall@10 on a generated set
where queries name an exact product code, or describe a product that has look-alikes.

The vectors stand in for a text encoder (no trained text model is available offline):
each product's vector is its kind's centre plus noise of its own, and a query's vector is
the product's own plus noise, so vector search lands among the right look-alikes but
does not always put the product itself in the first ten. Texts are real words through
the real lexical index of each catalogue (SQLite's FTS5 with BM25, PostgreSQL's full-text
search with ``ts_rank``, on a throwaway local cluster); half the queries carry the
product's code, half only its description, which the look-alikes share. The three
rankings come from the store the service uses, fused by the service's own functions:
``hybrid`` is reciprocal rank fusion (``fusion: rrf``), ``relative`` the spread-normalised
weighed sum (``fusion: relative``, alpha 0.5).

    .venv/bin/python -m bench.hybrid [--products 5000] [--queries 400]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from app.service.search.hybrid import ALPHA, fuse, fuse_relative
from bench.postgres import PgCluster
from index import CollectionStore, FaissBackends, Modality, NewItem

VERSION = "bench@v1"
ADJECTIVES = [
    "red",
    "blue",
    "green",
    "black",
    "white",
    "golden",
    "silver",
    "wooden",
    "glass",
    "leather",
]
NOUNS = [
    "lamp",
    "chair",
    "table",
    "shoe",
    "boot",
    "bag",
    "watch",
    "kettle",
    "clock",
    "vase",
    "mirror",
    "rug",
]
STYLES = ["classic", "modern", "rustic", "compact", "deluxe", "vintage"]


def unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return out


def run(
    products: int,
    queries: int,
    d: int = 128,
    own: float = 0.3,
    noise: float = 3.0,
    seed: int = 0,
    url: str | None = None,
) -> dict[str, float]:
    """``own``: how far a product's vector lies from its kind's centre; ``noise``: how far
    a query's vector lies from its product's (both as lengths added to unit vectors)."""
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    kinds = [(a, n, s) for a in ADJECTIVES for n in NOUNS for s in STYLES]
    pick.shuffle(kinds)
    kinds = kinds[: max(1, products // 20)]  # about 20 look-alikes of each kind
    centres = rng.standard_normal((len(kinds), d)).astype(np.float32)
    kind_of = rng.integers(len(kinds), size=products)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    xb = centres[kind_of] + own * unit(rng.standard_normal((products, d)))
    xb = unit(xb)
    codes = [f"XR-{c}" for c in pick.sample(range(10_000, 99_999), products)]
    texts = [
        f"{kinds[k][2]} {kinds[k][0]} {kinds[k][1]}, code {codes[i]}" for i, k in enumerate(kind_of)
    ]
    targets = pick.sample(range(products), queries)
    recall = {"vector": 0, "lexical": 0, "hybrid": 0, "relative": 0}
    by_code = dict.fromkeys(recall, 0)  # of the queries that carry the code
    timing = {m: 0.0 for m in recall}
    with tempfile.TemporaryDirectory() as tmp:
        store = CollectionStore(
            Path(tmp) / "d", backends=FaissBackends(use_gpu=False), database_url=url
        )
        try:
            store.create_collection("p", d, VERSION)
            items = [NewItem(f"p{i}", Modality.TEXT, {}, text=t) for i, t in enumerate(texts)]
            for start in range(0, products, 1000):
                store.upsert("p", items[start : start + 1000], xb[start : start + 1000], VERSION)
            for n, t in enumerate(targets):
                k = kinds[kind_of[t]]
                words = f"{k[2]} {k[0]} {k[1]}"
                text = f"{words} {codes[t]}" if n % 2 == 0 else words
                q = unit((xb[t] + noise * unit(rng.standard_normal((1, d))))[0])
                started = time.perf_counter()
                (vec,) = store.search("p", Modality.TEXT, q[None], 100, model_version=VERSION)
                mid = time.perf_counter()
                lex = store.lexical("p", text, 100)
                end = time.perf_counter()
                fused = fuse([vec, lex])
                rrf_done = time.perf_counter()
                relative = fuse_relative(vec, lex, ALPHA)
                relative_done = time.perf_counter()
                timing["vector"] += mid - started
                timing["lexical"] += end - mid
                timing["hybrid"] += rrf_done - started
                timing["relative"] += (end - started) + (relative_done - rrf_done)
                want = f"p{t}"
                rankings = (("vector", vec), ("lexical", lex), ("hybrid", fused))
                for mode, ranking in (*rankings, ("relative", relative)):
                    found = want in [h.id for h in ranking[:10]]
                    recall[mode] += found
                    by_code[mode] += found and n % 2 == 0
        finally:
            store.close()
    out = {f"recall_{m}": v / queries for m, v in recall.items()}
    coded = (queries + 1) // 2
    out.update({f"recall_code_{m}": v / coded for m, v in by_code.items()})
    out.update({f"recall_words_{m}": (recall[m] - by_code[m]) / (queries - coded) for m in recall})
    out.update({f"ms_{m}": 1000 * v / queries for m, v in timing.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--products", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=400)
    args = parser.parse_args()
    cluster = PgCluster().start()
    try:
        results = {
            "SQLite": run(args.products, args.queries),
            "PostgreSQL": run(args.products, args.queries, url=cluster.database()),
        }
    finally:
        cluster.stop()
    print(
        f"| catalogue | mode | Recall@10, {args.queries} queries over {args.products:,} products"
        " | with the code | description only | ms/query |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        for m in ("vector", "lexical", "hybrid", "relative"):
            print(
                f"| {name} | {m} | {r[f'recall_{m}']:.3f} | {r[f'recall_code_{m}']:.3f} |"
                f" {r[f'recall_words_{m}']:.3f} | {r[f'ms_{m}']:.2f} |"
            )


if __name__ == "__main__":
    main()
