"""Re-index jobs: a collection moved to another index spec without re-embedding
(``index.vectors.reindex``). The new index is built and measured from the stored vectors while
the old one serves; the switch is one swap under the collection's lock. The report
(per modality: recall against exact search as served and raw, p50 latency, bytes per
vector) goes on the job and on the collection. A job stopped by a restart starts over:
nothing changes until the switch."""

from __future__ import annotations

import time
from typing import Any

from app.service.jobs.loop import JobContext
from index import CollectionStore, JobStore, Modality
from index.vectors.advice import IndexReport, faiss_only
from index.vectors.reindex import build_new_index, switch_index

REINDEX_JOB = "reindex"


class ReindexRunner:
    kind = REINDEX_JOB

    def __init__(self, store: CollectionStore, jobs: JobStore) -> None:
        self.store = store
        self.jobs = jobs

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        assert collection is not None
        c = self.store.get(collection)  # 404 or 409 now
        backends = faiss_only(self.store.backends)  # 400 on Milvus
        spec = backends.check(c.dim, params["index"])  # 400 for a bad spec, before the job
        return {"index": spec, "previous_index": c.spec}

    def run(self, ctx: JobContext) -> None:
        job = ctx.job
        assert job.collection is not None
        name, spec = job.collection, job.params["index"]
        info = self.store.serving(name)
        total = sum(info.counts.values())
        detail: dict[str, Any] = {"phase": "building", "index": spec}
        self.jobs.report(job.id, detail, done=0, total=total)
        started, reports = time.monotonic(), {}

        def built(m: Modality, report: IndexReport) -> None:
            reports[m.value] = report.as_dict()
            detail["report"] = reports
            self.jobs.report(job.id, detail, done=sum(r["vectors"] for r in reports.values()))
            ctx.progress()

        indexes = build_new_index(self.store, name, spec, built)
        if ctx.stopping():  # a server stopping: the job starts over after the restart
            return  # cancelled: the old index keeps serving
        # From here a cancel is refused (409); one answered before this stops the job here.
        detail["phase"] = "switching"
        if not self.jobs.pass_point_of_no_return(job.id, detail):
            return  # cancelled: the old index keeps serving
        report = {
            "index": spec,
            "previous_index": job.params["previous_index"],
            "job": job.id,
            "seconds": round(time.monotonic() - started, 3),
            "modalities": reports,
        }
        switch_index(self.store, name, job.params["collection_uid"], spec, indexes, report)
        detail.update(phase="done", report=reports)
        self.jobs.report(job.id, detail, seconds=time.monotonic() - started)
