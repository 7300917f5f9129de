"""Metadata filters as SQL over ``item_fields`` (``index.filter_tree`` says what a filter
means; ``index.catalogue.db`` keeps the table, one row per top-level key of each item, typed).

Each condition is a set of labels read from the index on ``(key, kind, value)``, so a
filter that keeps 1% of a collection reads about 1% of its rows; ``$and`` intersects the
sets, ``$or`` unites them, a negation subtracts its set (the collection's own labels are
read once at most, for a filter whose result is a complement). Values
are bound as parameters, never pasted into the statement; keys are compared as stored,
whatever characters they hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from index.catalogue.base import Catalogue, Conn
from index.filter_tree import All, Any_, Cond, Node, Not, kind
from index.types import Modality

_SQL_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_KINDS = {"number": "n", "string": "s", "bool": "b", "null": "z"}
_FIELD = "SELECT label FROM item_fields WHERE key = ?"
# The column of item_fields a value of a family is compared in, and the value as bound.
FieldValue = Callable[[str, Any], tuple[str, Any]]


def filter_labels(
    db: Catalogue,
    conn: Conn,
    collection: str,
    modalities: Sequence[Modality],
    where: Node,
    cap: int | None = None,
) -> dict[Modality, np.ndarray] | None:
    """The labels of the items of ``modalities`` that pass ``where``, sorted, per
    modality: one read of the filter's rows, whichever rankings use it. With ``cap``,
    None when more than ``cap`` pass (reading ``cap + 1`` rows at most)."""
    marks = ", ".join("?" * len(modalities))
    scope = (
        f"SELECT label FROM items WHERE collection = ? AND modality IN ({marks})",
        [collection, *(m.value for m in modalities)],
    )
    chosen, params = labels_sql(where, scope, db.field_value)
    # A join, not ``label IN (...)``: the labels stream from the filter's index through
    # the items' primary key, so a capped read stops after ``cap`` of them.
    sql = (
        f"SELECT i.label, i.modality FROM ({chosen}) AS s JOIN items AS i ON i.label = s.label"
        f" WHERE i.collection = ? AND i.modality IN ({marks})"
    )
    params = [*params, *scope[1]]
    if cap is not None:
        sql += " LIMIT ?"
        params.append(cap + 1)
    rows = conn.execute(sql, params).fetchall()
    if cap is not None and len(rows) > cap:
        return None
    out = {}
    for m in modalities:
        labels = np.array([r[0] for r in rows if r[1] == m.value], dtype=np.int64)
        out[m] = np.sort(labels)
    return out


def labels_sql(
    node: Node, scope: tuple[str, list[Any]], value: FieldValue
) -> tuple[str, list[Any]]:
    """A SELECT of the labels that pass ``node`` (among all items: the caller keeps those
    of its collection), and its parameters; ``scope`` selects the collection's labels, read
    at most once, whatever the negations (``work``); ``value`` gives the column a value
    is compared in and the value as bound (the catalogue's ``field_value``)."""
    sql, params, complement = _sets(node, value)
    if complement:  # the labels not in the set: the collection's, once, less the set
        return f"{scope[0]} EXCEPT SELECT label FROM ({sql}) AS s", [*scope[1], *params]
    return sql, params


def work(node: Node) -> tuple[int, bool]:
    """What a filter costs to evaluate: its conditions (an index lookup each) and whether
    the collection's labels are read (once) for its negations."""
    return _conditions(node), _sets(node, lambda family, v: ("value", v))[2]


def _conditions(node: Node) -> int:
    if isinstance(node, (All, Any_)):
        return sum(_conditions(n) for n in node.nodes)
    if isinstance(node, Not):
        return _conditions(node.node)
    return 1


def _sets(node: Node, value: FieldValue) -> tuple[str, list[Any], bool]:
    """``node`` as a SELECT of labels and whether it stands for their complement: a
    negation flips the flag instead of reading the collection, so ``$and`` of conditions
    and negations is the conditions' intersection less the negated ones' union, and the
    whole filter reads the collection at most once (De Morgan for ``$or``)."""
    if isinstance(node, Not):
        sql, params, complement = _sets(node.node, value)
        return sql, params, not complement
    if isinstance(node, Cond):
        sql, params = _cond_sql(node, value)
        return sql, params, False
    parts = [_sets(n, value) for n in node.nodes]
    plain = [(sql, params) for sql, params, complement in parts if not complement]
    flipped = [(sql, params) for sql, params, complement in parts if complement]
    # A and B and not C and not D = (A INTERSECT B) EXCEPT (C UNION D), and alone
    # not C and not D = the complement of (C UNION D); De Morgan: A or B or not C or not D
    # = the complement of (C INTERSECT D) EXCEPT (A UNION B), and alone A UNION B.
    kept, dropped = (plain, flipped) if isinstance(node, All) else (flipped, plain)
    if not kept:
        return (*_joined(dropped, " UNION "), isinstance(node, All))
    sql, params = _joined(kept, " INTERSECT ")
    if dropped:
        more_sql, more = _joined(dropped, " UNION ")
        sql, params = f"{sql} EXCEPT SELECT label FROM ({more_sql}) AS s", [*params, *more]
    return sql, params, isinstance(node, Any_)


def _joined(parts: list[tuple[str, list[Any]]], joiner: str) -> tuple[str, list[Any]]:
    if len(parts) == 1:
        return parts[0]
    sql = joiner.join(f"SELECT label FROM ({p[0]}) AS s" for p in parts)
    return sql, [x for p in parts for x in p[1]]


def _cond_sql(cond: Cond, value: FieldValue) -> tuple[str, list[Any]]:
    if cond.op == "exists":
        return _FIELD, [cond.key]
    if cond.op == "in":
        parts = []
        params: list[Any] = []
        for family in ("number", "string", "bool", "null"):
            members = [x for x in cond.value if kind(x) == family]
            if not members:
                continue
            if family == "null":
                parts.append(f"{_FIELD} AND kind = 'z'")
                params += [cond.key]
            else:
                bound = [value(family, x) for x in members]
                marks = ", ".join("?" * len(members))
                parts.append(f"{_FIELD} AND kind = ? AND {bound[0][0]} IN ({marks})")
                params += [cond.key, _KINDS[family], *(v for _, v in bound)]
        return " UNION ".join(parts), params
    family = kind(cond.value)
    if family == "null":  # $eq null (ranges refuse null when parsed)
        return f"{_FIELD} AND kind = 'z'", [cond.key]
    column, bound = value(family, cond.value)
    op = "=" if cond.op == "eq" else _SQL_OPS[cond.op]
    return f"{_FIELD} AND kind = ? AND {column} {op} ?", [cond.key, _KINDS[family], bound]
