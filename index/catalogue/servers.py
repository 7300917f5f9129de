"""What the servers of one service agree on through their catalogue: which model version
serves (and the one being switched to), and which servers are alive with which versions
loaded.

``model_state`` holds one row: the active version (None: the configured model), the
versions before it (for rollback), and a version an activation is switching to
(``pending``), which every server loads before any answers with it. ``servers`` holds a
row per server, renewed by its heartbeat: a server whose row is older than ``ALIVE_S``
is taken for dead.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from index.catalogue.base import Catalogue, Conn

ALIVE_S = 10.0  # a server not seen for this long is taken for dead
BEAT_S = 2.0  # how often a server says it is alive


@dataclass
class ModelState:
    active: str | None = None
    history: list[str] = field(default_factory=list)
    pending: str | None = None


def read_model_state(conn: Conn) -> ModelState | None:
    """The stored state, or None when no activation ever wrote one."""
    row = conn.execute("SELECT active, history, pending FROM model_state WHERE id = 1").fetchone()
    if row is None:
        return None
    return ModelState(row[0], list(json.loads(row[1])), row[2])


def write_model_state(conn: Conn, state: ModelState) -> None:
    conn.execute(
        "INSERT INTO model_state (id, active, history, pending, changed_at)"
        " VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET active = excluded.active,"
        " history = excluded.history, pending = excluded.pending,"
        " changed_at = excluded.changed_at",
        (state.active, json.dumps(state.history), state.pending, time.time()),
    )


def prunable(conn: Conn) -> int | None:
    """The tombstone every live server has applied (the lowest floor among them); None
    when no server says it is alive (nothing may be pruned then)."""
    row = conn.execute(
        "SELECT MIN(tomb_floor), COUNT(*) FROM servers WHERE seen_at > ?",
        (time.time() - ALIVE_S,),
    ).fetchone()
    return int(row[0]) if row and row[1] else None


@dataclass(frozen=True)
class ServerRow:
    id: str
    seen_at: float
    loaded: list[str]
    failed: dict[str, str]  # version -> why it could not be loaded


class Servers:
    """This server's row among the servers of its catalogue."""

    def __init__(self, db: Catalogue, server_id: str) -> None:
        self.db = db
        self.id = server_id

    def beat(self, loaded: list[str], failed: dict[str, str], floor: int) -> None:
        """Alive, with these versions loaded (or not), and every tombstone up to
        ``floor`` applied to this server's indexes (``tomb_floor``: what may be pruned)."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO servers (id, seen_at, loaded, failed, tomb_floor)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " seen_at = excluded.seen_at, loaded = excluded.loaded,"
                " failed = excluded.failed, tomb_floor = excluded.tomb_floor",
                (self.id, time.time(), json.dumps(sorted(loaded)), json.dumps(failed), floor),
            )

    def leave(self) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM servers WHERE id = ?", (self.id,))

    def alive(self) -> list[ServerRow]:
        """The servers seen within ``ALIVE_S``, this one included if it beat lately."""
        since = time.time() - ALIVE_S
        rows = (
            self.db.reader()
            .execute("SELECT id, seen_at, loaded, failed FROM servers WHERE seen_at > ?", (since,))
            .fetchall()
        )
        return [ServerRow(r[0], float(r[1]), json.loads(r[2]), json.loads(r[3])) for r in rows]
