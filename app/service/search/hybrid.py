"""Lexical and hybrid rankings of text items (``mode`` of a text search).

- ``vector`` (the default): the ranking by cosine (``ranking``).
- ``lexical``: the texts holding the query's words, by BM25 (``index.catalogue.lexical``); scores
  are BM25 relevance, not cosines, so ``min_score`` does not apply (400) and
  ``min_relative`` is a fraction of the best BM25 score.
- ``hybrid``: the vector ranking and the lexical one fused by reciprocal rank fusion:
  each item scores the sum over the two rankings of ``1 / (RRF_K + rank)`` (rank from 1;
  absent from a ranking: nothing from it), so one found first by both scores 2/61.
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

from app.service.errors import Invalid
from app.service.search.ranking import Page, SearchSpec
from index import Hit, Modality

MODES = ("vector", "lexical", "hybrid")
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al. 2009)
MIN_FUSION_DEPTH = 100  # each ranking fused at least this deep


def checked(spec: SearchSpec) -> SearchSpec:
    """``spec`` with the lexical modes' rules applied (``Invalid`` for what they cannot do)."""
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


def page_of(ranking: Sequence[Hit], spec: SearchSpec) -> Page:
    """The page ``spec`` asks for of a lexical or fused ranking."""
    kept = [h for h in ranking if h.id not in spec.exclude]
    if spec.min_relative is not None and kept:
        best = kept[0].score
        floor = best - (1.0 - spec.min_relative) * abs(best)
        kept = [h for h in kept if h.score >= floor]
    end = spec.offset + spec.k
    return Page(kept[spec.offset : end], end if len(kept) > end else None)
