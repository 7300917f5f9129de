"""The job loop owns each job's lifecycle: stop versus cancel is decided in one place
(``JobContext``), and a job of a collection is pinned to the collection it was submitted
for, so one deleted and created again under its name fails the job instead of receiving
its writes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from app.service.jobs.loop import JobContext, JobManager, JobStopped
from bench.postgres import PgCluster
from index import DB_FILE, JobState, JobStore, Progress, SqliteDatabase
from index.catalogue.postgres import PostgresDatabase


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


class Steps:
    """A job of ``steps`` steps; each step commits its progress, as a chunk does, and
    waits ``pause`` seconds. ``hang`` freezes the runner mid-step (with its heartbeat
    stopped, a server killed with its job under way)."""

    kind = "steps"

    def __init__(self, name: str, pause: float = 0.05) -> None:
        self.name = name
        self.pause = pause
        self.done: list[int] = []
        self.hang = threading.Event()

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def run(self, ctx: JobContext) -> None:
        job = ctx.jobs.get(ctx.job.id)
        for step in range(job.cursor, int(job.params["steps"])):
            if ctx.stopping():
                return
            time.sleep(self.pause)
            while self.hang.is_set():
                time.sleep(0.05)
            ctx.jobs.advance(job.id, Progress(cursor=step + 1, done=1))
            self.done.append(step)


def test_a_job_runs_once_across_servers_and_moves_when_its_server_dies(pg: PgCluster) -> None:
    """Two servers share one catalogue on PostgreSQL: a job submitted to either is run by
    exactly one (a lease claimed by one conditional update); when that one freezes, its
    lease runs out and the other takes the job over from its last committed step; the
    frozen one, thawed, commits nothing more for it."""
    url = pg.database()
    stores = [JobStore(PostgresDatabase(url), owner=f"server-{i}", lease_s=1.0) for i in (0, 1)]
    runners = [Steps("a"), Steps("b")]
    managers = [JobManager(s, [r]) for s, r in zip(stores, runners, strict=True)]
    for m in managers:
        m.start()
    try:
        first = managers[1].submit("steps", None, {"steps": 12})
        deadline = time.monotonic() + 30
        while stores[0].get(first.id).state is not JobState.SUCCEEDED:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ran = sorted(runners[0].done + runners[1].done)
        assert ran == list(range(12)) and stores[0].get(first.id).done == 12
        # Now one freezes mid-job: the other takes over once the lease ran out.
        runners[0].pause = runners[1].pause = 0.1
        second = managers[0].submit("steps", None, {"steps": 30})
        while stores[0].get(second.id).cursor < 3:
            assert time.monotonic() < deadline + 30
            time.sleep(0.02)
        holder = stores[0].get(second.id).owner
        frozen = 0 if holder == "server-0" else 1
        runners[frozen].hang.set()
        stores[frozen].renew = lambda job_id: False  # type: ignore[method-assign]  # no heartbeat
        while stores[0].get(second.id).state is not JobState.SUCCEEDED:
            assert time.monotonic() < deadline + 60
            time.sleep(0.05)
        job = stores[0].get(second.id)
        assert job.owner == f"server-{1 - frozen}" and job.done == 30 and job.cursor == 30
        runners[frozen].hang.clear()  # thawed: its next commit is refused (LeaseLost)
        time.sleep(0.5)
        assert stores[0].get(second.id).done == 30
    finally:
        for r in runners:
            r.hang.clear()
        for m in managers:
            m.stop()
