"""Groups of a ranking (``group_by``): the best hits of each distinct value of one
metadata key, ``group_size`` a group, groups in the order of their best hit, ``k`` groups
a page. One result per product, when the key names the product.

A value groups as filters compare it (``index.filter_tree``): numbers by value (``2`` and
``2.0`` are one group), strings exactly, booleans apart from numbers. Hits whose value is
missing, null, a list or an object belong to no group. The ranking is read deeper
(doubling, within the request's hit budget and ``4 * XMODAL_MAX_K``) until the page's
groups are full, one more group shows there is a next page, or it ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.service.errors import Invalid
from app.service.search.ranking import Page, SearchSpec, first_depth, ranked
from index import Hit

MAX_GROUP_SIZE = 100


@dataclass(frozen=True)
class Group:
    value: Any
    hits: list[Hit]


def group_key(value: Any) -> tuple[str, Any] | None:
    """What a value groups as, or None: it belongs to no group."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("n", value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return ("n", int(value)) if value.is_integer() else ("n", value)
    if isinstance(value, str):
        return ("s", value)
    return None


def groups_of(ranking: Sequence[Hit], key: str, size: int) -> list[Group]:
    """The groups of ``ranking`` (best first), each holding its first ``size`` hits."""
    groups: dict[tuple[str, Any], Group] = {}
    for hit in ranking:
        value = hit.metadata.get(key)
        which = group_key(value)
        if which is None:
            continue
        group = groups.get(which)
        if group is None:
            groups[which] = Group(value, [hit])
        elif len(group.hits) < size:
            group.hits.append(hit)
    return list(groups.values())


def check(spec: SearchSpec, max_k: int) -> None:
    """What a grouped search may ask (400 beyond)."""
    if spec.group_by is None:
        return
    if spec.mode != "vector":
        raise Invalid("group_by works with mode vector only", code="invalid_query")
    if not 1 <= spec.group_size <= MAX_GROUP_SIZE:
        raise Invalid(
            f"group_size must be between 1 and {MAX_GROUP_SIZE}, got {spec.group_size}",
            code="invalid_query",
        )
    hits = (spec.offset + spec.k) * spec.group_size
    if hits > max_k:
        raise Invalid(
            f"(offset + k) * group_size must be at most {max_k} hits, got {hits}",
            code="invalid_k",
        )


def rank_groups(
    fetch: Callable[[int], list[Hit]], spec: SearchSpec, max_depth: int, hits: list[Hit]
) -> Page:
    """The page of groups ``spec`` asks for, from hits ``fetch`` gives (the first fetch,
    ``hits``, made at ``first_depth(spec)``)."""
    assert spec.group_by is not None
    wanted = spec.offset + spec.k
    depth = first_depth(spec)
    while True:
        ranking, ended = ranked(hits, spec)
        groups = groups_of(ranking, spec.group_by, spec.group_size)
        full = len(groups) > wanted and all(len(g.hits) == spec.group_size for g in groups[:wanted])
        if full or ended or len(hits) < depth or depth >= max_depth:
            break
        depth = min(depth * 2, max_depth)
        if spec.budget is not None and not spec.budget.take(depth):
            break
        hits = fetch(depth)
    page = groups[spec.offset : wanted]
    return Page(
        [h for g in page for h in g.hits],
        wanted if len(groups) > wanted else None,
        groups=[(g.value, g.hits) for g in page],
    )
