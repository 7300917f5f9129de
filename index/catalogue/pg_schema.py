"""PostgreSQL's catalogue schema: the tables SQLite holds (``index.catalogue.db``), typed
for PostgreSQL, its version, and the statements that upgrade an older one in place."""

from __future__ import annotations

from index.catalogue import pg_lexical

VERSION = 2
# The same tables as SQLite's (index.catalogue.db), typed for PostgreSQL: REAL there is
# a double here, BLOB bytea; item_fields keeps numbers and strings in typed columns.
SCHEMA = [
    "CREATE TABLE IF NOT EXISTS xmodal_schema (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS collections (
        name TEXT PRIMARY KEY,
        uid TEXT NOT NULL,
        index_spec TEXT NOT NULL,
        dim INTEGER NOT NULL,
        model_version TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL)""",
    f"""CREATE TABLE IF NOT EXISTS items (
        label BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        modality TEXT NOT NULL,
        metadata TEXT NOT NULL,
        text TEXT,
        content_sha256 TEXT,
        media_type TEXT,
        embedding BYTEA NOT NULL,
        raw_embedding BYTEA,
        model_version TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        words tsvector GENERATED ALWAYS AS ({pg_lexical.DOCUMENT}) STORED,
        UNIQUE (collection, id))""",
    "CREATE INDEX IF NOT EXISTS items_by_modality ON items (collection, modality, label)",
    "CREATE INDEX IF NOT EXISTS items_by_content ON items (content_sha256)",
    "CREATE INDEX IF NOT EXISTS items_by_words ON items USING GIN (words)",
    """CREATE TABLE IF NOT EXISTS tombstones (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        collection TEXT NOT NULL,
        modality TEXT NOT NULL,
        label BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS tombstones_by_collection ON tombstones (collection, modality, seq)",
    "CREATE TABLE IF NOT EXISTS index_reports (uid TEXT PRIMARY KEY, report TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS item_fields (
        label BIGINT NOT NULL REFERENCES items (label) ON DELETE CASCADE,
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        num NUMERIC,
        str BYTEA,
        collection TEXT NOT NULL,
        modality TEXT NOT NULL)""",
    """CREATE INDEX IF NOT EXISTS item_fields_by_num
        ON item_fields (collection, modality, key, kind, num, label)""",
    # A string's first 1,000 bytes (pg_fields.STR_INDEXED): a B-tree entry holds 2,704
    # bytes at most, and a long string whole would not fit.
    """CREATE INDEX IF NOT EXISTS item_fields_by_str
        ON item_fields (collection, modality, key, kind, substr(str, 1, 1000), label)""",
    "CREATE INDEX IF NOT EXISTS item_fields_by_label ON item_fields (label)",
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        collection TEXT,
        params TEXT NOT NULL,
        total BIGINT,
        done BIGINT NOT NULL DEFAULT 0,
        failed BIGINT NOT NULL DEFAULT 0,
        cursor BIGINT NOT NULL DEFAULT 0,
        errors TEXT NOT NULL DEFAULT '[]',
        message TEXT,
        run_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        detail TEXT NOT NULL DEFAULT '{}',
        starts INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        lease_until DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at)",
    # Added tables need no new version: a server that does not know them ignores them,
    # so servers of both releases share one catalogue during a rolling upgrade.
    """CREATE TABLE IF NOT EXISTS model_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        active TEXT,
        history TEXT NOT NULL,
        pending TEXT,
        changed_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS servers (
        id TEXT PRIMARY KEY,
        seen_at DOUBLE PRECISION NOT NULL,
        loaded TEXT NOT NULL,
        failed TEXT NOT NULL,
        tomb_floor BIGINT NOT NULL DEFAULT 0)""",
    "CREATE TABLE IF NOT EXISTS label_sets (collection TEXT PRIMARY KEY, spec TEXT NOT NULL)",
    # How far each index's tombstones were pruned: a dump older than that has missed
    # deletes it can no longer read, and is rebuilt.
    """CREATE TABLE IF NOT EXISTS tombstones_pruned (
        uid TEXT NOT NULL,
        modality TEXT NOT NULL,
        upto BIGINT NOT NULL,
        PRIMARY KEY (uid, modality))""",
]
# Upgrades in place, by the version they lead to. Version 2: a list's scalar values have
# rows of their own in item_fields (written by ``pg_fields.field_rows``, which the upgrade
# runs over the items holding a list: ``PostgresDatabase._setup``).
UPGRADES: dict[int, list[str]] = {2: []}
