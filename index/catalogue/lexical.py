"""Lexical search of a collection's texts: SQLite FTS5, ranked by BM25.

Each collection has a full-text table of its own (``table_of``), holding each of its
text items' text under its label, written and deleted by triggers in the item's own
transaction, created with the collection, swapped with it and dropped with it, and built
from ``items`` when a database from before it is opened. A query's words (letters and
digits, case and accents folded by the ``unicode61`` tokenizer) are matched as a phrase
or one by one, so a text
naming the exact product code or rare word ranks first, and more words matched rank
higher. BM25's word statistics, and the matching, are the collection's own: what another
collection holds changes neither which texts match nor their scores.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3

import numpy as np

MAX_TERMS = 32  # words of a query matched; more are ignored
_ROWS_PER_READ = 1024  # ranked rows read at a time when a filter keeps some of them
_WORD = re.compile(r"\w+")

OLD_TABLE = "item_texts"  # one table for every collection, before tables per collection
_OLD_TRIGGERS = ("item_texts_added", "item_texts_removed", "item_texts_changed")


def table_of(collection: str) -> str:
    """The name of ``collection``'s full-text table (a digest: any name makes a plain
    identifier)."""
    return "lexical_" + hashlib.sha256(collection.encode("utf-8")).hexdigest()[:32]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_lexical(conn: sqlite3.Connection, collection: str, backfill: bool = False) -> None:
    """The collection's full-text table and the triggers that keep it in the item's own
    transaction (``backfill``: filled from the items it holds already)."""
    t, name = table_of(collection), _literal(collection)
    conn.execute(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {t} USING fts5("
        "text, tokenize = 'unicode61 remove_diacritics 2')"
    )
    conn.execute(
        f"CREATE TRIGGER IF NOT EXISTS {t}_added AFTER INSERT ON items"
        f" WHEN new.collection = {name} AND new.modality = 'text' AND new.text IS NOT NULL"
        f" BEGIN INSERT INTO {t} (rowid, text) VALUES (new.label, new.text); END"
    )
    conn.execute(
        f"CREATE TRIGGER IF NOT EXISTS {t}_removed AFTER DELETE ON items"
        f" WHEN old.collection = {name} AND old.modality = 'text'"
        f" BEGIN DELETE FROM {t} WHERE rowid = old.label; END"
    )
    conn.execute(
        f"CREATE TRIGGER IF NOT EXISTS {t}_changed AFTER UPDATE OF text ON items"
        f" WHEN new.collection = {name} AND new.modality = 'text' BEGIN"
        f" DELETE FROM {t} WHERE rowid = old.label;"
        f" INSERT INTO {t} (rowid, text) VALUES (new.label, COALESCE(new.text, '')); END"
    )
    if backfill:
        conn.execute(
            f"INSERT INTO {t} (rowid, text) SELECT label, text FROM items"
            " WHERE collection = ? AND modality = 'text' AND text IS NOT NULL",
            (collection,),
        )


def _drop_triggers(conn: sqlite3.Connection, collection: str) -> None:
    t = table_of(collection)
    for suffix in ("added", "removed", "changed"):
        conn.execute(f"DROP TRIGGER IF EXISTS {t}_{suffix}")


def drop_lexical(conn: sqlite3.Connection, collection: str) -> None:
    """Drop the collection's table and triggers (before its items are deleted: no trigger
    then deletes their texts one by one)."""
    _drop_triggers(conn, collection)
    conn.execute(f"DROP TABLE IF EXISTS {table_of(collection)}")


def move_lexical(conn: sqlite3.Connection, collection: str, copy: str) -> None:
    """The hidden ``copy``'s table becomes ``collection``'s (swapped in under its name)."""
    drop_lexical(conn, collection)
    _drop_triggers(conn, copy)
    conn.execute(f"ALTER TABLE {table_of(copy)} RENAME TO {table_of(collection)}")
    create_lexical(conn, collection)


def ensure_lexical(conn: sqlite3.Connection) -> None:
    """Every collection with its table: a database from before tables per collection (or
    before lexical search) gets them built from the items it holds."""
    if conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (OLD_TABLE,)
    ).fetchone():
        for trigger in _OLD_TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        conn.execute(f"DROP TABLE {OLD_TABLE}")
    names = [n for (n,) in conn.execute("SELECT name FROM collections")]
    for name in names:
        if not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table_of(name),)
        ).fetchone():
            create_lexical(conn, name, backfill=True)


def words(text: str) -> list[str]:
    """The words of ``text`` a query matches (at most ``MAX_TERMS``)."""
    return _WORD.findall(text)[:MAX_TERMS]


def match_expression(text: str) -> str | None:
    """An FTS5 query for ``text``: its words as one phrase, or any of them (each quoted,
    so no word is read as an operator); None when it has no word."""
    found = words(text)
    if not found:
        return None
    quoted = ['"' + w.replace('"', '""') + '"' for w in found]
    if len(quoted) == 1:
        return quoted[0]
    return f"({' '.join(quoted)}) OR " + " OR ".join(quoted)


def lexical_labels(
    conn: sqlite3.Connection,
    collection: str,
    text: str,
    depth: int,
    allowed: np.ndarray | None = None,
) -> list[tuple[int, float]]:
    """The best ``depth`` text items of ``collection`` for ``text`` by BM25, as (label,
    score), best first (score: BM25 relevance, higher is better; ties by label);
    ``allowed`` (sorted labels, a filter's) keeps only those."""
    expression = match_expression(text)
    if expression is None or (allowed is not None and not len(allowed)):
        return []
    t = table_of(collection)
    sql = f"SELECT rowid, -bm25({t}) AS score FROM {t} WHERE {t} MATCH ? ORDER BY score DESC, rowid"
    if allowed is None:
        rows = conn.execute(f"{sql} LIMIT ?", (expression, depth)).fetchall()
        return [(int(label), float(score)) for label, score in rows]
    # The ranking is read best first and cut once ``depth`` allowed labels are in: the
    # filter's rows were read once already, for every ranking of the search.
    cursor = conn.execute(sql, (expression,))
    out: list[tuple[int, float]] = []
    while len(out) < depth:
        rows = cursor.fetchmany(_ROWS_PER_READ)
        if not rows:
            break
        labels = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        at = np.minimum(np.searchsorted(allowed, labels), len(allowed) - 1)
        kept = allowed[at] == labels
        out += [(int(r[0]), float(r[1])) for r, keep in zip(rows, kept, strict=True) if keep]
    return out[:depth]
