"""Facets: the most frequent values of metadata keys among a collection's items of one
modality that pass a filter, counted in the catalogue (``item_fields``), so the answer is
the same whatever the vector backend. Values count as filters compare them: numbers by
value (``2`` and ``2.0`` are one), strings exactly, booleans apart; a list counts each of
its values once (labels, tags); null and objects are not counted. Reads stop at the
caller's deadline."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from index.catalogue.base import Catalogue
from index.catalogue.filters import Scope, labels_sql
from index.filter_tree import Node
from index.live import LiveCollection
from index.types import Modality


def facet_counts(
    c: LiveCollection,
    db: Catalogue,
    modality: Modality,
    keys: Sequence[str],
    where: Node | None,
    limit: int,
    deadline: float | None = None,
) -> dict[str, list[tuple[Any, int]]]:
    """For each key, its ``limit`` most frequent values and their counts, most first
    (ties by kind, then value)."""
    fields = "collection = ? AND modality = ? AND key = ? AND kind IN ('n', 's', 'b')"
    base: list[Any] = [c.name, modality.value]
    chosen: tuple[str, list[Any]] | None = None
    if where is not None:
        scope = Scope(c.name, (modality.value,), db.field_compare)
        sql, params = labels_sql(where, scope)
        chosen = (f" AND label IN (SELECT label FROM ({sql}) AS s)", params)
    out: dict[str, list[tuple[Any, int]]] = {}
    conn = db.reader()
    with db.deadline(conn, deadline):
        for key in keys:
            clause, params = fields, [*base, key]
            if chosen is not None:
                clause, params = clause + chosen[0], [*params, *chosen[1]]
            rows = db.facet_counts(conn, clause, params, limit)
            out[key] = [(_value(kind, value), n) for kind, value, n in rows]
    return out


def _value(kind: str, stored: Any) -> Any:
    if kind == "b":
        return bool(int(stored))
    if kind == "s":
        return str(stored)
    number = Decimal(str(stored)) if not isinstance(stored, Decimal) else stored
    return int(number) if number == number.to_integral_value() else float(number)
