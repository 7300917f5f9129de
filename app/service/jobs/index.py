"""Index jobs: a whole corpus on disk into a collection.

A job reads its source in chunks; the ingest pipeline (``models.ingest``) decodes a chunk's
images while the previous chunk is being encoded. Each chunk's items and the job's
progress are committed in one transaction: stopping the server at any moment (even
``kill -9``) leaves a job that resumes from its last committed chunk. Items that already
hold the same bytes or text under the same model are counted as done without being
encoded again, so re-running a finished source adds nothing twice.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from app.service.config import Settings
from app.service.engine import Engine
from app.service.errors import Invalid
from app.service.jobs.loop import JobStopped, OnProgress, batched, shown
from app.service.jobs.ray_engine import RAY_ENGINE, RayIngest, ray_available
from app.service.search.retrieval import Retrieval
from index import CollectionStore, Job, JobState, JobStore, Modality, NewItem, Progress
from index.types import StoredVersion
from index.values import InvalidValue, check_item
from models.ingest import IngestLimits, IngestPipeline, PendingChunk
from models.preprocess import Decoded
from models.sources import SourceRecord, open_source

INDEX_JOB = "index"


@dataclass
class _Chunk:
    records: list[SourceRecord]
    existing: dict[str, StoredVersion]
    pending: PendingChunk
    started: float = field(default_factory=time.monotonic)


class IndexRunner:
    kind = INDEX_JOB

    def __init__(
        self,
        settings: Settings,
        store: CollectionStore,
        jobs: JobStore,
        engine: Engine,
        retrieval: Retrieval,
    ) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.engine = engine
        self.retrieval = retrieval
        self.pipeline = IngestPipeline(
            engine.encoder.preprocess,
            engine.encoder.device,
            IngestLimits(
                settings.max_upload_bytes, settings.max_image_pixels, settings.import_workers
            ),
            engine.run_model,
            device_decode=settings.import_device_decode,
            sink=store.blobs.put if store.store_images else None,
        )
        settings.import_root_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.pipeline.close()

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        assert collection is not None
        # 404 (or 409 for a broken one) now, not a failed job later. The job writes into
        # this collection only, never into one created again later under the same name.
        uid = self.store.get(collection).uid
        open_source(self.settings.import_root_dir, params["source"], params.get("format"))
        engine = params.get("engine") or "local"
        if engine == RAY_ENGINE and not ray_available():
            raise Invalid(
                "this server has no Ray: pip install 'xmodal[scale]'", code="engine_unavailable"
            )
        checked = {
            "source": params["source"],
            "format": params.get("format"),
            "collection_uid": uid,
            "engine": engine,
        }
        if params.get("ray_address"):
            checked["ray_address"] = params["ray_address"]  # the in-process CLI's --ray ADDRESS
        return checked

    def local_embed(
        self, items: list[NewItem], records: list[SourceRecord], version: str
    ) -> tuple[list[NewItem], np.ndarray]:
        """Encode ``items`` (made from ``records``) in this process with ``version``: a Ray
        job's chunk when the collection switched versions under it."""
        encoder = self.engine.encoder_of(version)
        by_id = {r.id: r for r in records}
        images = [by_id[it.id] for it in items if it.modality is Modality.IMAGE]
        decoded = {r.id: d for r, d in self.pipeline.finish(self.pipeline.start(images, {}))}
        vectors = []
        for it in items:
            if it.modality is Modality.TEXT:
                vectors.append(self.engine.run_model(encoder.encode_texts, [it.text or ""]))
                continue
            d = decoded[it.id]
            if d.pixels is None:
                raise InvalidValue(f"{it.id!r} could not be decoded again: {d.error}")
            vectors.append(self.engine.run_model(self.pipeline.encode_pixels, encoder, [d.pixels]))
        return items, np.concatenate(vectors)

    def run(
        self, job: Job, should_stop: Callable[[], bool], on_progress: OnProgress | None
    ) -> None:
        if job.params.get("engine") == RAY_ENGINE:
            RayIngest(self).run(job, should_stop, on_progress)
            return
        try:
            self._run(job, should_stop, on_progress)
        except BrokenProcessPool:
            self.pipeline.reset()
            raise

    def _run(
        self, job: Job, should_stop: Callable[[], bool], on_progress: OnProgress | None
    ) -> None:
        assert job.collection is not None
        collection = job.collection
        source = open_source(
            self.settings.import_root_dir, job.params["source"], job.params.get("format")
        )
        self.store.serving(collection)
        if job.total is None:
            self.jobs.set_total(job.id, source.count())
        remaining = itertools.islice(source.records(), job.cursor, None)
        chunks = batched(remaining, self.settings.import_chunk_size)
        pending: collections.deque[_Chunk] = collections.deque()
        last_commit = time.monotonic()
        refused: set[str] = set()  # image ids the last chunk refused (their captions follow)
        while True:
            while len(pending) <= self.settings.import_prefetch_chunks:
                records = next(chunks, None)
                if records is None:
                    break
                pending.append(self._start_chunk(collection, records))
            if not pending:
                return
            chunk = pending.popleft()
            if should_stop():
                if self.jobs.state(job.id) is JobState.RUNNING:
                    raise JobStopped
                return  # cancelled: stop here, what is committed stays
            refused = self._commit_chunk(
                job, collection, chunk, refused, time.monotonic() - last_commit
            )
            last_commit = time.monotonic()
            if on_progress is not None:
                on_progress(self.jobs.get(job.id))

    def _start_chunk(self, collection: str, records: list[SourceRecord]) -> _Chunk:
        """Look up what is stored already and hand the chunk's images to the decoders."""
        records = [self._check(r) for r in records]
        existing = self.store.existing(collection, [r.id for r in records if r.error is None])
        version = self.engine.space
        expected = {
            r.id: known.content_sha256
            for r in records
            if (known := existing.get(r.id)) is not None
            and known.modality is Modality.IMAGE
            and known.model_version == version
            and known.content_sha256 is not None
        }
        images = [
            r for r in records if r.kind == "image" and r.error is None and r.image is not None
        ]
        return _Chunk(records, existing, self.pipeline.start(images, expected))

    def _check(self, record: SourceRecord) -> SourceRecord:
        """A record the store would refuse is a failed record, not a failed job."""
        if record.error is not None:
            return record
        try:
            check_item(record.id, record.text, record.metadata)
        except InvalidValue as exc:
            return replace(record, error=str(exc))
        limit = self.settings.max_text_chars
        if record.text is not None and len(record.text) > limit:
            return replace(
                record, error=f"the text has {len(record.text)} characters; the limit is {limit}"
            )
        return record

    def _commit_chunk(
        self, job: Job, collection: str, chunk: _Chunk, refused: set[str], seconds: float
    ) -> set[str]:
        """Encode the chunk and commit it with the job's progress (through the retrieval
        path, which encodes again if an activation switched the model meanwhile). Returns
        the ids of the images it refused."""
        texts, images, progress, refused = self._sort(chunk, refused)
        if not texts and not images:
            self.jobs.advance(job.id, replace(progress, seconds=seconds))
            return refused

        def embed(version: str) -> tuple[list[NewItem], np.ndarray]:
            encoder = self.engine.encoder_of(version)
            vectors = [np.zeros((0, encoder.dim), np.float32)]
            items: list[NewItem] = []
            if texts:
                vectors.append(
                    self.engine.run_model(encoder.encode_texts, [r.text or "" for r in texts])
                )
                items += [NewItem(r.id, Modality.TEXT, r.metadata, text=r.text) for r in texts]
            batch = self.settings.import_batch_size
            for start in range(0, len(images), batch):
                part = images[start : start + batch]
                pixels = [d.pixels for _, d in part]
                vectors.append(self.engine.run_model(self.pipeline.encode_pixels, encoder, pixels))
                items += [
                    NewItem(
                        r.id,
                        Modality.IMAGE,
                        r.metadata,
                        media_type=d.media_type,
                        content_sha256=d.sha256,
                    )
                    for r, d in part
                ]
            return items, np.concatenate(vectors)

        done = replace(progress, done=progress.done + len(texts) + len(images), seconds=seconds)
        self.retrieval.add_blocking(
            collection,
            embed,
            extra=self.jobs.recorder(job.id, done),
            uid=job.params.get("collection_uid"),
        )
        return refused

    def _sort(
        self, chunk: _Chunk, refused_before: set[str]
    ) -> tuple[list[SourceRecord], list[tuple[SourceRecord, Decoded]], Progress, set[str]]:
        """The chunk's texts and decoded images to encode, its progress so far (failures,
        and items unchanged since they were stored), and the ids of the images it refused:
        a caption whose image was refused (here or at the end of the chunk before) fails
        with it."""
        done, failed = 0, 0
        errors: list[dict[str, Any]] = []
        texts: list[SourceRecord] = []
        version = self.engine.space
        refused: set[str] = set()

        counts: collections.Counter[str] = collections.Counter()

        def fail(record: SourceRecord, reason: str) -> None:
            nonlocal failed
            failed += 1
            counts[f"{_plural(record.kind)}_failed"] += 1
            if record.kind == "image":
                refused.add(record.id)
            errors.append({"item": shown(record.id), "seq": record.seq, "reason": shown(reason)})

        images: list[tuple[SourceRecord, Decoded]] = []
        for r, d in self.pipeline.finish(chunk.pending):
            if d.error is not None:
                fail(r, d.error)
            elif d.unchanged:
                done += 1
                counts["images_unchanged"] += 1
            else:
                images.append((r, d))
        for r in chunk.records:
            if r.error is not None:
                fail(r, r.error)
        for r in chunk.records:
            if r.error is not None or r.kind != "text":
                continue
            image_id = r.metadata.get("image_id")
            if isinstance(image_id, str) and image_id in refused | refused_before:
                fail(r, f"its image {image_id!r} was refused")
                continue
            known = chunk.existing.get(r.id)
            if known and known.text == r.text and known.model_version == version:
                done += 1
                counts["texts_unchanged"] += 1
            else:
                texts.append(r)
        counts["images_new"] += len(images)
        counts["texts_new"] += len(texts)
        cursor = chunk.records[-1].seq + 1
        errors.sort(key=lambda e: int(e["seq"]))
        progress = Progress(cursor, done, failed, errors, counts=dict(counts))
        return texts, images, progress, refused


def _plural(kind: str) -> str:
    return "images" if kind == "image" else "texts"
