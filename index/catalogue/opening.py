"""Which catalogue a store opens: PostgreSQL when a database URL is given, else SQLite
under the data dir."""

from __future__ import annotations

from pathlib import Path

from index.catalogue.base import Catalogue
from index.catalogue.db import DB_FILE, SqliteDatabase


def open_catalogue(data_dir: Path, url: str | None = None) -> Catalogue:
    """The catalogue at ``url`` (``postgresql://...``), or ``<data_dir>/xmodal.sqlite3``."""
    if url:
        from index.catalogue.postgres import PostgresDatabase  # psycopg only when used

        return PostgresDatabase(url)
    return SqliteDatabase(Path(data_dir) / DB_FILE)
