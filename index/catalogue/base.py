"""What the store asks of a catalogue, whichever database holds it (SQLite under the data
dir, ``index.catalogue.db``; or PostgreSQL, ``index.catalogue.postgres``).

Statements are written once, with ``?`` placeholders and the SQL both databases speak;
the PostgreSQL connection translates the placeholders. What differs between the two (the
schema, the typed metadata table behind filters, lexical search, stopping a read at a
deadline) is behind the methods below, not in the callers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

# A new item's typed metadata to write: label, collection, modality, metadata.
FieldRows = tuple[int, str, str, dict[str, Any]]


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = ...) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Conn(Protocol):
    """A connection: ``sqlite3.Connection``, or ``PgConnection`` that reads like it."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


class Catalogue(Protocol):
    """A catalogue's connections and transactions, and what its database does its own way."""

    kind: str  # "sqlite" or "postgres"
    write_lock: Any  # serialises this process's writers (``threading.Lock``)

    @property
    def writer(self) -> Conn: ...

    def reader(self) -> Conn: ...

    def read_transaction(self) -> contextlib.AbstractContextManager[Conn]: ...

    def transaction(self) -> contextlib.AbstractContextManager[Conn]: ...

    def locked_transaction(self) -> contextlib.AbstractContextManager[Conn]: ...

    def wait_for_writes(self, timeout: float) -> None:
        """Return once another connection (another server) may have committed a write,
        or after ``timeout`` seconds: what a follower waits on between its steps."""
        ...

    def facet_counts(
        self,
        conn: Conn,
        fields: str,
        params: Sequence[Any],
        limit: int,
    ) -> list[tuple[str, Any, int]]:
        """The most frequent values among the ``item_fields`` rows ``fields`` selects
        (its WHERE clause), most first: (kind, value as stored, count), ``limit`` at most,
        numbers by value, strings exactly, booleans apart."""
        ...

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """No other server's write transaction lands while the block runs (it spans
        several of this one's transactions, as a model switch does); the caller holds
        ``write_lock``."""
        ...

    def close(self) -> None: ...

    def check(self) -> None:
        """Raise ``index.errors.CatalogueUnavailable`` when the catalogue cannot answer."""
        ...

    def deadline(self, conn: Conn, at: float | None) -> contextlib.AbstractContextManager[None]:
        """Statements on ``conn`` in the block stop once ``time.monotonic()`` passes
        ``at``: ``index.errors.Interrupted``."""
        ...

    # --- what each database keeps its own way -------------------------------------------
    def insert_items(self, conn: Conn, rows: Sequence[Sequence[Any]]) -> list[int]:
        """Insert rows of ``index.catalogue.db.INSERT_ITEM``'s values; their labels, in
        order (as few round trips to the database as it allows)."""
        ...

    def fields_written(self, conn: Conn, rows: Sequence[FieldRows]) -> None:
        """The typed metadata of newly inserted items (label, collection, modality,
        metadata), where triggers do not write it."""
        ...

    def field_compare(self, family: str, op: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """How a filter compares ``item_fields`` with values of ``family`` (an SQL
        operator, or ``IN`` for several): the condition and its parameters."""
        ...

    def lexical_created(self, conn: Conn, collection: str) -> None: ...

    def lexical_dropped(self, conn: Conn, collection: str) -> None: ...

    def lexical_moved(self, conn: Conn, collection: str, copy: str) -> None: ...

    def lexical_labels(
        self, conn: Conn, collection: str, text: str, depth: int, allowed: np.ndarray | None
    ) -> list[tuple[int, float]]:
        """The best ``depth`` text items of ``collection`` for the words of ``text``, as
        (label, score), best first (higher is better; ties by label); ``allowed`` (sorted
        labels) keeps only those."""
        ...
