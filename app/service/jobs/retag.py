"""Re-tag jobs: a collection's pictures tagged again from their stored vectors after its
label set changed (``app.service.tagging``); nothing is embedded again but the labels. The
pictures are read in label order, a chunk at a time, and written back with their new tags
and their vectors as stored; each chunk commits with the job's progress, so a job
stopped by a restart resumes after its last chunk. A set removed: the tags are removed."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.service.jobs.loop import JobContext
from app.service.tagging import TAGS_KEY, Tagger
from index import CollectionStore, JobStore, Modality, NewItem, Progress
from index.catalogue.rows import STORED_COLUMNS, stored_item_from_row

RETAG_JOB = "retag"
CHUNK = 256


class RetagRunner:
    kind = RETAG_JOB

    def __init__(self, store: CollectionStore, jobs: JobStore, tagger: Tagger) -> None:
        self.store = store
        self.jobs = jobs
        self.tagger = tagger

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        assert collection is not None
        self.store.get(collection)  # 404 or 409 now
        return {}

    def run(self, ctx: JobContext) -> None:
        job = ctx.job
        assert job.collection is not None
        name = job.collection
        info = self.store.serving(name)
        # Written back, a picture gets a new label: the walk ends at the last label there
        # was when it began (kept in the job, for a resume).
        upto = job.detail.get("upto")
        if upto is None:
            row = (
                self.store.db.reader()
                .execute("SELECT MAX(label) FROM items WHERE collection = ?", (name,))
                .fetchone()
            )
            upto = int(row[0] or 0)
        detail = {"phase": "tagging", "upto": upto}
        self.jobs.report(job.id, detail, total=info.counts.get(Modality.IMAGE, 0))
        cursor = job.cursor
        while not ctx.stopping():
            rows = (
                self.store.db.reader()
                .execute(
                    f"SELECT {STORED_COLUMNS} FROM items WHERE collection = ? AND modality = ?"
                    " AND label > ? AND label <= ? ORDER BY label LIMIT ?",
                    (name, Modality.IMAGE.value, cursor, upto, CHUNK),
                )
                .fetchall()
            )
            if not rows:
                break
            stored = [stored_item_from_row(r) for r in rows]
            labels = self.tagger.label_set(name)
            version = self.store.model_version_of(name)
            items = [
                NewItem(
                    it.id,
                    it.modality,
                    {k: v for k, v in it.metadata.items() if k != TAGS_KEY},
                    text=it.text,
                    media_type=it.media_type,
                    content_sha256=it.content_sha256,
                    raw_embedding=it.raw_embedding,
                    created_at=it.created_at,
                )
                for it in stored
            ]
            matrix = np.stack([it.embedding for it in stored])
            if labels is not None:
                items = self.tagger.tagged(name, version, items, matrix)
            cursor = stored[-1].label
            progress = Progress(cursor=cursor, done=len(items))
            self.store.upsert(
                name,
                items,
                matrix,
                version,
                extra=self.jobs.recorder(job.id, progress),
                uid=job.params["collection_uid"],
            )
            ctx.progress()
        if not ctx.stopping():
            self.jobs.report(job.id, {**detail, "phase": "done"})
