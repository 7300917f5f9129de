"""The queries and row mapping both catalogues share (SQLite's, ``index.catalogue.db``,
and PostgreSQL's, ``index.catalogue.postgres``): statements written once, with ``?``
placeholders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from index.catalogue.base import Catalogue, Conn
from index.types import Item, Modality, StoredItem, StoredVersion

INSERT_ITEM = (
    "INSERT INTO items (collection, id, modality, metadata, text, content_sha256, media_type,"
    " embedding, raw_embedding, model_version, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING label"
)
SQL_CHUNK = 500  # values per IN (...) query
ITEM_COLUMNS = "id, modality, metadata, text, content_sha256, media_type, model_version, created_at"
STORED_COLUMNS = (
    "label, id, modality, metadata, text, content_sha256, media_type, embedding,"
    " raw_embedding, created_at"
)


def find_item(conn: Conn, collection: str, item_id: str) -> tuple[int, str, str | None] | None:
    """The label, modality and image digest of an item, if it exists."""
    row: tuple[int, str, str | None] | None = conn.execute(
        "SELECT label, modality, content_sha256 FROM items WHERE collection = ? AND id = ?",
        (collection, item_id),
    ).fetchone()
    return row


def find_items(
    conn: Conn, collection: str, ids: Sequence[str]
) -> dict[str, tuple[int, str, str | None]]:
    """The label, modality and image digest of each of ``ids`` that exists."""
    out: dict[str, tuple[int, str, str | None]] = {}
    for start in range(0, len(ids), SQL_CHUNK):
        chunk = list(ids[start : start + SQL_CHUNK])
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            "SELECT id, label, modality, content_sha256 FROM items"
            f" WHERE collection = ? AND id IN ({marks})",
            [collection, *chunk],
        ):
            out[row[0]] = (int(row[1]), row[2], row[3])
    return out


def delete_rows(db: Catalogue, conn: Conn, collection: str) -> list[str]:
    """Delete a collection's rows; returns the image digests its items referred to."""
    db.lexical_dropped(conn, collection)
    digests = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT content_sha256 FROM items"
            " WHERE collection = ? AND content_sha256 IS NOT NULL",
            (collection,),
        )
    ]
    conn.execute("DELETE FROM items WHERE collection = ?", (collection,))
    conn.execute("DELETE FROM tombstones WHERE collection = ?", (collection,))
    for table in ("index_reports", "tombstones_pruned"):
        conn.execute(
            f"DELETE FROM {table} WHERE uid IN (SELECT uid FROM collections WHERE name = ?)",
            (collection,),
        )
    conn.execute("DELETE FROM collections WHERE name = ?", (collection,))
    return digests


def max_label(conn: Conn) -> int:
    row = conn.execute("SELECT MAX(label) FROM items").fetchone()
    return int(row[0] or 0)


def max_tombstone(conn: Conn) -> int:
    row = conn.execute("SELECT MAX(seq) FROM tombstones").fetchone()
    return int(row[0] or 0)


def load_vectors(
    conn: Conn,
    collection: str,
    modality: Modality,
    dim: int,
    *,
    min_label: int = 0,
    max_label: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and embeddings of one modality of a collection, in label order."""
    sql = "SELECT label, embedding FROM items WHERE collection = ? AND modality = ? AND label > ?"
    params: list[Any] = [collection, modality.value, min_label]
    if max_label is not None:
        sql += " AND label <= ?"
        params.append(max_label)
    labels: list[int] = []
    chunks: list[bytes] = []
    for label, blob in conn.execute(sql + " ORDER BY label", params):
        labels.append(label)
        chunks.append(blob)
    if not labels:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    xb = np.frombuffer(b"".join(chunks), dtype=np.float32).reshape(len(labels), -1)
    return np.array(labels, dtype=np.int64), xb


def item_from_row(row: Sequence[Any]) -> Item:
    """An ``Item`` from a row of ``ITEM_COLUMNS``."""
    return Item(
        id=row[0],
        modality=Modality(row[1]),
        metadata=json.loads(row[2]),
        text=row[3],
        content_sha256=row[4],
        media_type=row[5],
        model_version=row[6],
        created_at=row[7],
    )


def stored_item_from_row(r: Sequence[Any]) -> StoredItem:
    """A ``StoredItem`` from a row of ``STORED_COLUMNS``."""
    return StoredItem(
        label=int(r[0]),
        id=r[1],
        modality=Modality(r[2]),
        metadata=json.loads(r[3]),
        text=r[4],
        content_sha256=r[5],
        media_type=r[6],
        embedding=np.frombuffer(r[7], dtype=np.float32),
        raw_embedding=None if r[8] is None else np.frombuffer(r[8], dtype=np.float32),
        created_at=r[9],
    )


def dumps(value: Any) -> str:
    """Metadata as stored: compact JSON, unicode kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def count_items(conn: Conn, collection: str) -> dict[Modality, int]:
    counts = dict.fromkeys(Modality, 0)
    for modality, n in conn.execute(
        "SELECT modality, COUNT(*) FROM items WHERE collection = ? GROUP BY modality",
        (collection,),
    ):
        counts[Modality(modality)] = n
    return counts


def hit_rows(
    conn: Conn, labels: Sequence[int], vectors: bool = False
) -> dict[int, tuple[Any, ...]]:
    """``(label, id, modality, metadata, text)`` of each of ``labels`` still stored, with
    the stored vector's bytes last if ``vectors``."""
    rows: dict[int, tuple[Any, ...]] = {}
    columns = "label, id, modality, metadata, text" + (", embedding" if vectors else "")
    if getattr(conn, "array_params", False):  # PostgreSQL: the labels as one array
        sql = f"SELECT {columns} FROM items WHERE label = ANY(?)"
        for row in conn.execute(sql, [[int(x) for x in labels]]):
            rows[int(row[0])] = tuple(row)
        return rows
    for start in range(0, len(labels), SQL_CHUNK):
        chunk = list(labels[start : start + SQL_CHUNK])
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT {columns} FROM items WHERE label IN ({marks})"
        for row in conn.execute(sql, chunk):
            rows[int(row[0])] = tuple(row)
    return rows


def stored_versions(conn: Conn, collection: str, ids: Sequence[str]) -> dict[str, StoredVersion]:
    """What is stored under each of ``ids`` that exists."""
    out: dict[str, StoredVersion] = {}
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), SQL_CHUNK):
        chunk = unique[start : start + SQL_CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            "SELECT id, modality, content_sha256, text, model_version FROM items"
            f" WHERE collection = ? AND id IN ({marks})",
            [collection, *chunk],
        ):
            out[row[0]] = StoredVersion(Modality(row[1]), row[2], row[3], row[4])
    return out
