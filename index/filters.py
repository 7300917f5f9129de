"""Metadata filters as SQL over ``item_fields`` (``index.filter_tree`` says what a filter
means; ``index.db`` keeps the table, one row per top-level key of each item, typed).

Each condition is a set of labels read from the index on ``(key, kind, value)``, so a
filter that keeps 1% of a collection reads about 1% of its rows; ``$and`` intersects the
sets, ``$or`` unites them, a negation takes the rest of the collection's labels. Values
are bound as parameters, never pasted into the statement; keys are compared as stored,
whatever characters they hold.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np

from index.filter_tree import All, Any_, Cond, Node, Not, kind, parse
from index.types import Modality

_SQL_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_KINDS = {"number": "n", "string": "s", "bool": "b", "null": "z"}
_FIELD = "SELECT label FROM item_fields WHERE key = ?"


def filter_labels(
    conn: sqlite3.Connection, collection: str, modality: Modality, where: dict[str, Any]
) -> np.ndarray:
    """The labels of the items that pass ``where`` (``InvalidFilter`` for a bad filter)."""
    scope = (
        "SELECT label FROM items WHERE collection = ? AND modality = ?",
        [
            collection,
            modality.value,
        ],
    )
    chosen, params = labels_sql(parse(where), scope)
    sql = f"{scope[0]} AND label IN ({chosen})"
    rows = conn.execute(sql, [*scope[1], *params]).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64)


def labels_sql(node: Node, scope: tuple[str, list[Any]]) -> tuple[str, list[Any]]:
    """A SELECT of the labels that pass ``node`` (among all items: the caller keeps those
    of its collection), and its parameters; ``scope`` selects the collection's labels, for
    negations."""
    if isinstance(node, (All, Any_)):
        parts = [labels_sql(n, scope) for n in node.nodes]
        joiner = " INTERSECT " if isinstance(node, All) else " UNION "
        sql = joiner.join(f"SELECT label FROM ({p[0]})" for p in parts)
        return sql, [x for p in parts for x in p[1]]
    if isinstance(node, Not):
        inner, params = labels_sql(node.node, scope)
        return f"{scope[0]} EXCEPT SELECT label FROM ({inner})", [*scope[1], *params]
    return _cond_sql(node)


def _cond_sql(cond: Cond) -> tuple[str, list[Any]]:
    if cond.op == "exists":
        return _FIELD, [cond.key]
    if cond.op == "in":
        parts = []
        params: list[Any] = []
        for family in ("number", "string", "bool", "null"):
            members = [_stored(x) for x in cond.value if kind(x) == family]
            if not members:
                continue
            if family == "null":
                parts.append(f"{_FIELD} AND kind = 'z'")
                params += [cond.key]
            else:
                marks = ", ".join("?" * len(members))
                parts.append(f"{_FIELD} AND kind = ? AND value IN ({marks})")
                params += [cond.key, _KINDS[family], *members]
        return " UNION ".join(parts), params
    family = _KINDS[kind(cond.value)]
    if cond.op == "eq":
        if family == "z":
            return f"{_FIELD} AND kind = 'z'", [cond.key]
        return f"{_FIELD} AND kind = ? AND value = ?", [cond.key, family, _stored(cond.value)]
    op = _SQL_OPS[cond.op]
    return f"{_FIELD} AND kind = ? AND value {op} ?", [cond.key, family, cond.value]


def _stored(value: Any) -> Any:
    """A filter value as ``item_fields.value`` holds it (booleans as 1 and 0)."""
    return int(value) if isinstance(value, bool) else value
