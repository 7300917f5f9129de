"""Metadata typed as PostgreSQL's ``item_fields`` holds it: numbers exact (``numeric``),
strings as UTF-8 bytes (code-point order, as SQLite compares them), a list's values once
each; how a filter's comparison reads those columns; and the upgrade that gave lists'
values their rows (schema version 2)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from index.catalogue.base import Conn

STR_INDEXED = 1000  # bytes of a metadata string the index holds (pg_schema)


def compare(family: str, op: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """Numbers in ``num`` (exact); strings by their first ``STR_INDEXED`` bytes, which
    the index holds (a B-tree entry has at most 2,704 bytes: a long string whole would
    not fit), then whole: ``prefix(str) >= prefix(v)`` holds wherever ``str > v``."""
    if family != "string":
        bound = [exact(v) for v in values]
        if op == "IN":
            return f"num IN ({', '.join('?' * len(bound))})", bound
        return f"num {op} ?", bound
    raw = [v.encode("utf-8") for v in values]
    head = f"substr(str, 1, {STR_INDEXED})"
    cut = f"substr(?::bytea, 1, {STR_INDEXED})"
    if op == "IN":
        marks = ", ".join("?" * len(raw))
        heads = ", ".join([cut] * len(raw))
        return f"{head} IN ({heads}) AND str IN ({marks})", [*raw, *raw]
    loose = {">": ">=", "<": "<="}.get(op, op)
    return f"{head} {loose} {cut} AND str {op} ?", [raw[0], raw[0]]


def exact(value: Any) -> int | Decimal:
    """A JSON number (or boolean, as 0 or 1) as ``numeric`` holds it exactly."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return Decimal(value)  # the float's exact binary value
    return int(value)


Typed = tuple[str, int | Decimal | None, bytes | None]


def list_values(conn: Conn) -> None:
    """The upgrade to schema version 2: rows for the values of the lists items hold."""
    rows = conn.execute(
        "SELECT label, collection, modality, metadata FROM items WHERE metadata LIKE '%[%'"
    ).fetchall()
    for label, collection, modality, text in rows:
        metadata = json.loads(text)
        for key, value, typed in field_rows(metadata):
            if isinstance(metadata[key], list) and not isinstance(value, list):
                conn.execute(
                    "INSERT INTO item_fields (label, key, kind, num, str, collection, modality)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (label, key, *typed, collection, modality),
                )


def field_rows(metadata: dict[str, Any]) -> list[tuple[str, Any, Typed]]:
    """``item_fields``' rows of one item: each top-level value typed, and each scalar
    value of a top-level list once more (once each: a condition holds for a list when it
    holds for one of its values)."""
    out = []
    for key, value in metadata.items():
        out.append((key, value, typed_value(value)))
        if isinstance(value, list):
            seen = set()
            for element in value:
                if isinstance(element, (list, dict)):
                    continue
                typed = typed_value(element)
                if typed not in seen:
                    seen.add(typed)
                    out.append((key, element, typed))
    return out


def typed_value(value: Any) -> Typed:
    """``item_fields``' kind, number and string of a top-level metadata value."""
    if value is None:
        return "z", None, None
    if isinstance(value, bool):
        return "b", int(value), None
    if isinstance(value, (int, float)):
        return "n", exact(value), None
    if isinstance(value, str):
        return "s", None, value.encode("utf-8")
    return "a", None, None
