"""One connection to the PostgreSQL catalogue, read like ``sqlite3.Connection``: SQLite's
``?`` placeholders translated, every failure mapped to what it means to the store (the
server out of reach: 503; a value it cannot hold: 4xx), and a connection the server
dropped while it sat unused opened again."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.errors

from index.errors import CatalogueUnavailable
from index.values import InvalidValue


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """``sql`` with SQLite's ``?`` placeholders as psycopg's ``%s`` (and a literal ``%`` as
    ``%%``), string literals and quoted names left as they are."""
    out: list[str] = []
    quote = ""
    for ch in sql:
        if quote:
            if ch == quote:
                quote = ""
            out.append("%%" if ch == "%" else ch)
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


def unavailable(exc: Exception) -> CatalogueUnavailable:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CatalogueUnavailable(f"the catalogue (PostgreSQL) is unreachable: {first}")


class PgConnection:
    """A psycopg connection that reads like ``sqlite3.Connection``: ``execute`` with ``?``
    placeholders, returning a cursor of tuples."""

    # A list of values binds as one array parameter (``label = ANY(?)``): no statement
    # with hundreds of placeholders to parse and plan (``index.catalogue.db.hit_rows``).
    array_params = True

    def __init__(
        self,
        raw: psycopg.Connection[Any],
        reconnect: Callable[[], psycopg.Connection[Any]] | None = None,
    ) -> None:
        self.raw = raw
        self._reconnect = reconnect

    @property
    def broken(self) -> bool:
        return bool(self.raw.closed or self.raw.broken)

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        # Outside a transaction, a connection the server dropped while it sat unused (a
        # restart) is opened again and the statement sent once more: it never ran.
        idle = self.raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        cur = self.raw.cursor()
        try:
            cur.execute(translate(sql), tuple(parameters))
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.errors.QueryCanceled) and not self.broken:
                raise  # a deadline (``PostgresDatabase.deadline``)
            if not (idle and self.broken and self._reconnect is not None):
                raise self.mapped(exc) from None
            try:
                self.raw = self._reconnect()
            except psycopg.Error:
                raise self.mapped(exc) from None
            cur = self.raw.cursor()
            try:
                cur.execute(translate(sql), tuple(parameters))
            except psycopg.Error as again:
                raise self.mapped(again) from None
        return cur

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        cur = self.raw.cursor()
        try:
            cur.executemany(translate(sql), [tuple(p) for p in parameters])
        except psycopg.Error as exc:
            raise self.mapped(exc) from None
        return cur

    def mapped(self, exc: psycopg.Error) -> Exception:
        """What a failed statement means to the store: the server out of reach (the
        connection lost, or refused, or the server shutting down or out of resources),
        a value it cannot hold (a 4xx naming it), or else PostgreSQL's own error."""
        state = exc.sqlstate or ""
        if self.broken or not state or state.startswith(("08", "57P", "53")):
            return unavailable(exc)
        if state.startswith(("22", "54")):  # data exception, program limit exceeded
            first = str(exc).strip().splitlines()[0]
            return InvalidValue(f"the catalogue (PostgreSQL) cannot store a value: {first}")
        return exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()
