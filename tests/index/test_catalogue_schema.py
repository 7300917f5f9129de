"""PostgreSQL's catalogue records its schema version and upgrades it in place, as the
SQLite one migrates its file; a server older than the schema refuses to start, saying
why, rather than write rows it does not understand."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

import index.catalogue.pg_schema as pg_schema
from bench.postgres import PgCluster
from index import CatalogueUnavailable, CollectionStore, Modality, NewItem
from index.catalogue.pg_schema import VERSION
from index.catalogue.postgres import PostgresDatabase, masked
from tests.stores import CPU, D, V, normalised


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


def test_the_upgrade_to_version_2_gives_lists_values_rows(pg: PgCluster, tmp_path: Path) -> None:
    """A version 1 catalogue (a list written as one row) is upgraded in place: its lists'
    values get rows, so conditions hold for one of a list's values there too."""
    url = pg.database()
    store = CollectionStore(tmp_path / "d1", backends=CPU, database_url=url)
    store.create_collection("c", D, V)
    metas = [{"labels": ["red", "circle"]}, {"labels": ["blue", 2.5]}, {"labels": "red"}]
    items = [NewItem(f"t{i}", Modality.TEXT, m, text="t") for i, m in enumerate(metas)]
    store.upsert("c", items, normalised(3, 1), V)
    store.close()
    with psycopg.connect(url, autocommit=True) as conn:  # as version 1 left it
        conn.execute("DELETE FROM item_fields WHERE key = 'labels' AND kind <> 'a'")
        conn.execute(
            "INSERT INTO item_fields (label, key, kind, str, collection, modality)"
            " SELECT label, 'labels', 's', convert_to('red', 'UTF8'), collection, modality"
            " FROM items WHERE id = 't2'"
        )
        conn.execute("UPDATE xmodal_schema SET version = 1")
    store = CollectionStore(tmp_path / "d2", backends=CPU, database_url=url)
    try:
        assert version(url) == VERSION

        def found(where: dict[str, object]) -> list[str]:
            (hits,) = store.search(
                "c", Modality.TEXT, normalised(1, 9), 9, model_version=V, where=where
            )
            return sorted(h.id for h in hits)

        assert found({"labels": "red"}) == ["t0", "t2"]
        assert found({"labels": {"$gt": 2}}) == ["t1"]
        assert found({"labels": {"$nin": ["red", "blue"]}}) == []
    finally:
        store.close()
