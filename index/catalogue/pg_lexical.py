"""Lexical search on PostgreSQL: its full-text search, configured to match words as the
SQLite catalogue's FTS5 ``unicode61`` tokenizer does.

- **Tokens.** A text is cut at ASCII punctuation and spaces before PostgreSQL's parser
  reads it (which would otherwise keep ``photo.jpg``, ``a@b.c`` or ``1.5`` whole), and
  the query's words are cut the same way; letters and digits of every script stay words.
- **Case and accents.** The ``xmodal`` configuration runs each word through ``unaccent``
  then ``simple`` (lower case, no stemming, no stop words): ``Café`` matches ``cafe``, as
  FTS5's ``remove_diacritics`` does.
- **Matching.** As on SQLite: the query's words as one phrase, or any of them.
- **Ranking.** ``ts_rank`` (how often the query's words occur, each text on its own),
  higher first, ties by label. It is not BM25: it has no corpus statistics (a rare word
  weighs no more than a common one) and no length normalisation, so two texts that both
  match may come in another order than on SQLite; which texts match is the same.
- Texts live in a generated ``tsvector`` column of ``items`` with a GIN index, written in
  the item's own transaction: nothing to create, move or drop per collection.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from index.catalogue.base import Conn
from index.catalogue.lexical import words

CONFIG = "xmodal"
# What is cut before PostgreSQL's parser reads a text (an ASCII punctuation or space run).
_CUT = r"[[:punct:][:space:]]+"
DOCUMENT = (
    f"to_tsvector('{CONFIG}'::regconfig, regexp_replace("
    f"CASE WHEN modality = 'text' THEN COALESCE(text, '') ELSE '' END, '{_CUT}', ' ', 'g'))"
)
_WORD_TYPES = (
    "asciiword, word, numword, asciihword, hword, numhword, hword_asciipart, hword_part,"
    " hword_numpart"
)


def create_configuration(conn: Conn) -> None:
    """The ``xmodal`` text search configuration, if missing (with ``unaccent``, which a
    database owner may install: it is a trusted extension)."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS unaccent")
    exists = conn.execute("SELECT 1 FROM pg_ts_config WHERE cfgname = ?", (CONFIG,)).fetchone()
    if exists is None:
        conn.execute(f"CREATE TEXT SEARCH CONFIGURATION {CONFIG} (COPY = simple)")
        conn.execute(
            f"ALTER TEXT SEARCH CONFIGURATION {CONFIG} ALTER MAPPING FOR {_WORD_TYPES}"
            " WITH unaccent, simple"
        )


def _phrase() -> str:
    return f"phraseto_tsquery('{CONFIG}'::regconfig, regexp_replace(?, '{_CUT}', ' ', 'g'))"


def labels(
    conn: Conn, collection: str, text: str, depth: int, allowed: np.ndarray | None
) -> list[tuple[int, float]]:
    """The best ``depth`` text items of ``collection`` for ``text``, as (label, score),
    best first; ``allowed`` (sorted labels) keeps only those."""
    found = words(text)
    if not found or (allowed is not None and not len(allowed)):
        return []
    # The words as one phrase, or any of them: each bound, and cut as the texts were.
    parts = [" ".join(found), *found] if len(found) > 1 else found
    query = " || ".join(_phrase() for _ in parts)
    params: list[Any] = [*parts, collection]
    sql = (
        f"SELECT label, ts_rank(words, q) AS score FROM items, ({'SELECT ' + query}) AS w(q)"
        " WHERE collection = ? AND modality = 'text' AND words @@ q"
    )
    if allowed is not None:
        sql += " AND label = ANY(?)"
        params.append(allowed.tolist())
    sql += " ORDER BY score DESC, label LIMIT ?"
    params.append(depth)
    return [(int(label), float(score)) for label, score in conn.execute(sql, params)]
