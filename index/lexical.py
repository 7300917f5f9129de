"""Lexical search of a collection's texts: SQLite FTS5, ranked by BM25.

``item_texts`` holds each text item's text under its label, written and deleted by
triggers in the item's own transaction (``index.db``), and built from ``items`` when a
database from before it is opened. A query's words (letters and digits, case and accents
folded by the ``unicode61`` tokenizer) are matched as a phrase or one by one, so a text
naming the exact product code or rare word ranks first, and more words matched rank
higher. BM25's word statistics are those of every collection in the data dir.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from index.filter_tree import parse
from index.filters import labels_sql
from index.types import Modality

MAX_TERMS = 32  # words of a query matched; more are ignored
_WORD = re.compile(r"\w+")

LEXICAL_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS item_texts USING fts5(
    text, tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS item_texts_added AFTER INSERT ON items
WHEN new.modality = 'text' AND new.text IS NOT NULL BEGIN
    INSERT INTO item_texts (rowid, text) VALUES (new.label, new.text);
END;
CREATE TRIGGER IF NOT EXISTS item_texts_removed AFTER DELETE ON items
WHEN old.modality = 'text' BEGIN
    DELETE FROM item_texts WHERE rowid = old.label;
END;
CREATE TRIGGER IF NOT EXISTS item_texts_changed AFTER UPDATE OF text ON items
WHEN new.modality = 'text' BEGIN
    DELETE FROM item_texts WHERE rowid = old.label;
    INSERT INTO item_texts (rowid, text) VALUES (new.label, COALESCE(new.text, ''));
END
"""
BACKFILL = (
    "INSERT INTO item_texts (rowid, text) SELECT label, text FROM items"
    " WHERE modality = 'text' AND text IS NOT NULL"
)


def match_expression(text: str) -> str | None:
    """An FTS5 query for ``text``: its words as one phrase, or any of them (each quoted,
    so no word is read as an operator); None when it has no word."""
    words = _WORD.findall(text)[:MAX_TERMS]
    if not words:
        return None
    quoted = ['"' + w.replace('"', '""') + '"' for w in words]
    if len(quoted) == 1:
        return quoted[0]
    return f"({' '.join(quoted)}) OR " + " OR ".join(quoted)


def lexical_labels(
    conn: sqlite3.Connection,
    collection: str,
    text: str,
    depth: int,
    where: dict[str, Any] | None = None,
) -> list[tuple[int, float]]:
    """The best ``depth`` text items of ``collection`` for ``text`` by BM25, as (label,
    score), best first (score: BM25 relevance, higher is better; ties by label)."""
    expression = match_expression(text)
    if expression is None:
        return []
    params: list[Any] = [expression, collection, Modality.TEXT.value]
    sql = (
        "SELECT items.label, -bm25(item_texts) AS score FROM item_texts"
        " JOIN items ON items.label = item_texts.rowid"
        " WHERE item_texts MATCH ? AND items.collection = ? AND items.modality = ?"
    )
    if where:
        scope = (
            "SELECT label FROM items WHERE collection = ? AND modality = ?",
            [collection, Modality.TEXT.value],
        )
        chosen, more = labels_sql(parse(where), scope)
        sql += f" AND items.label IN ({chosen})"
        params += more
    sql += " ORDER BY score DESC, items.label LIMIT ?"
    params.append(depth)
    return [(int(label), float(score)) for label, score in conn.execute(sql, params)]
