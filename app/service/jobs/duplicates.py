"""Duplicates jobs: the groups of near-duplicate items of one modality of a collection.

The stored vectors are walked in label order, a batch at a time, and each batch is
searched against the collection's own index as one matrix: n searches of a few
neighbours, not n² comparisons. Two items at or above the threshold are joined
(union-find), so a group is what such pairs connect. Progress is the vectors searched so
far. When the walk ends the groups are written to ``<data dir>/job-results/<id>.json``
(served by ``GET /v1/jobs/{id}/result``) and summed up in the job's ``detail``. The job
writes nothing to the collection: stopped by a restart, it starts over.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from app.service.config import Settings
from app.service.jobs.loop import JobContext
from index import CollectionStore, JobStore, Modality

DUPLICATES_JOB = "duplicates"
BATCH = 256  # vectors searched as one matrix
NEIGHBOURS = 32  # neighbours looked at per vector; larger groups still join through them


class DuplicatesRunner:
    kind = DUPLICATES_JOB

    def __init__(self, settings: Settings, store: CollectionStore, jobs: JobStore) -> None:
        self.results = settings.shared_root / "job-results"
        self.store = store
        self.jobs = jobs

    def result_path(self, job_id: str) -> Path:
        return self.results / f"{job_id}.json"

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        assert collection is not None
        self.store.get(collection)  # 404 or 409 now, not a failed job later
        return {
            "threshold": float(params["threshold"]),
            "modality": Modality(params["modality"]).value,
        }

    def run(self, ctx: JobContext) -> None:
        job = ctx.job
        assert job.collection is not None
        name, modality = job.collection, Modality(job.params["modality"])
        threshold = float(job.params["threshold"])
        info = self.store.serving(name)
        total = info.counts.get(modality, 0)
        self.jobs.report(job.id, {"phase": "searching"}, done=0, total=total)
        parent: dict[int, int] = {}

        def root(x: int) -> int:
            while parent.get(x, x) != x:
                parent[x] = parent.get(parent[x], parent[x])  # path halving
                x = parent[x]
            return x

        ids: dict[int, str] = {}
        after, done, last = 0, 0, time.monotonic()
        while True:
            if ctx.stopping():
                return  # cancelled
            labels, batch_ids, vectors = self.store.vectors_after(name, modality, after, BATCH)
            if not labels:
                break
            hits = self.store.search(
                name, modality, vectors, NEIGHBOURS + 1, model_version=info.model_version
            )
            for label, row in zip(labels, hits, strict=True):
                for hit in row:
                    if hit.label != label and hit.score >= threshold:
                        a, b = root(label), root(hit.label)
                        if a != b:
                            parent[max(a, b)] = min(a, b)
            ids.update(zip(labels, batch_ids, strict=True))
            after, done = labels[-1], done + len(labels)
            now = time.monotonic()
            self.jobs.report(job.id, {"phase": "searching"}, done=done, seconds=now - last)
            last = now
            ctx.progress()
        members: dict[int, list[int]] = {}
        for label in ids:  # labels deleted during the walk are not in any group
            members.setdefault(root(label), []).append(label)
        groups = sorted(
            (sorted(m) for m in members.values() if len(m) > 1), key=lambda g: (-len(g), g[0])
        )
        result = {
            "collection": name,
            "modality": modality.value,
            "threshold": threshold,
            "groups": [{"ids": [ids[x] for x in g]} for g in groups],
        }
        self._write(job.id, result)
        detail = {
            "phase": "done",
            "groups": len(groups),
            "items_in_groups": sum(len(g) for g in groups),
            "result": f"/v1/jobs/{job.id}/result",
        }
        self.jobs.report(job.id, detail, done=done)

    def _write(self, job_id: str, result: dict[str, Any]) -> None:
        self.results.mkdir(parents=True, exist_ok=True)
        path = self.result_path(job_id)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(result, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
