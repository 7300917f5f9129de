"""What a search's catalogue reads cost, in the hits of the request's budget.

A search's first fetch costs its depth in hits (``ranking.cost``). Its filter and its word
matching read rows of the catalogue beside that: each condition is an index lookup that
may touch every item of the collection holding its key, a filter whose result is a
complement reads the collection's labels once more (``index.catalogue.filters.work``), and each word
of a lexical query reads the texts holding it. They are counted as one hit for every
``ROWS_PER_HIT`` items the collection holds, per condition, per scan and per word, so that
they count against the request's hit budget (``Limits.check_search_hits``: 413 beyond)
and make a search heavy in the fair queue (``queue``), where heavy searches take one
worker at a time; a filter shared by a batch's queries is counted once in the budget.
"""

from __future__ import annotations

import math

from app.service.search.ranking import SearchSpec
from index import CollectionStore, Modality
from index.catalogue.filters import work
from index.catalogue.lexical import MAX_TERMS, words
from index.filter_tree import as_tree

ROWS_PER_HIT = 1000


def filter_work(store: CollectionStore, name: str, spec: SearchSpec) -> int:
    """The hits ``spec``'s filter counts for (0: none)."""
    tree = as_tree(spec.where)
    if tree is None:
        return 0
    targets = [spec.target] if spec.target is not None else list(Modality)
    per = _per(max(store.size(name, m) for m in targets))
    conditions, scan = work(tree)
    return (conditions + int(scan)) * per


def word_work(store: CollectionStore, name: str, spec: SearchSpec) -> int:
    """The hits the words of a lexical or hybrid ``spec`` count for (0: vector mode)."""
    if spec.mode == "vector":
        return 0
    terms = min(len(words(spec.lexical_text or "")), MAX_TERMS)
    return terms * _per(store.size(name, Modality.TEXT))


def facet_work(store: CollectionStore, name: str, spec: SearchSpec) -> int:
    """The hits ``spec``'s facets count for: each key reads the rows of every item that
    holds it, as a filter's condition does."""
    if not spec.facets:
        return 0
    targets = [spec.target] if spec.target is not None else list(Modality)
    return len(spec.facets) * _per(max(store.size(name, m) for m in targets))


def _per(size: int) -> int:
    return max(1, math.ceil(size / ROWS_PER_HIT))
