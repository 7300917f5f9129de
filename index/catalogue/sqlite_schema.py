"""SQLite's catalogue schema: its tables, and the triggers that keep the typed metadata
rows filters read (``item_fields``); ``index.catalogue.db`` applies and migrates it, as
``pg_schema`` holds PostgreSQL's."""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    name TEXT PRIMARY KEY,
    uid TEXT NOT NULL,
    index_spec TEXT NOT NULL,
    dim INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    label INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    modality TEXT NOT NULL,
    metadata TEXT NOT NULL,
    text TEXT,
    content_sha256 TEXT,
    media_type TEXT,
    embedding BLOB NOT NULL,
    raw_embedding BLOB,
    model_version TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (collection, id)
);
CREATE INDEX IF NOT EXISTS items_by_modality ON items (collection, modality, label);
CREATE INDEX IF NOT EXISTS items_by_content ON items (content_sha256);
CREATE TABLE IF NOT EXISTS tombstones (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection TEXT NOT NULL,
    modality TEXT NOT NULL,
    label INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_by_collection ON tombstones (collection, modality, seq);
CREATE TABLE IF NOT EXISTS index_reports (
    uid TEXT PRIMARY KEY,
    report TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    collection TEXT,
    params TEXT NOT NULL,
    total INTEGER,
    done INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cursor INTEGER NOT NULL DEFAULT 0,
    errors TEXT NOT NULL DEFAULT '[]',
    message TEXT,
    run_seconds REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    detail TEXT NOT NULL DEFAULT '{}',
    starts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);

CREATE TABLE IF NOT EXISTS model_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    active TEXT,
    history TEXT NOT NULL,
    pending TEXT,
    changed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS servers (
    id TEXT PRIMARY KEY,
    seen_at REAL NOT NULL,
    loaded TEXT NOT NULL,
    failed TEXT NOT NULL,
    tomb_floor INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS label_sets (
    collection TEXT PRIMARY KEY,
    spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones_pruned (
    uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    upto INTEGER NOT NULL,
    PRIMARY KEY (uid, modality)
);
"""

# Every top-level metadata key of every item, typed, for filters that use an index instead
# of parsing each item's JSON: kind n (a number), s (a string), b (a boolean, value 0 or
# 1), z (null), a (an array or object). A list's scalar values get a row each besides
# (once each), so a condition holds for a list when it holds for one of its values
# (``filter_tree.matches``). ``value`` has no type affinity: numbers stay numbers, strings
# strings. Each row carries its item's collection and modality, so a filter reads its own
# collection's rows only, from the index alone. Kept by triggers, in the transaction that
# writes the item (a swap moves them with their items).
FIELDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS item_fields (
    label INTEGER NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    value,
    collection TEXT NOT NULL,
    modality TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS item_fields_in_collection
    ON item_fields (collection, modality, key, kind, value, label);
CREATE INDEX IF NOT EXISTS item_fields_by_label ON item_fields (label);
CREATE TRIGGER IF NOT EXISTS item_fields_written AFTER INSERT ON items BEGIN
{inserts}END;
CREATE TRIGGER IF NOT EXISTS item_fields_removed AFTER DELETE ON items BEGIN
    DELETE FROM item_fields WHERE label = old.label;
END;
CREATE TRIGGER IF NOT EXISTS item_fields_rewritten AFTER UPDATE OF metadata ON items BEGIN
    DELETE FROM item_fields WHERE label = old.label;
{inserts}END
"""
# What both triggers that write an item's fields insert: its top-level values, then the
# values of its top-level lists, once each.
FIELD_INSERTS = """    INSERT INTO item_fields (label, key, kind, value, collection, modality)
    SELECT new.label, {fields}, new.collection, new.modality FROM json_each(new.metadata);
    INSERT INTO item_fields (label, key, kind, value, collection, modality)
    SELECT DISTINCT new.label, {elements}, new.collection, new.modality
    FROM json_each(new.metadata) AS f, json_each(f.value) AS e
    WHERE f.type = 'array' AND e.type NOT IN ('array', 'object');
"""
FIELD_TRIGGERS = ("item_fields_written", "item_fields_removed", "item_fields_rewritten")
# The triggers of a database from before lists' values had rows of their own.
OLD_FIELD_TRIGGERS = ("item_fields_added", "item_fields_changed")


def _columns(key: str, of: str) -> str:
    """json_each's columns (of the row aliased ``of``) as item_fields' key, kind, value."""
    return (
        f"{key}, CASE {of}type WHEN 'integer' THEN 'n' WHEN 'real' THEN 'n' WHEN 'text' THEN 's'"
        " WHEN 'true' THEN 'b' WHEN 'false' THEN 'b' WHEN 'null' THEN 'z' ELSE 'a' END,"
        f" CASE {of}type WHEN 'true' THEN 1 WHEN 'false' THEN 0 WHEN 'array' THEN NULL"
        f" WHEN 'object' THEN NULL ELSE {of}atom END"
    )


FIELD_COLUMNS = _columns("key", "")  # a top-level value
ELEMENT_COLUMNS = _columns("f.key", "e.")  # a value in a top-level list (f: the key's row)
