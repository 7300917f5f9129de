"""The job loop owns each job's lifecycle: stop versus cancel is decided in one place
(``JobContext``), and a job of a collection is pinned to the collection it was submitted
for, so one deleted and created again under its name fails the job instead of receiving
its writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.service.jobs.loop import JobContext, JobManager, JobStopped
from index import DB_FILE, JobState, JobStore, SqliteDatabase


class Recorder:
    kind = "record"

    def __init__(self) -> None:
        self.ran: list[str] = []

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def run(self, ctx: JobContext) -> None:
        self.ran.append(ctx.job.id)


@pytest.fixture
def jobs(tmp_path: Path) -> JobStore:
    return JobStore(SqliteDatabase(tmp_path / DB_FILE))


def test_stop_versus_cancel_is_decided_by_the_context(jobs: JobStore) -> None:
    job = jobs.create("record", None, {})
    assert jobs.start(job.id)
    server_stopping = False
    ctx = JobContext(jobs.get(job.id), jobs, lambda: server_stopping)
    assert not ctx.should_stop() and not ctx.stopping()
    server_stopping = True
    with pytest.raises(JobStopped):  # the job stays running, to resume after a restart
        ctx.stopping()
    server_stopping = False
    jobs.cancel(job.id)
    assert ctx.should_stop() and ctx.stopping()  # cancelled: the runner just returns


def test_a_job_is_pinned_to_the_collection_it_was_submitted_for(jobs: JobStore) -> None:
    uids = {"c": "first"}
    runner = Recorder()
    manager = JobManager(jobs, [runner], uid_of=lambda name: uids[name])
    job = manager.submit("record", "c", {"n": 1})
    assert job.params == {"n": 1, "collection_uid": "first"}
    uids["c"] = "second"  # deleted and created again meanwhile
    done = manager.run(job)
    assert done.state is JobState.FAILED and "deleted and created again" in done.message
    assert runner.ran == []
    again = manager.submit("record", "c", {})
    assert manager.run(again).state is JobState.SUCCEEDED and runner.ran == [again.id]
