"""From a query vector to a page of results: cut-offs, near-duplicate collapse and pages.

One ranking is built per search: the store's hits (exact scores, ties broken by label,
see ``index.search``), without the query's own items, cut at ``min_score`` and at
``min_relative`` of the best hit, collapsed to the best of each group of near-duplicates,
and then sliced into the page asked for. It is asked for deep enough to hold the page and
one hit more (which says whether a next page exists), and deeper while hits tied with the
page's last one might still follow, so the same collection gives the same ranking on
every page: no hit on two pages, none skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from index import Hit, Modality
from index.filter_tree import Filter
from models.errors import DeadlineExceeded

# hits of one query row, ``depth`` deep: what the store answers
Fetch = Callable[[int], list[Hit]]


@dataclass
class Budget:
    """What one request may still spend beyond its first fetch: hits fetched while
    deepening (for ties and near-duplicate collapse, shared by the request's queries), and
    time. A ranking whose budget runs out ends where it is, as one at ``max_depth`` does."""

    hits: int
    timeout_s: float
    deadline: float = 0.0

    def __post_init__(self) -> None:
        self.deadline = self.deadline or time.monotonic() + self.timeout_s

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the search took longer than {self.timeout_s:g} s (XMODAL_SEARCH_TIMEOUT_S)"
        )

    def take(self, hits: int) -> bool:
        """Whether ``hits`` more may be fetched (and if so, they are spent): not past the
        deadline (the request is answered 504 then; its searches stop deepening, and
        the others ranked with them are not failed for it)."""
        if hits > self.hits or self.left_s() <= 0:
            return False
        self.hits -= hits
        return True


@dataclass(frozen=True)
class SearchSpec:
    """What a search asks for besides its query."""

    k: int = 10
    offset: int = 0
    target: Modality | None = None
    where: Filter | None = None  # a tree once the search is planned (parsed once)
    min_score: float | None = None  # absolute cosine
    min_relative: float | None = None  # fraction of the best hit's score
    dedup: float | None = None  # cosine at or above which two hits are near-duplicates
    exclude: frozenset[str] = field(default_factory=frozenset)  # ids left out (the query's)
    mode: str = "vector"  # vector, lexical or hybrid (``hybrid``)
    fusion: str = "rrf"  # how hybrid fuses its rankings: rrf or relative (``hybrid``)
    alpha: float | None = None  # the vector ranking's weight in relative fusion
    group_by: str | None = None  # a metadata key: the best hits of each value (``groups``)
    group_size: int = 1
    facets: tuple[str, ...] = ()  # metadata keys whose most frequent values to count
    lexical_text: str | None = None  # the words lexical and hybrid modes match
    work: int = 0  # hits its filter and word matching count for (``cost.catalogue_work``)
    budget: Budget | None = field(default=None, compare=False)  # the request's, once planned

    @property
    def needed(self) -> int:
        """Hits the ranking must hold: the page and one more (grouped: as many hits as
        the page's groups hold, at best)."""
        return (self.offset + self.k) * self.group_size + 1


@dataclass(frozen=True)
class Page:
    hits: list[Hit]
    next_offset: int | None
    # With ``group_by``: each group's value and hits (``hits`` then holds them all, in order).
    groups: list[tuple[Any, list[Hit]]] | None = None
    # With ``facets``: per key, its most frequent values and their counts.
    facets: dict[str, list[tuple[Any, int]]] | None = None


def cost(spec: SearchSpec) -> int:
    """What a search costs before any deepening, in hits: its first fetch (with the hits'
    vectors when it collapses near-duplicates, about twice the work), and its filter's and
    word matching's reads of the catalogue (``work``)."""
    return first_depth(spec) * (2 if spec.dedup is not None else 1) + spec.work


def first_depth(spec: SearchSpec) -> int:
    """One hit more than the ranking needs: if it scores below the last one needed, the
    page is complete without a second search (with exactly as many, the last fetched hit
    is the last needed, which can never score below itself: every search ran twice)."""
    return spec.needed + len(spec.exclude) + 1


def rank(fetch: Fetch, spec: SearchSpec, max_depth: int, hits: list[Hit] | None = None) -> Page:
    """The page of ``spec`` from hits ``fetch`` gives, deepening (doubling, up to
    ``max_depth``) while the ranking is short of the page or may continue in a tie.
    ``hits`` are those of a first fetch at ``first_depth(spec)`` already made."""
    depth = first_depth(spec)
    if hits is None:
        hits = fetch(depth)
    while True:
        ranking, ended = ranked(hits, spec)
        exhausted = len(hits) < depth
        if ended or exhausted or depth >= max_depth:
            break
        if len(ranking) >= spec.needed and hits[-1].score < ranking[spec.needed - 1].score:
            break  # every hit not fetched scores below the page's end: it is complete
        depth = min(depth * 2, max_depth)
        if spec.budget is not None and not spec.budget.take(depth):
            break
        hits = fetch(depth)
    end = spec.offset + spec.k
    return Page(ranking[spec.offset : end], end if len(ranking) > end else None)


def ranked(hits: Sequence[Hit], spec: SearchSpec) -> tuple[list[Hit], bool]:
    """The ranking these hits give, and whether a cut-off ended it (deeper hits would
    all fall below it)."""
    ranking = [h for h in hits if h.id not in spec.exclude]
    ended = False
    floor = spec.min_score
    if spec.min_relative is not None and ranking:
        best = ranking[0].score
        relative = best - (1.0 - spec.min_relative) * abs(best)
        floor = relative if floor is None else max(floor, relative)
    if floor is not None:
        kept = [h for h in ranking if h.score >= floor]
        ended = len(kept) < len(ranking)
        ranking = kept
    if spec.dedup is not None:
        ranking = collapse(ranking, spec.dedup)
    return ranking, ended


def collapse(hits: Sequence[Hit], threshold: float) -> list[Hit]:
    """The best of each group of near-duplicates: going down the ranking, a hit is kept
    unless its vector is within ``threshold`` (cosine) of one kept before it."""
    kept: list[Hit] = []
    if not hits:
        return kept
    assert hits[0].vector is not None, "dedup needs the hits' vectors"
    matrix = np.empty((len(hits), len(hits[0].vector)), np.float32)  # the kept hits' rows
    for hit in hits:
        assert hit.vector is not None
        n = len(kept)
        if n and float(np.max(matrix[:n] @ hit.vector)) >= threshold:
            continue
        matrix[n] = hit.vector
        kept.append(hit)
    return kept


def combine(parts: Sequence[tuple[float, np.ndarray]]) -> np.ndarray | None:
    """The weighted sum of the parts' vectors, normalised; None when they cancel out."""
    total = np.zeros_like(parts[0][1], dtype=np.float64)
    scale = 0.0  # what the norm would be if every part pointed the same way
    for weight, vector in parts:
        total += weight * vector.astype(np.float64)
        scale += abs(weight) * float(np.linalg.norm(vector))
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or scale == 0 or norm <= 1e-6 * scale:
        return None  # all weights zero, or parts that cancel out
    out: np.ndarray = (total / norm).astype(np.float32)
    return out
