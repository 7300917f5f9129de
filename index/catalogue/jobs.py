"""Durable background jobs: their state lives in the same catalogue as the items.

A job's progress (how far into its source it got, how many items succeeded and failed)
is written in the same transaction as the items it stored, so after a crash the two
always agree: resuming from the recorded cursor neither repeats nor loses an item.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from index.catalogue.base import Catalogue, Conn
from index.catalogue.job_records import (
    COLUMNS,
    Job,
    JobFinished,
    JobNotCancellable,
    JobState,
    LeaseLost,
    Progress,
    UnknownJob,
    job_from_row,
)

MAX_ERRORS = 100  # the first failures are kept with their reasons; the rest are counted
NO_RETURN = "past_point_of_no_return"  # in a job's detail: it can no longer be cancelled
# Starts without the job's resume point moving after which it fails instead of starting
# again: the server died under it each time (out of memory, most likely).
MAX_STARTS = 3
LEASE_S = 10.0  # how long a server's claim on a running job lasts without a heartbeat

# Kinds of which one job runs at a time across every server (two model switches at once
# would each move the collections the other moves).
ONE_AT_A_TIME = frozenset({"activate"})


class JobStore:
    """Job records in the catalogue. A running job is leased to one server (``owner``)
    until ``lease_until``, renewed by its heartbeat: any server may take over a job whose
    lease ran out (its server died), and only the holder commits progress for it."""

    def __init__(self, db: Catalogue, owner: str | None = None, lease_s: float = LEASE_S) -> None:
        self.db = db
        self.owner = owner or uuid.uuid4().hex
        self.lease_s = lease_s

    def create(self, kind: str, collection: str | None, params: dict[str, Any]) -> Job:
        job_id = uuid.uuid4().hex[:16]
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, state, collection, params, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, kind, JobState.QUEUED.value, collection, json.dumps(params), time.time()),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        row = (
            self.db.reader()
            .execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        if row is None:
            raise UnknownJob(f"job {job_id!r} does not exist")
        return job_from_row(row)

    def recent(self, limit: int = 100) -> list[Job]:
        rows = self.db.reader().execute(
            f"SELECT {COLUMNS} FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
        )
        return [job_from_row(r) for r in rows]

    def count_unfinished(self) -> int:
        row = (
            self.db.reader()
            .execute(
                "SELECT COUNT(*) FROM jobs WHERE state IN (?, ?)",
                (JobState.QUEUED.value, JobState.RUNNING.value),
            )
            .fetchone()
        )
        return int(row[0])

    def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first: what a restart has to pick up."""
        rows = self.db.reader().execute(
            f"SELECT {COLUMNS} FROM jobs WHERE state IN (?, ?) ORDER BY created_at",
            (JobState.QUEUED.value, JobState.RUNNING.value),
        )
        return [job_from_row(r) for r in rows]

    def start(self, job_id: str) -> bool:
        """Queued (or interrupted while running, its lease run out or this server's) ->
        running, leased to this server, counting the start; False if it ended meanwhile,
        if another server holds it, or if it has started ``MAX_STARTS`` times without its
        resume point moving: the server died under it each time, so it fails with that
        reason instead of taking the server down again on every start. The claim is one
        conditional update of what was read: of two servers claiming at once, one wins."""
        now = time.time()
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT state, starts, owner, lease_until, kind FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None or JobState(row[0]).finished:
                return False
            state, starts, owner, lease_until, kind = row
            held = lease_until is not None and lease_until > now and owner != self.owner
            if state == JobState.RUNNING.value and held:
                return False
            if (
                kind in ONE_AT_A_TIME
                and conn.execute(
                    "SELECT 1 FROM jobs WHERE kind = ? AND state = ? AND id <> ?"
                    " AND lease_until > ? AND owner <> ?",
                    (kind, JobState.RUNNING.value, job_id, now, self.owner),
                ).fetchone()
            ):
                return False  # another server runs one; this one waits its turn, queued
            if starts >= MAX_STARTS:
                message = (
                    f"the server stopped {starts} times while this job ran, without the job "
                    "getting any further (out of memory, most likely: see the server log); it "
                    "is not started again: submit it anew, with smaller settings if it ran "
                    "out of memory"
                )
                conn.execute(
                    "UPDATE jobs SET state = ?, message = ?, finished_at = ? WHERE id = ?",
                    (JobState.FAILED.value, message, now, job_id),
                )
                return False
            cur = conn.execute(
                "UPDATE jobs SET state = ?, started_at = COALESCE(started_at, ?),"
                " starts = starts + 1, owner = ?, lease_until = ?"
                " WHERE id = ? AND state = ? AND starts = ? AND COALESCE(owner, '') = ?",
                (
                    JobState.RUNNING.value,
                    now,
                    self.owner,
                    now + self.lease_s,
                    job_id,
                    state,
                    starts,
                    owner or "",
                ),
            )
            return bool(cur.rowcount == 1)

    def renew(self, job_id: str) -> bool:
        """This server's heartbeat for a job it runs: its lease extended; False if the
        job is no longer running under this server's lease."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = ? AND owner = ?",
                (time.time() + self.lease_s, job_id, JobState.RUNNING.value, self.owner),
            )
            return bool(cur.rowcount == 1)

    def stopped(self, job_id: str) -> None:
        """The server stopped the job cleanly (to resume it on the next start): that start
        does not count against it."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET starts = CASE WHEN starts > 0 THEN starts - 1 ELSE 0 END,"
                " lease_until = NULL WHERE id = ? AND (owner IS NULL OR owner = ?)",
                (job_id, self.owner),
            )

    def set_total(self, job_id: str, total: int) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE jobs SET total = ? WHERE id = ?", (total, job_id))

    def report(
        self,
        job_id: str,
        detail: dict[str, Any],
        done: int | None = None,
        total: int | None = None,
        seconds: float = 0.0,
    ) -> None:
        """Replace the job's ``detail`` (and set its counts) in one write. A job past its
        point of no return stays past it (a cancel between the switch and the job's end
        would otherwise be answered as if it had stopped the switch)."""
        with self.db.transaction() as conn:
            row = conn.execute("SELECT detail FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None and json.loads(row[0]).get(NO_RETURN):
                detail = {**detail, NO_RETURN: True}
            conn.execute(
                "UPDATE jobs SET detail = ?, done = COALESCE(?, done), total = COALESCE(?, total),"
                " run_seconds = run_seconds + ? WHERE id = ?",
                (json.dumps(detail), done, total, seconds, job_id),
            )

    def recorder(self, job_id: str, progress: Progress) -> Callable[[Conn], None]:
        """A statement to run inside the transaction that stores the chunk's items."""

        def record(conn: Conn) -> None:
            _apply(conn, job_id, progress, self.owner)

        return record

    def advance(self, job_id: str, progress: Progress) -> None:
        """Record progress for a chunk that stored nothing (all failed or unchanged)."""
        with self.db.transaction() as conn:
            _apply(conn, job_id, progress, self.owner)

    def finish(self, job_id: str, state: JobState, message: str | None = None) -> None:
        """End a running job, unless it was cancelled meanwhile or another server holds
        it now."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, message = ?, finished_at = ?, lease_until = NULL"
                " WHERE id = ? AND state = ? AND (owner IS NULL OR owner = ?)",
                (state.value, message, time.time(), job_id, JobState.RUNNING.value, self.owner),
            )

    def pass_point_of_no_return(self, job_id: str, detail: dict[str, Any]) -> bool:
        """Mark a running job as past the point where a cancel could still undo it, with
        ``detail``; False (and no mark) if it was cancelled first."""
        marked = {**detail, NO_RETURN: True}
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET detail = ? WHERE id = ? AND state = ?",
                (json.dumps(marked), job_id, JobState.RUNNING.value),
            )
        return cur.rowcount == 1

    def cancel(self, job_id: str) -> Job:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT state, detail FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJob(f"job {job_id!r} does not exist")
            if JobState(row[0]).finished:
                raise JobFinished(f"job {job_id!r} already {row[0]}")
            if json.loads(row[1]).get(NO_RETURN):
                raise JobNotCancellable(
                    f"job {job_id!r} is past its point of no return and can no longer be cancelled"
                )
            conn.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, message = ? WHERE id = ?",
                (JobState.CANCELLED.value, time.time(), "cancelled on request", job_id),
            )
        return self.get(job_id)

    def state(self, job_id: str) -> JobState:
        return self.get(job_id).state


def cancel_jobs_of(conn: Conn, collection: str, reason: str) -> int:
    """Cancel every queued or running job of ``collection`` (inside the caller's
    transaction); returns how many."""
    cur = conn.execute(
        "UPDATE jobs SET state = ?, finished_at = ?, message = ?"
        " WHERE collection = ? AND state IN (?, ?)",
        (
            JobState.CANCELLED.value,
            time.time(),
            reason,
            collection,
            JobState.QUEUED.value,
            JobState.RUNNING.value,
        ),
    )
    return cur.rowcount


def _apply(conn: Conn, job_id: str, p: Progress, owner: str) -> None:
    row = conn.execute(
        "SELECT errors, detail, state, owner FROM jobs WHERE id = ?", (job_id,)
    ).fetchone()
    if row is None:
        raise UnknownJob(f"job {job_id!r} does not exist")
    if JobState(row[2]).finished:
        # Cancelled while the chunk was on its way: raising rolls the chunk back with it.
        raise JobFinished(f"job {job_id!r} already {row[2]}")
    if row[3] is not None and row[3] != owner:
        # Taken over by another server: this chunk is theirs to store, not ours.
        raise LeaseLost(f"job {job_id!r} runs on another server now")
    errors, detail = json.loads(row[0]), json.loads(row[1])
    if p.errors and len(errors) < MAX_ERRORS:
        errors.extend(p.errors[: MAX_ERRORS - len(errors)])
    if p.counts:
        counts = detail.setdefault("counts", {})
        for name, n in p.counts.items():
            counts[name] = counts.get(name, 0) + n
    conn.execute(
        "UPDATE jobs SET cursor = CASE WHEN ? > cursor THEN ? ELSE cursor END,"
        " done = done + ?, failed = failed + ?,"
        " errors = ?, run_seconds = run_seconds + ?, detail = ?,"
        " starts = CASE WHEN ? > cursor THEN 0 ELSE starts END WHERE id = ?",
        (
            p.cursor,
            p.cursor,
            p.done,
            p.failed,
            json.dumps(errors),
            p.seconds,
            json.dumps(detail),
            p.cursor,
            job_id,
        ),
    )
