"""Metadata filters as SQL: which items of a collection and modality have each key equal to
its value. Values are bound as parameters, never pasted into the statement."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import numpy as np

from index.types import Modality
from index.values import check_filter


def filter_labels(
    conn: sqlite3.Connection, collection: str, modality: Modality, where: dict[str, Any]
) -> np.ndarray:
    """The labels of the items that match every key of ``where`` (``InvalidFilter`` for a
    filter that cannot match anything faithfully)."""
    check_filter(where)
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in where.items():
        if json.dumps(key, ensure_ascii=False)[1:-1] != key:
            # SQLite matches a path's key against the stored (escaped) text, and cannot
            # quote '"' at all: keys that JSON escapes are matched by value instead.
            test = "type = 'null'" if value is None else "value = ?"
            clauses.append(f"EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = ? AND {test})")
            params.extend([key] if value is None else [key, value])
        elif value is None:
            clauses.append("json_type(metadata, ?) = 'null'")
            params.append(f'$."{key}"')
        else:
            clauses.append("json_extract(metadata, ?) = ?")
            params.extend([f'$."{key}"', value])
    sql = "SELECT label FROM items WHERE collection = ? AND modality = ? AND " + " AND ".join(
        clauses
    )
    rows = conn.execute(sql, [collection, modality.value, *params]).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64)
