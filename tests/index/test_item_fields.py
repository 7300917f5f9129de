"""The typed index of metadata keys that filters read (``item_fields``): kept by triggers
in the item's own transaction through replacements and deletes, and built for a database
written before it existed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from index import CollectionStore, Modality, NewItem
from index.catalogue.db import DB_FILE
from index.catalogue.lexical import table_of
from index.catalogue.sqlite_schema import FIELD_TRIGGERS
from tests.stores import CPU, D, V, normalised


def fields(data: Path) -> list[tuple[int, str, str, object]]:
    with sqlite3.connect(data / DB_FILE) as conn:
        return sorted(conn.execute("SELECT label, key, kind, value FROM item_fields"))


def labels(store: CollectionStore, where: dict[str, object]) -> list[str]:
    (hits,) = store.search("c", Modality.TEXT, normalised(1, 3), 50, model_version=V, where=where)
    return sorted(h.id for h in hits)


def test_fields_follow_writes_replacements_and_deletes(tmp_path: Path) -> None:
    data = tmp_path / "d"
    store = CollectionStore(data, backends=CPU)
    try:
        store.create_collection("c", D, V)
        meta = {"n": 2, "s": "x", "b": True, "z": None, "a": [1, "v", 1, [2]], 'q"k': 1.5}
        store.upsert("c", [NewItem("t1", Modality.TEXT, meta, text="one")], normalised(1, 1), V)
        ((label, *_),) = {row[:1] for row in fields(data)}
        assert fields(data) == sorted(
            [
                (label, "n", "n", 2),
                (label, "s", "s", "x"),
                (label, "b", "b", 1),
                (label, "z", "z", None),
                (label, "a", "a", None),
                (label, "a", "n", 1),  # a list's values, once each (not the list in it)
                (label, "a", "s", "v"),
                (label, 'q"k', "n", 1.5),
            ]
        )
        # Replaced: the old item's fields go with it, in the same transaction.
        store.upsert("c", [NewItem("t1", Modality.TEXT, {"n": 3}, text="one")], normalised(1, 2), V)
        assert [row[1:] for row in fields(data)] == [("n", "n", 3)]
        assert labels(store, {"n": {"$gt": 2}}) == ["t1"] and labels(store, {"s": "x"}) == []
        store.delete_item("c", "t1")
        assert fields(data) == []
        store.upsert("c", [NewItem("t2", Modality.TEXT, {"n": 1}, text="two")], normalised(1, 4), V)
        store.delete_collection("c")
        assert fields(data) == []
    finally:
        store.close()


def test_a_database_from_before_the_field_index_gets_one_on_opening(tmp_path: Path) -> None:
    data = tmp_path / "d"
    store = CollectionStore(data, backends=CPU)
    store.create_collection("c", D, V)
    items = [NewItem(f"t{i}", Modality.TEXT, {"year": 2018 + i}, text=f"t{i}") for i in range(6)]
    store.upsert("c", items, normalised(6, 1), V)
    store.close()
    with sqlite3.connect(data / DB_FILE) as conn:  # as an older version left it
        for trigger in FIELD_TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE item_fields")
    store = CollectionStore(data, backends=CPU)
    try:
        assert len(fields(data)) == 6
        assert labels(store, {"year": {"$gte": 2021}}) == ["t3", "t4", "t5"]
    finally:
        store.close()


def test_fields_from_before_they_knew_their_collection_are_built_again(tmp_path: Path) -> None:
    """A database whose item_fields has no collection (the shape before filters read
    their own collection's rows only) gets the table built again from its items."""
    data = tmp_path / "d"
    store = CollectionStore(data, backends=CPU)
    for name in ("c", "other"):
        store.create_collection(name, D, V)
        items = [NewItem(f"t{i}", Modality.TEXT, {"year": 2018 + i}, text="t") for i in range(6)]
        store.upsert(name, items, normalised(6, 1), V)
    store.close()
    with sqlite3.connect(data / DB_FILE) as conn:  # the older shape, and its index
        for trigger in FIELD_TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE item_fields")
        conn.execute("CREATE TABLE item_fields (label INTEGER, key TEXT, kind TEXT, value)")
        conn.execute("CREATE INDEX item_fields_by_value ON item_fields (key, kind, value)")
        conn.execute("INSERT INTO item_fields VALUES (1, 'year', 'n', 1999)")  # stale: dropped
    store = CollectionStore(data, backends=CPU)
    try:
        with sqlite3.connect(data / DB_FILE) as conn:
            rows = conn.execute("SELECT collection, COUNT(*) FROM item_fields GROUP BY 1")
            assert sorted(rows) == [("c", 6), ("other", 6)]
        assert labels(store, {"year": {"$gte": 2021}}) == ["t3", "t4", "t5"]
        assert labels(store, {"year": 1999}) == []
    finally:
        store.close()


def test_the_lexical_index_follows_texts_and_is_built_for_an_older_database(
    tmp_path: Path,
) -> None:
    data = tmp_path / "d"
    store = CollectionStore(data, backends=CPU)
    store.create_collection("c", D, V)
    texts = ["red shoe AB-1234", "red shoe AB-1235", "a café in Zürich"]
    items = [NewItem(f"t{i}", Modality.TEXT, {"n": i}, text=t) for i, t in enumerate(texts)]
    store.upsert("c", items, normalised(3, 1), V)
    store.upsert("c", [NewItem("img", Modality.IMAGE, {}, content=b"x")], normalised(1, 2), V)
    assert [h.id for h in store.lexical("c", "AB-1235", 10)][:1] == ["t1"]
    assert [h.id for h in store.lexical("c", "cafe zurich", 10)] == ["t2"]  # accents folded
    store.upsert("c", [NewItem("t1", Modality.TEXT, {}, text="blue boot")], normalised(1, 3), V)
    assert [h.id for h in store.lexical("c", "AB-1235", 10)] == ["t0"]  # the old text is gone
    store.close()
    with sqlite3.connect(data / DB_FILE) as conn:  # as the version of one shared table left it
        t = table_of("c")
        for trigger in ("added", "removed", "changed"):
            conn.execute(f"DROP TRIGGER {t}_{trigger}")
        conn.execute(f"DROP TABLE {t}")
        conn.execute("CREATE VIRTUAL TABLE item_texts USING fts5(text)")
        conn.execute(
            "CREATE TRIGGER item_texts_added AFTER INSERT ON items BEGIN"
            " INSERT INTO item_texts (rowid, text) VALUES (new.label, new.text); END"
        )
    store = CollectionStore(data, backends=CPU)
    try:
        assert [h.id for h in store.lexical("c", "boot", 10)] == ["t1"]
        assert [h.id for h in store.lexical("c", "shoe", 10, {"n": 0})] == ["t0"]
        store.upsert("c", [NewItem("t9", Modality.TEXT, {}, text="a boot")], normalised(1, 4), V)
        assert {h.id for h in store.lexical("c", "boot", 10)} == {"t1", "t9"}
        conn = store.db.reader()
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'item_texts'").fetchone()
    finally:
        store.close()


def test_lexical_matching_and_statistics_are_each_collections_own(tmp_path: Path) -> None:
    """What collection b holds changes neither what a's lexical search matches nor its
    scores (BM25 over a's texts alone), through writes, a delete and a swap."""
    store = CollectionStore(tmp_path / "d", backends=CPU)
    try:
        texts = ["a rare orchid", "a common daisy", "a common rose", "rare and common"]
        for name in ("a", "a2"):
            store.create_collection(name, D, V)
            items = [NewItem(f"t{i}", Modality.TEXT, {}, text=t) for i, t in enumerate(texts)]
            store.upsert(name, items, normalised(4, 1), V)
        store.create_collection("b", D, V)
        lots = [NewItem(f"b{i}", Modality.TEXT, {}, text=f"rare word {i}") for i in range(300)]
        store.upsert("b", lots, normalised(300, 2), V)
        a = [(h.id, h.score) for h in store.lexical("a", "rare", 10)]
        alone = [(h.id, h.score) for h in store.lexical("a2", "rare", 10)]
        assert [i for i, _ in a] == ["t0", "t3"] and a == alone  # b's 300 texts count nowhere
        store.delete_collection("b")
        assert [(h.id, h.score) for h in store.lexical("a", "rare", 10)] == a
        assert store.lexical("a", "word", 10) == []
    finally:
        store.close()


def test_lists_from_before_their_values_had_rows_get_them_on_opening(tmp_path: Path) -> None:
    """A database whose triggers wrote a list as one row (the shape before a condition
    held for one of a list's values) gets its lists' values added, and its triggers
    replaced, once."""
    data = tmp_path / "d"
    store = CollectionStore(data, backends=CPU)
    store.create_collection("c", D, V)
    metas = [{"labels": ["red", "circle"]}, {"labels": ["blue"]}, {"labels": "red"}]
    items = [NewItem(f"t{i}", Modality.TEXT, m, text="t") for i, m in enumerate(metas)]
    store.upsert("c", items, normalised(3, 1), V)
    store.close()
    with sqlite3.connect(data / DB_FILE) as conn:  # as the version before left it
        for trigger in FIELD_TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DELETE FROM item_fields WHERE kind <> 'a' AND key = 'labels'")
        conn.execute(
            "INSERT INTO item_fields (label, key, kind, value, collection, modality)"
            " SELECT label, 'labels', 's', 'red', collection, modality FROM items"
            " WHERE id = 't2'"
        )
        conn.execute("CREATE TRIGGER item_fields_added AFTER INSERT ON items BEGIN SELECT 1; END")
    store = CollectionStore(data, backends=CPU)
    try:
        assert labels(store, {"labels": "red"}) == ["t0", "t2"]
        assert labels(store, {"labels": {"$in": ["blue", "circle"]}}) == ["t0", "t1"]
        assert labels(store, {"labels": {"$nin": ["red"]}}) == ["t1"]
        with sqlite3.connect(data / DB_FILE) as conn:
            names = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            }
        assert "item_fields_added" not in names and set(FIELD_TRIGGERS) <= names
        # New writes keep the rows, once each.
        store.upsert(
            "c",
            [NewItem("t3", Modality.TEXT, {"labels": ["red", "red"]}, text="t")],
            normalised(1, 5),
            V,
        )
        assert labels(store, {"labels": "red"}) == ["t0", "t2", "t3"]
    finally:
        store.close()
