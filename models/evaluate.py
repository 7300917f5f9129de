"""Retrieval metrics over paired image and text embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10)


def first_relevant_ranks(
    queries: np.ndarray,
    targets: np.ndarray,
    groups: Sequence[object] | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """For query i, the 1-based rank among all targets of the best-scoring relevant target:
    target i, and every target sharing query i's group (identical captions, say)."""
    if queries.shape != targets.shape:
        raise ValueError(f"expected paired rows, got {queries.shape} and {targets.shape}")
    n = len(queries)
    labels = (
        np.arange(n)
        if groups is None
        else np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]
    )
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        # A NaN score ranks below everything; a query whose relevant targets all score
        # NaN (or -inf) is a miss at every K, never the rank 1 that "nothing scores
        # higher" would give.
        scores = np.nan_to_num(queries[start : start + chunk] @ targets.T, nan=-np.inf)
        relevant = labels[start : start + chunk, None] == labels[None, :]
        best = np.where(relevant, scores, -np.inf).max(axis=1)
        rank = 1 + (scores > best[:, None]).sum(axis=1)
        ranks[start : start + chunk] = np.where(np.isfinite(best), rank, max(n, KS[-1]) + 1)
    return ranks


def retrieval_metrics(
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    groups: Sequence[object] | None = None,
    query_vectors: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall@1/5/10 (percent), mean reciprocal rank and median rank, both directions, for
    pairs (image i, text i). ``query_vectors``: the texts as a search embeds them, where
    that differs from how they are stored (a distilled query encoder)."""
    out: dict[str, float] = {}
    queries = text_vectors if query_vectors is None else query_vectors
    for name, q, t in (("t2i", queries, image_vectors), ("i2t", image_vectors, text_vectors)):
        ranks = first_relevant_ranks(q, t, groups)
        for k in KS:
            out[f"{name}_r{k}"] = float(100.0 * np.mean(ranks <= k))
        out[f"{name}_mrr"] = float(np.mean(1.0 / ranks))
        out[f"{name}_median_rank"] = float(np.median(ranks))
    out["pairs"] = float(len(image_vectors))
    return out
