"""What a job is, as the catalogue records it: its state, its progress, the errors that
end or refuse it, and its row (``index.catalogue.jobs`` keeps the records)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from index.errors import StoreError

COLUMNS = (
    "id, kind, state, collection, params, total, done, failed, cursor, errors, message,"
    " run_seconds, created_at, started_at, finished_at, detail, starts, owner"
)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class UnknownJob(StoreError):
    pass


class JobFinished(StoreError):
    """The job already ended: it cannot be cancelled any more, and a chunk it was about to
    commit is not stored (a cancel is a line nothing crosses after it was acknowledged)."""


class JobNotCancellable(StoreError):
    """The job is past its point of no return (an activation switching versions)."""


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    state: JobState
    collection: str | None
    params: dict[str, Any]
    total: int | None
    done: int
    failed: int
    cursor: int
    errors: list[dict[str, Any]]
    message: str | None
    run_seconds: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    detail: dict[str, Any]  # what a kind of job reports beyond counts (training progress)
    starts: int = 0  # times started since its resume point last moved (see MAX_STARTS)
    owner: str | None = None  # the server that runs (or last ran) it

    @property
    def items_per_second(self) -> float | None:
        processed = self.done + self.failed
        if self.run_seconds <= 0 or not processed:
            return None
        return processed / self.run_seconds

    @property
    def eta_seconds(self) -> float | None:
        rate = self.items_per_second
        if self.state.finished:
            return 0.0
        if rate is None or self.total is None:
            return None
        return max(0.0, (self.total - self.done - self.failed) / rate)


@dataclass(frozen=True)
class Progress:
    """What one chunk of work adds to a job."""

    cursor: int  # source records below this are finished
    done: int = 0
    failed: int = 0
    errors: Sequence[dict[str, Any]] = ()
    seconds: float = 0.0
    # Named tallies summed into the job's ``detail["counts"]`` (an index job's new and
    # unchanged images and texts).
    counts: Mapping[str, int] = field(default_factory=dict)


class LeaseLost(StoreError):
    """Another server holds the job now (this one missed its heartbeats): whatever this
    one was about to commit for it is not stored."""


def job_from_row(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        kind=row[1],
        state=JobState(row[2]),
        collection=row[3],
        params=json.loads(row[4]),
        total=row[5],
        done=row[6],
        failed=row[7],
        cursor=row[8],
        errors=json.loads(row[9]),
        message=row[10],
        run_seconds=row[11],
        created_at=row[12],
        started_at=row[13],
        finished_at=row[14],
        detail=json.loads(row[15]),
        starts=row[16],
        owner=row[17],
    )
