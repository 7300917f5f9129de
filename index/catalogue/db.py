"""The SQLite catalogue (the default, under the data dir): schema and its migrations,
connections, transactions (``index.catalogue.base`` says what a catalogue offers;
PostgreSQL's is ``index.catalogue.postgres``; the queries both share are in
``index.catalogue.rows``).

Every acknowledged write is committed in WAL mode with ``synchronous=FULL`` before the
call returns, so it survives ``kill -9`` (and power loss). One lock serialises writers
(SQLite has one writer anyway); each thread reads through a connection of its own.
The collection store and the job store share one database, so a job's progress commits
in the same transaction as the items it stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.catalogue.base import Conn, FieldRows
from index.catalogue.filters import stored_compare
from index.catalogue.lexical import (
    create_lexical,
    drop_lexical,
    ensure_lexical,
    lexical_labels,
    move_lexical,
)
from index.catalogue.rows import INSERT_ITEM
from index.catalogue.sqlite_schema import (
    ELEMENT_COLUMNS,
    FIELD_COLUMNS,
    FIELD_INSERTS,
    FIELD_TRIGGERS,
    FIELDS_SCHEMA,
    OLD_FIELD_TRIGGERS,
    SCHEMA,
)
from index.errors import Interrupted

DB_FILE = "xmodal.sqlite3"
WRITES_POLL_S = 0.02  # how often a follower looks for other processes' commits


class SqliteDatabase:
    """The SQLite catalogue."""

    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.write_lock = threading.Lock()
        self._writers_fd = os.open(
            path.with_name(path.name + ".writers"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        self._exclusive_depth = 0
        self._watcher: sqlite3.Connection | None = None  # one waiter: the follower thread
        self.writer = self._connect()
        self.apply(SCHEMA)
        self._migrate()
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_conns_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def apply(self, schema: str) -> None:
        """Create what ``schema`` describes, if missing (one statement at a time, so no
        implicit commit happens inside someone's transaction; a trigger's body, which
        holds semicolons, is one statement up to its ``END``)."""
        with self.transaction() as conn:
            for statement in _statements(schema):
                conn.execute(statement)

    def _migrate(self) -> None:
        columns = {row[1] for row in self.writer.execute("PRAGMA table_info(items)")}
        if "raw_embedding" not in columns:  # a database from before mapped versions
            self.writer.execute("ALTER TABLE items ADD COLUMN raw_embedding BLOB")
        columns = {row[1] for row in self.writer.execute("PRAGMA table_info(jobs)")}
        if "starts" not in columns:  # a database from before starts were counted
            self.writer.execute("ALTER TABLE jobs ADD COLUMN starts INTEGER NOT NULL DEFAULT 0")
        if "owner" not in columns:  # a database from before jobs were leased to a server
            self.writer.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")
            self.writer.execute("ALTER TABLE jobs ADD COLUMN lease_until REAL")
        fields_backfill = (
            "INSERT INTO item_fields (label, key, kind, value, collection, modality)"
            f" SELECT items.label, {FIELD_COLUMNS}, items.collection, items.modality"
            " FROM items, json_each(items.metadata)"
        )
        elements_backfill = (
            "INSERT INTO item_fields (label, key, kind, value, collection, modality)"
            f" SELECT DISTINCT items.label, {ELEMENT_COLUMNS}, items.collection, items.modality"
            " FROM items, json_each(items.metadata) AS f, json_each(f.value) AS e"
            " WHERE f.type = 'array' AND e.type NOT IN ('array', 'object')"
        )
        # Tables filters and lexical search read, kept by triggers: a database from before
        # one of them (or from before fields knew their collection) gets it built from
        # what it holds.
        columns = {row[1] for row in self.writer.execute("PRAGMA table_info(item_fields)")}
        current = "collection" in columns
        triggers = {
            row[0]
            for row in self.writer.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        }
        lists_apart = not (triggers & set(OLD_FIELD_TRIGGERS))  # lists' values have rows
        if columns and not current:
            with self.transaction() as conn:
                for trigger in (*FIELD_TRIGGERS, *OLD_FIELD_TRIGGERS):
                    conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
                conn.execute("DROP INDEX IF EXISTS item_fields_by_value")
                conn.execute("DROP TABLE item_fields")
        elif not lists_apart:
            with self.transaction() as conn:
                for trigger in OLD_FIELD_TRIGGERS:
                    conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        schema = FIELDS_SCHEMA.replace("{inserts}", FIELD_INSERTS)
        schema = schema.replace("{fields}", FIELD_COLUMNS)
        self.apply(schema.replace("{elements}", ELEMENT_COLUMNS))
        with self.transaction() as conn:
            if not current:
                conn.execute(fields_backfill)
            if not current or not lists_apart:
                conn.execute(elements_backfill)
            ensure_lexical(conn)

    def reader(self) -> sqlite3.Connection:
        """This thread's read-only view of the database."""
        conn: sqlite3.Connection | None = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._connect()
            self._readers.conn = conn
            with self._reader_conns_lock:
                self._reader_conns.append(conn)
        return conn

    @contextlib.contextmanager
    def read_transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own in one read transaction: a consistent view for as long
        as the block lasts, while writes go on (WAL)."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A durable write transaction, serialised with every other writer."""
        with self.write_lock, self.locked_transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def locked_transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction, committed durably, for a caller that holds
        ``write_lock`` already (to keep memory and disk in step across a write)."""
        with self.exclusive():
            conn = self.writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def wait_for_writes(self, timeout: float) -> None:
        """SQLite's ``data_version`` changes when another connection commits: read every
        ``WRITES_POLL_S`` on a connection of the waiter's own (cheap: no disk read)."""
        if self._watcher is None:
            self._watcher = self._connect()
        watcher = self._watcher
        seen = watcher.execute("PRAGMA data_version").fetchone()[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(WRITES_POLL_S)
            if watcher.execute("PRAGMA data_version").fetchone()[0] != seen:
                return

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The writers' file lock, beside the database file: every write transaction
        takes it (processes sharing the file take turns as SQLite's own lock makes them),
        and a block that spans several transactions holds it throughout. Taken once per
        process (the caller holds ``write_lock``), so the block's own transactions pass."""
        if self._exclusive_depth == 0:
            fcntl.flock(self._writers_fd, fcntl.LOCK_EX)
        self._exclusive_depth += 1
        try:
            yield
        finally:
            self._exclusive_depth -= 1
            if self._exclusive_depth == 0:
                fcntl.flock(self._writers_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.writer.close()
        if self._watcher is not None:
            self._watcher.close()
        os.close(self._writers_fd)
        with self._reader_conns_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    def check(self) -> None:
        return None  # a file in the data dir: there whenever the store is open

    def deadline(self, conn: Conn, at: float | None) -> contextlib.AbstractContextManager[None]:
        assert isinstance(conn, sqlite3.Connection)
        return interrupted_at(conn, at)

    def insert_items(self, conn: Conn, rows: Sequence[Sequence[Any]]) -> list[int]:
        """Insert rows of ``INSERT_ITEM``'s columns; their labels, in order."""
        return [int(conn.execute(INSERT_ITEM, row).fetchone()[0]) for row in rows]

    # Typed metadata is written by triggers (FIELDS_SCHEMA); values compare as stored.
    def fields_written(self, conn: Conn, rows: Sequence[FieldRows]) -> None:
        return None

    def field_compare(self, family: str, op: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return stored_compare(family, op, values)

    def facet_counts(
        self, conn: Conn, fields: str, params: Sequence[Any], limit: int
    ) -> list[tuple[str, Any, int]]:
        rows = conn.execute(
            f"SELECT kind, value, COUNT(*) AS n FROM item_fields WHERE {fields}"
            " GROUP BY kind, value ORDER BY n DESC, kind, value LIMIT ?",
            [*params, limit],
        ).fetchall()
        return [(k, v, int(n)) for k, v, n in rows]

    # Lexical search: a full-text table per collection (``index.catalogue.lexical``).
    def lexical_created(self, conn: Conn, collection: str) -> None:
        create_lexical(_sqlite(conn), collection)

    def lexical_dropped(self, conn: Conn, collection: str) -> None:
        drop_lexical(_sqlite(conn), collection)

    def lexical_moved(self, conn: Conn, collection: str, copy: str) -> None:
        move_lexical(_sqlite(conn), collection, copy)

    def lexical_labels(
        self, conn: Conn, collection: str, text: str, depth: int, allowed: np.ndarray | None
    ) -> list[tuple[int, float]]:
        return lexical_labels(_sqlite(conn), collection, text, depth, allowed)


def _sqlite(conn: Conn) -> sqlite3.Connection:
    assert isinstance(conn, sqlite3.Connection)
    return conn


@contextlib.contextmanager
def interrupted_at(conn: sqlite3.Connection, deadline: float | None) -> Iterator[None]:
    """Statements on ``conn`` stop once ``time.monotonic()`` passes ``deadline`` (SQLite
    asks between steps of its virtual machine): ``Interrupted``, and the thread is free."""
    if deadline is None:
        yield
        return
    conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "interrupt" not in str(exc):
            raise
        raise Interrupted("the search passed its deadline while reading the catalogue") from None
    finally:
        conn.set_progress_handler(None, PROGRESS_STEPS)


PROGRESS_STEPS = 2000  # virtual machine steps between deadline checks (microseconds)


def _statements(schema: str) -> Iterator[str]:
    """``schema``'s statements: split at semicolons, except inside a trigger's body."""
    pending = ""
    for part in schema.split(";"):
        pending = f"{pending};{part}" if pending else part
        statement = pending.strip()
        if not statement:
            pending = ""
            continue
        if statement.upper().startswith("CREATE TRIGGER") and not statement.upper().endswith("END"):
            continue
        yield statement
        pending = ""
