"""Metadata filters as SQL over ``item_fields`` (``index.filter_tree`` says what a filter
means; ``index.catalogue.db`` keeps the table, one row per top-level key of each item, typed).

Each condition is a set of labels read from the index on ``(collection, modality, key,
kind, value)``, so a filter that keeps 1% of a collection reads about 1% of its rows (and
nothing of other collections); ``$and`` intersects the
sets, ``$or`` unites them, a negation subtracts its set (the collection's own labels are
read once at most, for a filter whose result is a complement). Values
are bound as parameters, never pasted into the statement; keys are compared as stored,
whatever characters they hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.catalogue.base import Catalogue, Conn
from index.filter_tree import All, Any_, Cond, Node, Not, kind
from index.types import Modality

_SQL_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_KINDS = {"number": "n", "string": "s", "bool": "b", "null": "z"}
# How a catalogue compares a field with values of one family: (family, SQL operator or
# "IN", the values) -> the condition and its parameters (``Catalogue.field_compare``).
FieldCompare = Callable[[str, str, Sequence[Any]], tuple[str, list[Any]]]


@dataclass(frozen=True)
class Scope:
    """Where a filter looks: one collection's items of some modalities, and how its
    catalogue compares values (``Catalogue.field_compare``)."""

    collection: str
    modalities: tuple[str, ...]
    compare: FieldCompare

    def _in(self) -> tuple[str, list[Any]]:
        marks = ", ".join("?" * len(self.modalities))
        return f"collection = ? AND modality IN ({marks})", [self.collection, *self.modalities]

    def items(self) -> tuple[str, list[Any]]:
        """Every item in scope (for a filter whose result is a complement)."""
        where, params = self._in()
        return f"SELECT label, modality FROM items WHERE {where}", params

    def field(self) -> tuple[str, list[Any]]:
        """The start of one condition: the scope's rows of ``item_fields``, read through
        its index on ``(collection, modality, key, kind, value)``."""
        where, params = self._in()
        return f"SELECT label, modality FROM item_fields WHERE {where} AND key = ?", params


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
    None when more than ``cap`` pass (reading ``cap + 1`` rows at most: a condition's rows
    stream from its index)."""
    scope = Scope(collection, tuple(m.value for m in modalities), db.field_compare)
    chosen, params = labels_sql(where, scope)
    sql = f"SELECT label, modality FROM ({chosen}) AS s"
    if cap is not None:
        sql += " LIMIT ?"
        params = [*params, cap + 1]
    rows = conn.execute(sql, params).fetchall()
    if cap is not None and len(rows) > cap:
        return None
    out = {}
    for m in modalities:
        labels = np.array([r[0] for r in rows if r[1] == m.value], dtype=np.int64)
        out[m] = np.sort(labels)
    return out


def labels_sql(node: Node, scope: Scope) -> tuple[str, list[Any]]:
    """A SELECT of the (label, modality) pairs in ``scope`` that pass ``node``, and its
    parameters; the scope's items are read at most once, whatever the negations
    (``work``)."""
    sql, params, complement = _sets(node, scope)
    if complement:  # the labels not in the set: the scope's, once, less the set
        items, more = scope.items()
        return f"{items} EXCEPT SELECT label, modality FROM ({sql}) AS s", [*more, *params]
    return sql, params


def work(node: Node) -> tuple[int, bool]:
    """What a filter costs to evaluate: its conditions (an index lookup each) and whether
    the collection's labels are read (once) for its negations."""
    return _conditions(node), _sets(node, Scope("", ("",), stored_compare))[2]


def _conditions(node: Node) -> int:
    if isinstance(node, (All, Any_)):
        return sum(_conditions(n) for n in node.nodes)
    if isinstance(node, Not):
        return _conditions(node.node)
    return 1


def _sets(node: Node, scope: Scope) -> tuple[str, list[Any], bool]:
    """``node`` as a SELECT of (label, modality) pairs and whether it stands for their
    complement: a negation flips the flag instead of reading the collection, so ``$and``
    of conditions and negations is the conditions' intersection less the negated ones'
    union, and the whole filter reads the collection at most once (De Morgan for
    ``$or``)."""
    if isinstance(node, Not):
        sql, params, complement = _sets(node.node, scope)
        return sql, params, not complement
    if isinstance(node, Cond):
        sql, params = _cond_sql(node, scope)
        return sql, params, False
    parts = [_sets(n, scope) for n in node.nodes]
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
        sql = f"{sql} EXCEPT SELECT label, modality FROM ({more_sql}) AS s"
        params = [*params, *more]
    return sql, params, isinstance(node, Any_)


def _joined(parts: list[tuple[str, list[Any]]], joiner: str) -> tuple[str, list[Any]]:
    if len(parts) == 1:
        return parts[0]
    sql = joiner.join(f"SELECT label, modality FROM ({p[0]}) AS s" for p in parts)
    return sql, [x for p in parts for x in p[1]]


def _cond_sql(cond: Cond, scope: Scope) -> tuple[str, list[Any]]:
    field, params = scope.field()
    params = [*params, cond.key]
    if cond.op == "exists":
        return field, params
    if cond.op == "in":
        parts = []
        bound_all: list[Any] = []
        for family in ("number", "string", "bool", "null"):
            members = [x for x in cond.value if kind(x) == family]
            if not members:
                continue
            if family == "null":
                parts.append(f"{field} AND kind = 'z'")
                bound_all += params
            else:
                condition, bound = scope.compare(family, "IN", members)
                parts.append(f"{field} AND kind = ? AND {condition}")
                bound_all += [*params, _KINDS[family], *bound]
        return " UNION ".join(parts), bound_all
    family = kind(cond.value)
    if family == "null":  # $eq null (ranges refuse null when parsed)
        return f"{field} AND kind = 'z'", params
    op = "=" if cond.op == "eq" else _SQL_OPS[cond.op]
    condition, bound = scope.compare(family, op, [cond.value])
    return f"{field} AND kind = ? AND {condition}", [*params, _KINDS[family], *bound]


def stored_compare(family: str, op: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """SQLite's comparison: one ``value`` column without type affinity, booleans as 1 and
    0, every value as it is."""
    bound = [int(v) if isinstance(v, bool) else v for v in values]
    if op == "IN":
        return f"value IN ({', '.join('?' * len(bound))})", bound
    return f"value {op} ?", bound
