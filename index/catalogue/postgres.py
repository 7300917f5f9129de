"""PostgreSQL as the catalogue (``XMODAL_DATABASE_URL=postgresql://...``): the tables
SQLite holds, on a database server, answering as SQLite does.

- Statements are the store's own, written once with ``?`` placeholders: ``PgConnection``
  translates them to psycopg's and binds every value (none is pasted into SQL).
- Every write is a transaction committed before the call returns (``synchronous_commit``
  is PostgreSQL's default, on): an acknowledged write survives ``kill -9`` of the server
  and a restart of PostgreSQL.
- Typed metadata (``item_fields``) is written by the store in the item's transaction,
  numbers as exact ``numeric`` (a float as its exact binary value, as SQLite compares a
  real with an integer) and strings as their UTF-8 bytes (compared byte by byte, the code
  point order SQLite's ``BINARY`` collation gives), so filters give SQLite's answers.
- Lexical search: ``index.catalogue.pg_lexical``.
- When the server cannot be reached, a call raises ``CatalogueUnavailable`` (503 with its
  reason); the next call connects again, so the service recovers by itself when it is back.
  The connection string's password never appears in a message: errors are PostgreSQL's
  own text, which never holds it, and the URL is shown with the password masked.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
import psycopg.errors

from index.catalogue import pg_fields, pg_lexical, pg_schema
from index.catalogue.base import Conn, FieldRows
from index.catalogue.pg_connection import PgConnection, masked, translate, unavailable
from index.catalogue.rows import INSERT_ITEM
from index.errors import CatalogueUnavailable, Interrupted

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
WRITES_CHANNEL = "xmodal_writes"  # every write transaction notifies it as it commits
WRITE_LOCK_KEY = 0x786D6F64616C  # "xmodal": the advisory lock every writer takes
ANALYSE_EVERY = 1000  # rows inserted before the tables are vacuumed and analysed


class PostgresDatabase:
    """The catalogue on a PostgreSQL server: a connection per reading thread, one writer
    serialised by ``write_lock``, a fresh connection for each read transaction."""

    kind = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = masked(url)
        self.write_lock = threading.Lock()
        self._writer: PgConnection | None = None
        self._readers = threading.local()
        self._open: list[PgConnection] = []
        self._open_lock = threading.Lock()
        self._listener: PgConnection | None = None  # one waiter: the follower thread
        self._analysed = 0  # items the planner's statistics know of (about)
        self._unanalysed = 0  # items inserted since
        self._setup()

    # --- connections --------------------------------------------------------------------
    def _raw(self) -> psycopg.Connection[Any]:
        raw = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        # Statements psycopg prepares (after five runs) are planned for their values
        # each time: a generic plan cannot see a lexical query's words or a filter's
        # values, and picked plans six times slower for lexical search.
        raw.execute("SET plan_cache_mode = force_custom_plan")
        return raw

    def _connect(self) -> PgConnection:
        try:
            raw = self._raw()
        except psycopg.Error as exc:
            raise unavailable(exc) from None
        conn = PgConnection(raw, self._raw)
        with self._open_lock:
            self._open = [c for c in self._open if not c.broken]
            self._open.append(conn)
        return conn

    @property
    def writer(self) -> PgConnection:
        if self._writer is None or self._writer.broken:
            self._writer = self._connect()
        return self._writer

    def reader(self) -> PgConnection:
        """This thread's connection (opened again after the server came back)."""
        conn: PgConnection | None = getattr(self._readers, "conn", None)
        if conn is None or conn.broken:
            conn = self._connect()
            self._readers.conn = conn
        return conn

    @contextlib.contextmanager
    def read_transaction(self) -> Iterator[PgConnection]:
        """A connection of its own in one repeatable-read transaction: one consistent
        view for as long as the block lasts, while writes go on."""
        conn = self._connect()
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PgConnection]:
        """A durable write transaction, serialised with every other writer."""
        with self.write_lock, self.locked_transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def locked_transaction(self) -> Iterator[PgConnection]:
        """One transaction, committed before the block's caller goes on, for a caller that
        holds ``write_lock`` already."""
        conn = self.writer
        conn.execute("BEGIN")
        try:
            # One writer at a time across every server on this catalogue: labels and
            # tombstones then become visible in the order they were drawn, so a follower
            # reading past its marks misses nothing (``index.follow``).
            conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))
            yield conn
            # Delivered at commit, to every server listening (``wait_for_writes``).
            conn.execute(f"NOTIFY {WRITES_CHANNEL}")
        except BaseException:
            if not conn.broken:
                with contextlib.suppress(CatalogueUnavailable):
                    conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if self._unanalysed >= max(ANALYSE_EVERY, self._analysed):
            self._vacuum(conn)

    def wait_for_writes(self, timeout: float) -> None:
        """Until another server's write transaction commits (a notification on
        ``WRITES_CHANNEL``, on a connection of the waiter's own), or ``timeout``."""
        listener = self._listener
        if listener is None or listener.broken:
            listener = self._listener = self._connect()
            listener.execute(f"LISTEN {WRITES_CHANNEL}")
        try:
            for _ in listener.raw.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error as exc:
            raise unavailable(exc) from None

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """The writers' advisory lock, held by this session across the block: other
        servers' write transactions wait; this one's own take it again at once (advisory
        locks nest within a session)."""
        conn = self.writer
        conn.execute("SELECT pg_advisory_lock(?)", (WRITE_LOCK_KEY,))
        try:
            yield
        finally:
            if not conn.broken:  # a lost session has released it already
                with contextlib.suppress(CatalogueUnavailable):
                    conn.execute("SELECT pg_advisory_unlock(?)", (WRITE_LOCK_KEY,))

    def _vacuum(self, conn: PgConnection) -> None:
        """Vacuum and analyse the items and their fields once they doubled since the last
        time (and grew by ``ANALYSE_EVERY`` at least), after the commit (it runs outside
        a transaction), still under the write lock. Autovacuum does the same, but only once
        a minute: a bulk load in between would be planned as if the tables were empty (a
        1,000-id lookup scanning the collection instead of its unique index), and read
        every filtered row from the table instead of the index alone."""
        conn.execute("VACUUM (ANALYZE) items")
        conn.execute("VACUUM (ANALYZE) item_fields")
        self._analysed += self._unanalysed
        self._unanalysed = 0

    def close(self) -> None:
        with self._open_lock:
            for conn in self._open:
                conn.close()
            self._open.clear()
        self._writer = None

    def check(self) -> None:
        self.reader().execute("SELECT 1").fetchone()

    # --- schema -------------------------------------------------------------------------
    def _setup(self) -> None:
        """Create what is missing and upgrade an older schema in place, in one
        transaction (the schema table's lock keeps two servers from racing)."""
        with self.transaction() as conn:
            pg_lexical.create_configuration(conn)
            for statement in pg_schema.SCHEMA:
                conn.execute(statement)
            conn.execute("LOCK TABLE xmodal_schema IN EXCLUSIVE MODE")
            row = conn.execute("SELECT version FROM xmodal_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO xmodal_schema (version) VALUES (?)", (pg_schema.VERSION,))
                return
            version = int(row[0])
            if version > pg_schema.VERSION:
                raise CatalogueUnavailable(
                    f"the catalogue at {self.shown} has schema version {version}, newer than "
                    f"this server's {pg_schema.VERSION}: upgrade xmodal"
                )
            for target in range(version + 1, pg_schema.VERSION + 1):
                for statement in pg_schema.UPGRADES.get(target, []):
                    conn.execute(statement)
                if target == 2:
                    pg_fields.list_values(conn)
                conn.execute("UPDATE xmodal_schema SET version = ?", (target,))
                log.info("catalogue schema upgraded to version %d", target)

    # --- reads stopped at a deadline ----------------------------------------------------
    @contextlib.contextmanager
    def deadline(self, conn: Conn, at: float | None) -> Iterator[None]:
        """Statements in the block stop at ``at`` (PostgreSQL's ``statement_timeout``,
        set for the rest of the time; the server cancels the statement)."""
        if at is None:
            yield
            return
        left_ms = int((at - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise Interrupted("the search passed its deadline while reading the catalogue")
        conn.execute(f"SET statement_timeout = {left_ms:d}")
        try:
            yield
        except psycopg.errors.QueryCanceled:
            raise Interrupted(
                "the search passed its deadline while reading the catalogue"
            ) from None
        finally:
            with contextlib.suppress(CatalogueUnavailable):
                conn.execute("SET statement_timeout = 0")

    def insert_items(self, conn: Conn, rows: Sequence[Sequence[Any]]) -> list[int]:
        """One pipelined batch (psycopg's ``executemany``), the labels read back."""
        if not rows:
            return []
        assert isinstance(conn, PgConnection)
        cur = conn.raw.cursor()
        try:
            cur.executemany(translate(INSERT_ITEM), [tuple(r) for r in rows], returning=True)
            labels = []
            while True:
                labels.append(int(cur.fetchone()[0]))  # type: ignore[index]
                if not cur.nextset():
                    break
        except psycopg.Error as exc:
            raise conn.mapped(exc) from None
        self._unanalysed += len(rows)  # vacuumed after the commit once they are many
        return labels

    # --- typed metadata -----------------------------------------------------------------
    def fields_written(self, conn: Conn, rows: Sequence[FieldRows]) -> None:
        """Copied in (``COPY``: one stream, far fewer round trips than inserts)."""
        assert isinstance(conn, PgConnection)
        try:
            with conn.raw.cursor().copy(
                "COPY item_fields (label, key, kind, num, str, collection, modality) FROM STDIN"
            ) as copy:
                for label, collection, modality, metadata in rows:
                    for key, _, typed in pg_fields.field_rows(metadata):
                        copy.write_row((label, key, *typed, collection, modality))
        except psycopg.Error as exc:
            raise conn.mapped(exc) from None

    def field_compare(self, family: str, op: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return pg_fields.compare(family, op, values)

    def facet_counts(
        self, conn: Conn, fields: str, params: Sequence[Any], limit: int
    ) -> list[tuple[str, Any, int]]:
        rows = conn.execute(
            f"SELECT kind, num, str, COUNT(*) AS n FROM item_fields WHERE {fields}"
            " GROUP BY kind, num, str ORDER BY n DESC, kind, num, str LIMIT ?",
            [*params, limit],
        ).fetchall()
        return [(k, bytes(s).decode("utf-8") if k == "s" else num, int(n)) for k, num, s, n in rows]

    # --- lexical search: a generated column of items, nothing per collection ------------
    def lexical_created(self, conn: Conn, collection: str) -> None:
        return None

    def lexical_dropped(self, conn: Conn, collection: str) -> None:
        return None

    def lexical_moved(self, conn: Conn, collection: str, copy: str) -> None:
        return None

    def lexical_labels(
        self, conn: Conn, collection: str, text: str, depth: int, allowed: np.ndarray | None
    ) -> list[tuple[int, float]]:
        return pg_lexical.labels(conn, collection, text, depth, allowed)
