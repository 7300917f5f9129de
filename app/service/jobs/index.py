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
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.service.config import Settings
from app.service.engine import Engine
from app.service.errors import Invalid
from app.service.jobs.chunks import IMPORT_BATCH, ChunkBook, IngestParts, SortedChunk, source_root
from app.service.jobs.loop import JobContext, batched
from app.service.jobs.ray_engine import RAY_ENGINE, RayIngest, ray_available
from app.service.search.retrieval import Retrieval
from index import CollectionStore, JobStore
from index.types import StoredVersion
from index.values import InvalidValue
from models.decoding import Decoded
from models.ingest import IngestLimits, IngestPipeline, PendingChunk
from models.sources import SourceRecord, open_source

INDEX_JOB = "index"
PREFETCH_CHUNKS = 1  # chunks decoding ahead of the one being encoded
RAMP_CHUNKS = 3  # the first chunks an eighth, a quarter, a half of the size: early progress


@dataclass
class _Chunk:
    records: list[SourceRecord]
    existing: dict[str, StoredVersion]
    pending: PendingChunk


class IndexRunner:
    """Index jobs: checked here, run by one of two peer engines, in this process
    (``LocalIngest``) or on Ray (``RayIngest``), each built from the same parts."""

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
        parts = IngestParts(settings, store, jobs, engine, retrieval)
        self.local = LocalIngest(parts)
        self.ray = RayIngest(parts, self.local.reencode)
        settings.import_root_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.local.close()

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        assert collection is not None
        # 404 (or 409 for a broken one) now, not a failed job later. The job writes into
        # this collection only, never into one created again later under the same name.
        self.store.get(collection)
        scoped = bool(params.get("scoped"))
        root = source_root(self.settings, collection, scoped)
        if scoped and not root.is_dir():
            raise Invalid(
                f"this key reads sources under {collection}/ of the import root, which does "
                "not exist",
                code="invalid_source",
            )
        open_source(root, params["source"], params.get("format"))
        engine = params.get("engine") or "local"
        if engine == RAY_ENGINE and not ray_available():
            raise Invalid(
                "this server has no Ray: pip install 'xmodal[scale]'", code="engine_unavailable"
            )
        checked = {"source": params["source"], "format": params.get("format"), "engine": engine}
        if scoped:
            checked["scoped"] = True
        if params.get("ray_address"):
            checked["ray_address"] = params["ray_address"]  # the in-process CLI's --ray ADDRESS
        return checked

    def run(self, ctx: JobContext) -> None:
        engine = self.ray if ctx.job.params.get("engine") == RAY_ENGINE else self.local
        engine.run(ctx)


class LocalIngest:
    """An index job in this process: the ingest pipeline decodes a chunk's images while
    the previous chunk is encoded on the model thread."""

    def __init__(self, parts: IngestParts) -> None:
        self.parts = parts
        self.engine = parts.engine
        settings, store = parts.settings, parts.store
        self.chunk_size = settings.import_chunk_size
        self.batch_size = IMPORT_BATCH
        self.pipeline = IngestPipeline(
            parts.engine.encoder.pixels,
            parts.engine.encoder.device,
            IngestLimits(
                settings.max_upload_bytes, settings.max_image_pixels, settings.decode_workers
            ),
            parts.engine.run_model,
            sink=store.blobs if store.store_images else None,
        )

    def close(self) -> None:
        self.pipeline.close()

    def reencode(self, chunk: SortedChunk[Any], version: str) -> np.ndarray:
        """The vectors of ``chunk.items`` with ``version``, decoding its images again in
        this process: a Ray job's chunk when the collection switched versions under it."""
        images = [r for r, _ in chunk.images]
        decoded = self.pipeline.finish(self.pipeline.start(images, {}))
        for r, d in decoded:
            if d.pixels is None:
                raise InvalidValue(f"{r.id!r} could not be decoded again: {d.error}")
        again = SortedChunk(chunk.records, chunk.texts, decoded, chunk.progress)
        return self._vectors(again, version)

    def run(self, ctx: JobContext) -> None:
        book = self.parts.book(ctx.job)
        chunks = batched(self.parts.records(book), self.chunk_size, ramp=RAMP_CHUNKS)
        pending: collections.deque[_Chunk] = collections.deque()
        last_commit = time.monotonic()
        while True:
            while len(pending) <= PREFETCH_CHUNKS:
                records = next(chunks, None)
                if records is None:
                    break
                pending.append(self._start_chunk(book, records))
            if not pending:
                return
            chunk = pending.popleft()
            if ctx.stopping():
                return
            outcomes = {r.seq: d for r, d in self.pipeline.finish(chunk.pending)}
            sorted_chunk = book.sort(
                chunk.records,
                outcomes,
                chunk.existing,
                self.engine.space,
                time.monotonic() - last_commit,
            )
            book.commit(sorted_chunk, self._vectors)
            last_commit = time.monotonic()
            ctx.progress()

    def _start_chunk(self, book: ChunkBook, records: list[SourceRecord]) -> _Chunk:
        """Look up what is stored already and hand the chunk's images to the decoders."""
        records = book.check(records)
        existing = book.existing(records)
        expected = book.expected(records, existing, self.engine.space)
        images = [
            r for r in records if r.kind == "image" and r.error is None and r.image is not None
        ]
        return _Chunk(records, existing, self.pipeline.start(images, expected))

    def _vectors(self, chunk: SortedChunk[Decoded], version: str) -> np.ndarray:
        """Encode a chunk's texts, then its decoded images in batches, with ``version``."""
        encoder = self.engine.encoder_of(version)
        vectors = [np.zeros((0, encoder.dim), np.float32)]
        if chunk.texts:
            texts = [r.text or "" for r in chunk.texts]
            vectors.append(self.engine.run_model(encoder.encode_texts, texts))
        batch = self.batch_size
        for start in range(0, len(chunk.images), batch):
            pixels = [d.pixels for _, d in chunk.images[start : start + batch]]
            vectors.append(self.engine.run_model(self.pipeline.encode_pixels, encoder, pixels))
        return np.concatenate(vectors)
