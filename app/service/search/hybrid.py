"""Lexical and hybrid rankings of text items (``mode`` of a text search).

- ``vector`` (the default): the ranking by cosine (``ranking``).
- ``lexical``: the texts holding the query's words, by BM25 (``index.catalogue.lexical``); scores
  are BM25 relevance, not cosines, so ``min_score`` does not apply (400) and
  ``min_relative`` is a fraction of the best BM25 score.
- ``hybrid``: the vector ranking and the lexical one fused, by ``fusion``:
  - ``rrf`` (the default), reciprocal rank fusion: each item scores the sum over the two
    rankings of ``1 / (RRF_K + rank)`` (rank from 1; absent from a ranking: nothing from
    it), so one found first by both scores 2/61. Ranks only: how far ahead the first
    is does not count.
  - ``relative``: each ranking's scores normalised by their spread, then weighed:
    ``alpha * v + (1 - alpha) * l`` with ``v`` and ``l`` an item's normalised vector and
    lexical scores (0 where a ranking lacks it). A score ``s`` of a ranking whose scores
    have mean ``m`` and standard deviation ``d`` becomes ``(s - (m - 3d)) / 6d`` (as
    Qdrant's distribution-based fusion does): the ranking's usual spread maps onto 0..1,
    and an outlier stays an outlier, above 1. By spread rather than by range (min-max,
    Weaviate's relative-score fusion), because min-max maps every ranking's best to 1 and
    its worst to 0 whatever their margin: an uninformative vector ranking, whose scores
    all lie close together, would weigh as much as a lexical ranking whose first hit holds
    the query's exact product code far ahead of the rest; by spread, that hit's lexical
    score is several times anything the near-flat vector ranking gives, and it stays first.
    A ranking of one hit, or of equal scores, gives each 1.
  ``min_score`` cuts the vector ranking (a cosine, as everywhere) before the fusion;
  ``min_relative`` cuts the fused list relative to its best score; filters apply to both
  rankings, pages to the fused list. Each ranking is taken ``fusion_depth`` deep.

Both need a text in the query (its words are what is matched) and search texts
(``target`` text, the default for these modes); near-duplicate collapse (``dedup``) is for
the vector mode only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from app.service.errors import Invalid
from app.service.search.ranking import Page, SearchSpec
from index import Hit, Modality

MODES = ("vector", "lexical", "hybrid")
FUSIONS = ("rrf", "relative")
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al. 2009)
ALPHA = 0.5  # the vector ranking's weight in relative fusion, unless the query gives one
SPREAD = 3.0  # relative fusion maps mean +- this many standard deviations onto 0..1
MIN_FUSION_DEPTH = 100  # each ranking fused at least this deep


def checked(spec: SearchSpec) -> SearchSpec:
    """``spec`` with the lexical modes' rules applied (``Invalid`` for what they cannot do)."""
    if spec.mode != "hybrid" and (spec.fusion != "rrf" or spec.alpha is not None):
        raise Invalid("fusion and alpha are for mode hybrid", code="invalid_query")
    if spec.fusion not in FUSIONS:
        raise Invalid(f"fusion must be one of {', '.join(FUSIONS)}", code="invalid_query")
    if spec.alpha is not None and spec.fusion != "relative":
        raise Invalid("alpha weighs fusion relative", code="invalid_query")
    if spec.mode == "vector":
        return spec
    if spec.mode not in MODES:
        raise Invalid(f"mode must be one of {', '.join(MODES)}", code="invalid_query")
    if not (spec.lexical_text or "").strip():
        raise Invalid(
            f"mode {spec.mode} matches the words of a text: give the query a text",
            code="invalid_query",
        )
    if spec.target is Modality.IMAGE:
        raise Invalid(f"mode {spec.mode} searches texts: target must be text", code="invalid_query")
    if spec.dedup is not None:
        raise Invalid("dedup works with mode vector only", code="invalid_query")
    if spec.mode == "lexical" and spec.min_score is not None:
        raise Invalid(
            "min_score is a cosine; lexical scores are BM25: use min_relative", code="invalid_query"
        )
    return replace(spec, target=Modality.TEXT)


def fusion_depth(spec: SearchSpec, max_k: int) -> int:
    """How deep each ranking is taken: twice the page's end, at least ``MIN_FUSION_DEPTH``,
    at most ``max_k`` (or the page's end and one more, if that is deeper)."""
    end = spec.offset + spec.k
    return max(min(max(2 * end, MIN_FUSION_DEPTH), max_k), end + 1)


def vector_part(spec: SearchSpec, depth: int) -> SearchSpec:
    """What a hybrid search asks of the vector ranking."""
    return replace(spec, mode="vector", offset=0, k=depth - 1, min_relative=None)


def fuse(rankings: Sequence[Sequence[Hit]]) -> list[Hit]:
    """Reciprocal rank fusion of ``rankings`` (each best first): best first, ties by label."""
    scores: dict[int, float] = {}
    first: dict[int, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, 1):
            scores[hit.label] = scores.get(hit.label, 0.0) + 1.0 / (RRF_K + rank)
            first.setdefault(hit.label, hit)
    fused = [replace(first[label], score=score, vector=None) for label, score in scores.items()]
    fused.sort(key=lambda h: (-h.score, h.label))
    return fused


def spread(ranking: Sequence[Hit]) -> dict[int, float]:
    """Each hit's score normalised by the ranking's spread (see the module's doc)."""
    if not ranking:
        return {}
    scores = np.array([h.score for h in ranking], dtype=np.float64)
    mean, deviation = float(scores.mean()), float(scores.std())
    if deviation <= 1e-12 * max(1.0, abs(mean)):
        return {h.label: 1.0 for h in ranking}
    low = mean - SPREAD * deviation
    return {
        h.label: (float(s) - low) / (2 * SPREAD * deviation)
        for h, s in zip(ranking, scores, strict=True)
    }


def fuse_relative(vector: Sequence[Hit], lexical: Sequence[Hit], alpha: float) -> list[Hit]:
    """Relative fusion of a vector ranking and a lexical one (each best first): best
    first, ties by label."""
    v, w = spread(vector), spread(lexical)
    first = {h.label: h for h in (*lexical, *vector)}
    fused = [
        replace(hit, score=alpha * v.get(label, 0.0) + (1 - alpha) * w.get(label, 0.0), vector=None)
        for label, hit in first.items()
    ]
    fused.sort(key=lambda h: (-h.score, h.label))
    return fused


def fused(spec: SearchSpec, vector: Sequence[Hit], lexical: Sequence[Hit]) -> list[Hit]:
    """The hybrid ranking ``spec`` asks for."""
    if spec.fusion == "relative":
        return fuse_relative(vector, lexical, ALPHA if spec.alpha is None else spec.alpha)
    return fuse([vector, lexical])


def page_of(ranking: Sequence[Hit], spec: SearchSpec) -> Page:
    """The page ``spec`` asks for of a lexical or fused ranking."""
    kept = [h for h in ranking if h.id not in spec.exclude]
    if spec.min_relative is not None and kept:
        best = kept[0].score
        floor = best - (1.0 - spec.min_relative) * abs(best)
        kept = [h for h in kept if h.score >= floor]
    end = spec.offset + spec.k
    return Page(kept[spec.offset : end], end if len(kept) > end else None)
