"""PostgreSQL's catalogue records its schema version and upgrades it in place, as the
SQLite one migrates its file; a server older than the schema refuses to start, saying
why, rather than write rows it does not understand."""

from __future__ import annotations

import psycopg
import pytest

import index.catalogue.pg_schema as pg_schema
from bench.postgres import PgCluster
from index import CatalogueUnavailable
from index.catalogue.pg_schema import VERSION
from index.catalogue.postgres import PostgresDatabase, masked


def version(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version FROM xmodal_schema").fetchone()
        assert row is not None
        return int(row[0])


def test_the_schema_version_is_recorded_upgraded_and_refused_when_newer(
    pg: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg.database()
    PostgresDatabase(url).close()
    assert version(url) == VERSION
    # An upgrade to the next version runs its statements once, in place.
    monkeypatch.setattr(pg_schema, "VERSION", VERSION + 1)
    monkeypatch.setattr(
        pg_schema, "UPGRADES", {VERSION + 1: ["ALTER TABLE jobs ADD COLUMN note TEXT"]}
    )
    PostgresDatabase(url).close()
    PostgresDatabase(url).close()  # nothing left to do
    assert version(url) == VERSION + 1
    monkeypatch.undo()
    with pytest.raises(CatalogueUnavailable, match="newer than this server"):
        PostgresDatabase(url)


def test_an_unreachable_server_is_named_without_its_password() -> None:
    url = "postgresql://xm:very-secret-pw@127.0.0.1:9/xmodal?connect_timeout=2"
    with pytest.raises(CatalogueUnavailable) as caught:
        PostgresDatabase(url)
    assert "PostgreSQL" in str(caught.value) and "very-secret-pw" not in str(caught.value)
    assert masked(url) == "postgresql://xm:***@127.0.0.1:9/xmodal?connect_timeout=2"
