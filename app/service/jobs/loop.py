"""The job loop: one job at a time, in its own thread, each kind run by its runner.

Jobs are durable (``index.catalogue.jobs``): queued and running ones are picked up again after a
restart. A runner raises ``JobStopped`` when the server is stopping (the job stays running,
to be resumed), and any domain error fails the job with its message.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

from app.service.errors import Busy, Failed, ServiceError
from index import (
    CatalogueUnavailable,
    Job,
    JobFinished,
    JobState,
    JobStore,
    LeaseLost,
    StoreError,
)
from models.errors import ModelError

log = logging.getLogger(__name__)

OnProgress = Callable[[Job], None]
T = TypeVar("T")


class JobStopped(Exception):
    """The server is shutting down: leave the job running, to be resumed."""


class JobFailed(Failed):
    """A runner's own reason to fail a job, reported as its message."""


class JobContext:
    """What the loop hands a runner with its job: whether to stop, and why (decided here
    once: a cancel ends the job, a server stopping leaves it running to resume), and
    progress to report."""

    def __init__(
        self,
        job: Job,
        jobs: JobStore,
        server_stopping: Callable[[], bool],
        on_progress: OnProgress | None = None,
    ) -> None:
        self.job = job
        self.jobs = jobs
        self._server_stopping = server_stopping
        self._on_progress = on_progress

    def should_stop(self) -> bool:
        """The server is stopping, the job was cancelled, or another server took it over
        (this one missed its heartbeats): finish at the next safe point."""
        if self._server_stopping():
            return True
        job = self.jobs.get(self.job.id)
        return job.state is not JobState.RUNNING or job.owner not in (None, self.jobs.owner)

    def stopping(self) -> bool:
        """Whether to stop here: True when the job was cancelled (the runner returns; what
        it committed stays); ``JobStopped`` when the server is stopping (the job stays
        running, and resumes on the next start)."""
        return self.should_stop() and self.interrupted()

    def interrupted(self) -> bool:
        """After work stopped on ``should_stop``: ``JobStopped`` if the server is stopping,
        ``LeaseLost`` if another server runs the job now, else True (cancelled)."""
        job = self.jobs.get(self.job.id)
        if job.state is JobState.RUNNING:
            if job.owner not in (None, self.jobs.owner):
                raise LeaseLost(f"job {job.id!r} runs on another server now")
            raise JobStopped
        return True

    def progress(self) -> None:
        """Tell whoever follows the job (the in-process CLI) where it stands."""
        if self._on_progress is not None:
            self._on_progress(self.jobs.get(self.job.id))


class Runner(Protocol):
    kind: str

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        """Refuse a bad job before it is queued (a 4xx now, not a failed job later);
        returns the params to store."""
        ...

    def run(self, ctx: JobContext) -> None:
        """Run (or resume) ``ctx.job`` to its end; returns normally when it succeeded or was
        cancelled (``ctx.stopping()``)."""
        ...


@runtime_checkable
class Closing(Protocol):
    """A runner that holds resources (thread pools) to release when the loop stops."""

    def close(self) -> None: ...


class JobQueueFull(Busy):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"{limit} jobs are queued or running already; retry later", "job_queue_full"
        )


class JobManager:
    """``uid_of`` names a collection's incarnation: a job of a collection is pinned to the
    one that exists when it is submitted (``collection_uid`` in its params), and fails,
    rather than write into one deleted and created again under the same name meanwhile.
    A runner that creates its collection (a restore) says ``pins_collection = False``."""

    def __init__(
        self,
        jobs: JobStore,
        runners: list[Runner],
        max_queued: int = 64,
        uid_of: Callable[[str], str] | None = None,
    ) -> None:
        self.jobs = jobs
        self.runners = {r.kind: r for r in runners}
        self.max_queued = max_queued
        self.uid_of = uid_of
        self._submit_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._cut_off: set[str] = set()  # jobs an outage of the catalogue interrupted
        self._running: str | None = None  # the job this server runs now (its heartbeat)
        self._heartbeat: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Run queued jobs, beginning with any that a restart interrupted."""
        self._thread = threading.Thread(target=self._loop, daemon=True, name="xmodal-jobs")
        self._thread.start()
        self._heartbeat = threading.Thread(
            target=self._beat, daemon=True, name="xmodal-jobs-heartbeat"
        )
        self._heartbeat.start()

    def _beat(self) -> None:
        """Renew the lease of the job this server runs, three times a lease: another
        server takes a job over only once its lease ran out (this one died)."""
        while not self._stopping.wait(self.jobs.lease_s / 3):
            job_id = self._running
            if job_id is None:
                continue
            try:
                if not self.jobs.renew(job_id):
                    log.warning("job %s: its lease is no longer this server's", job_id)
            except CatalogueUnavailable as exc:
                log.warning("job heartbeat waits for the catalogue: %s", exc)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
        for runner in self.runners.values():
            if isinstance(runner, Closing):
                runner.close()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def submit(self, kind: str, collection: str | None, params: dict[str, Any]) -> Job:
        runner = self.runners[kind]
        params = runner.check(collection, params)
        if self._pins(runner, collection):
            assert collection is not None and self.uid_of is not None
            params = {**params, "collection_uid": self.uid_of(collection)}
        with self._submit_lock:
            if self.jobs.count_unfinished() >= self.max_queued:
                raise JobQueueFull(self.max_queued)
            job = self.jobs.create(kind, collection, params)
        self._wake.set()
        return job

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._run_unfinished()
            except CatalogueUnavailable as exc:  # the loop outlives the catalogue's outage
                log.warning("jobs wait for the catalogue: %s", exc)
            self._wake.wait(timeout=2.0)
            self._wake.clear()

    def _run_unfinished(self) -> None:
        for job in self.jobs.unfinished():
            if self._stopping.is_set():
                return
            if job.id in self._cut_off:  # its start was cut short by an outage: not counted
                self.jobs.stopped(job.id)
                self._cut_off.discard(job.id)
            try:
                self.run(job)
            except CatalogueUnavailable:
                raise
            except Exception:  # the loop must outlive any one job
                log.exception("job %s crashed", job.id)
                self.jobs.finish(job.id, JobState.FAILED, "internal error; see the server log")

    # --- running one job ------------------------------------------------------------------------
    def run(self, job: Job, on_progress: OnProgress | None = None) -> Job:
        """Run (or resume) ``job`` to its end in this thread."""
        if not self.jobs.start(job.id):
            return self.jobs.get(job.id)
        self._running = job.id
        try:
            return self._run_started(job, on_progress)
        finally:
            self._running = None

    def _run_started(self, job: Job, on_progress: OnProgress | None) -> Job:
        log.info("job %s (%s) running: %s", job.id, job.kind, job_summary(job)["params"])
        runner = self.runners.get(job.kind)
        try:
            if runner is None:
                raise JobFailed(f"no runner for jobs of kind {job.kind!r}")
            job = self.jobs.get(job.id)
            self._check_pin(runner, job)
            runner.run(JobContext(job, self.jobs, self._stopping.is_set, on_progress))
        except JobStopped:
            log.info("job %s: stopped with the server; it resumes on the next start", job.id)
            self.jobs.stopped(job.id)
            return self.jobs.get(job.id)
        except JobFinished:
            log.info("job %s: cancelled while committing; that chunk was not stored", job.id)
        except LeaseLost:
            # Another server took it over (this one missed its heartbeats): theirs to end.
            log.warning("job %s: taken over by another server; stopped here", job.id)
            return self.jobs.get(job.id)
        except CatalogueUnavailable as exc:
            # Not the job's fault, and nothing can be recorded now: it stays as the
            # catalogue has it (running, resumable from its last chunk) and is resumed
            # once the catalogue answers again.
            log.warning("job %s: stopped by the catalogue's outage (%s)", job.id, exc)
            self._cut_off.add(job.id)
            raise
        except (StoreError, ModelError, ServiceError) as exc:
            self.jobs.finish(job.id, JobState.FAILED, str(exc))
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self.jobs.finish(job.id, JobState.FAILED, f"internal error: {exc}")
        else:
            self.jobs.finish(job.id, JobState.SUCCEEDED)
        finished = self.jobs.get(job.id)
        log.info(
            "job %s: %s, %d done, %d failed", job.id, finished.state, finished.done, finished.failed
        )
        return finished

    def _pins(self, runner: Runner, collection: str | None) -> bool:
        return (
            collection is not None
            and self.uid_of is not None
            and getattr(runner, "pins_collection", True)
        )

    def _check_pin(self, runner: Runner, job: Job) -> None:
        """A pinned job's collection is still the one it was submitted for."""
        if not self._pins(runner, job.collection) or "collection_uid" not in job.params:
            return
        assert job.collection is not None and self.uid_of is not None
        if self.uid_of(job.collection) != job.params["collection_uid"]:
            raise JobFailed(f"collection {job.collection!r} was deleted and created again")


def job_summary(job: Job) -> dict[str, Any]:
    """The job as the API and the CLI show it (params whose names start with ``_`` are the
    runner's own, such as a file of the in-process CLI's user: never shown)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state.value,
        "collection": job.collection,
        "params": {k: v for k, v in job.params.items() if not k.startswith("_")},
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
        "items_per_second": None
        if job.items_per_second is None
        else round(job.items_per_second, 2),
        "eta_seconds": None if job.eta_seconds is None else round(job.eta_seconds, 1),
        "errors": job.errors,
        "message": job.message,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "detail": job.detail,
        "server": job.owner,  # the server that runs it, or ran it last (its id)
    }


def batched(records: Iterator[T], size: int, ramp: int = 0) -> Iterator[list[T]]:
    """``records`` in lists of ``size`` (the last one shorter); with ``ramp``, the first
    ``ramp`` lists smaller, from ``size >> ramp`` doubling up (a job's first progress comes
    after a small chunk, not a whole one)."""
    for step in range(ramp, -1, -1):
        chunk = list(itertools.islice(records, max(1, size >> step)))
        if not chunk:
            return
        yield chunk
    while True:
        chunk = list(itertools.islice(records, size))
        if not chunk:
            return
        yield chunk


def shown(text: str, limit: int = 500) -> str:
    """Text from a source as a job report can carry it: bounded, and valid unicode."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
