"""Background jobs: building a collection's index from a whole corpus on disk.

One job runs at a time, in its own thread. A job reads its source in chunks; image files
are read, hashed, decoded and resized in worker processes (PIL), or on CUDA decoded by
nvJPEG on the GPU, while the previous chunk is being encoded, so decoding and the model
overlap. Each chunk's items and the job's progress are committed in one transaction:
stopping the server at any moment (even ``kill -9``) leaves a job that resumes from its
last committed chunk. Items that already hold the same bytes or text under the same
model are counted as done without being encoded again, so re-running a finished source
adds nothing twice.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from app.activation import ACTIVATE_JOB, ActivationError, Activator
from app.config import Settings
from app.finetune import FINETUNE_JOB, FineTuner, check_hyperparameters
from index import (
    CollectionStore,
    Job,
    JobState,
    JobStore,
    Modality,
    ModelMismatch,
    NewItem,
    Progress,
    StoredVersion,
    StoreError,
)
from models import ClipEncoder
from models.finetune import TrainingStopped
from models.preprocess import (
    Decoded,
    DecodeTask,
    PixelPipeline,
    decode_files,
    decode_jpegs_on_device,
    init_worker,
    read_and_hash,
)
from models.registry import UnknownModel
from models.sources import SourceError, SourceRecord, open_source

log = logging.getLogger(__name__)
T = TypeVar("T")
ModelRunner = Callable[..., Any]  # run_model(fn, *args) -> fn(*args), on the model thread

INDEX_JOB = "index"
_TASK_SIZE = 16  # files per worker task: large enough to amortise the IPC


@dataclass
class _Chunk:
    records: list[SourceRecord]
    existing: dict[str, StoredVersion]
    decodes: list[tuple[list[SourceRecord], Future[list[Decoded]]]] = field(default_factory=list)
    reads: list[tuple[SourceRecord, Future[Decoded]]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class JobStopped(Exception):
    """The server is shutting down: leave the job running, to be resumed."""


class JobManager:
    def __init__(
        self,
        settings: Settings,
        store: CollectionStore,
        jobs: JobStore,
        active_encoder: Callable[[], ClipEncoder],
        run_model: ModelRunner,
        finetuner: FineTuner | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        # Read at each use: an activation can change the active encoder mid-job.
        self._active_encoder = active_encoder
        self.run_model = run_model
        self.finetuner = finetuner
        self.activator: Activator | None = None  # set by the server, which owns the engine
        self.pipeline = PixelPipeline.from_preprocess(self.encoder.preprocess)
        self.device_decode = settings.import_device_decode
        if self.device_decode is None:
            self.device_decode = self.encoder.device.type == "cuda"
        self._pool: ProcessPoolExecutor | None = None
        self._io_pool: ThreadPoolExecutor | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.settings.import_root_dir.mkdir(parents=True, exist_ok=True)

    @property
    def encoder(self) -> ClipEncoder:
        return self._active_encoder()

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Run queued jobs, beginning with any that a restart interrupted."""
        self._thread = threading.Thread(target=self._loop, daemon=True, name="xmodal-jobs")
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._io_pool is not None:
            self._io_pool.shutdown(wait=True, cancel_futures=True)
            self._io_pool = None

    def submit_index(self, collection: str, source: str, fmt: str | None) -> Job:
        self.store.get_collection(collection)  # 404 now, not a failed job later
        open_source(self.settings.import_root_dir, source, fmt)  # 400 now for a bad source
        job = self.jobs.create(INDEX_JOB, collection, {"source": source, "format": fmt})
        self._wake.set()
        return job

    def submit_finetune(self, params: dict[str, Any]) -> Job:
        if self.finetuner is None:
            raise RuntimeError("fine-tuning is not set up")
        root = self.settings.import_root_dir
        open_source(root, params["source"])  # 400 now for a bad source
        if params.get("eval_source"):
            open_source(root, params["eval_source"])
        params["hyperparameters"] = check_hyperparameters(
            params["method"], params.get("hyperparameters") or {}
        )
        job = self.jobs.create(FINETUNE_JOB, None, params)
        self._wake.set()
        return job

    def _loop(self) -> None:
        while not self._stopping.is_set():
            for job in self.jobs.unfinished():
                if self._stopping.is_set():
                    return
                try:
                    self.run(job)
                except Exception:  # the loop must outlive any one job
                    log.exception("job %s crashed", job.id)
                    self.jobs.finish(job.id, JobState.FAILED, "internal error; see the server log")
            self._wake.wait(timeout=2.0)
            self._wake.clear()

    # --- running one job ------------------------------------------------------------------------
    def run(self, job: Job, on_progress: Callable[[Job], None] | None = None) -> Job:
        """Run (or resume) ``job`` to its end in this thread."""
        if not self.jobs.start(job.id):
            return self.jobs.get(job.id)
        log.info("job %s (%s) running: %s", job.id, job.kind, job.params)
        try:
            if job.kind == FINETUNE_JOB:
                self._finetune(self.jobs.get(job.id))
            elif job.kind == ACTIVATE_JOB:
                self._activate(self.jobs.get(job.id))
            else:
                self._index(self.jobs.get(job.id), on_progress)
        except JobStopped:
            log.info("job %s: stopped with the server; it resumes on the next start", job.id)
            return self.jobs.get(job.id)
        except (SourceError, StoreError, UnknownModel, ActivationError) as exc:
            self.jobs.finish(job.id, JobState.FAILED, str(exc))
        except BrokenProcessPool as exc:
            self._pool = None
            self.jobs.finish(job.id, JobState.FAILED, f"a decoding worker died: {exc}")
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

    def submit_activation(self, version: str, rollback: bool = False) -> Job:
        job = self.jobs.create(ACTIVATE_JOB, None, {"version": version, "rollback": rollback})
        self._wake.set()
        return job

    def _should_stop(self, job: Job) -> Callable[[], bool]:
        return lambda: self._stopping.is_set() or self.jobs.state(job.id) is not JobState.RUNNING

    def _activate(self, job: Job) -> None:
        if self.activator is None:
            raise RuntimeError("activation needs a running server")
        try:
            self.activator.run(job, self._should_stop(job))
        except TrainingStopped:
            if self._stopping.is_set():
                raise JobStopped from None  # starts over after the restart

    def _finetune(self, job: Job) -> None:
        assert self.finetuner is not None

        try:
            self.finetuner.run(job, self.encoder, self._should_stop(job))
        except TrainingStopped:
            if self._stopping.is_set():
                raise JobStopped from None  # trains again from the start after the restart

    def _index(self, job: Job, on_progress: Callable[[Job], None] | None) -> None:
        assert job.collection is not None
        collection = job.collection
        source = open_source(
            self.settings.import_root_dir, job.params["source"], job.params.get("format")
        )
        self.store.get_collection(collection)
        if job.total is None:
            self.jobs.set_total(job.id, source.count())
        remaining = itertools.islice(source.records(), job.cursor, None)
        chunks = _batched(remaining, self.settings.import_chunk_size)
        pending: collections.deque[_Chunk] = collections.deque()
        last_commit = time.monotonic()
        while True:
            while len(pending) <= self.settings.import_prefetch_chunks:
                records = next(chunks, None)
                if records is None:
                    break
                pending.append(self._start_chunk(collection, records))
            if not pending:
                return
            chunk = pending.popleft()
            if self._stopping.is_set():
                raise JobStopped
            if self.jobs.state(job.id) is not JobState.RUNNING:
                return  # cancelled: stop here, what is committed stays
            self._commit_chunk(job, collection, chunk, time.monotonic() - last_commit)
            last_commit = time.monotonic()
            if on_progress is not None:
                on_progress(self.jobs.get(job.id))

    def _commit_chunk(self, job: Job, collection: str, chunk: _Chunk, seconds: float) -> None:
        """Encode the chunk and commit it with the job's progress. If an activation switched
        the collection to a new model meanwhile, encode it again with that model."""
        for attempt in (1, 2):
            version = self.encoder.version
            items, vectors, progress = self._finish_chunk(chunk)
            progress = Progress(
                progress.cursor, progress.done, progress.failed, progress.errors, seconds=seconds
            )
            if not items:
                self.jobs.advance(job.id, progress)
                return
            try:
                self.store.upsert(
                    collection, items, vectors, version, extra=self.jobs.recorder(job.id, progress)
                )
                return
            except ModelMismatch:
                if attempt == 2 or self.encoder.version == version:
                    raise

    def _start_chunk(self, collection: str, records: list[SourceRecord]) -> _Chunk:
        """Look up what is stored already and hand the chunk's images to the decoders."""
        chunk = _Chunk(records, self.store.existing(collection, [r.id for r in records]))
        if self.device_decode:
            # Read and hash now, on I/O threads; decoded on the model's device when the
            # chunk's turn comes.
            limit = self.settings.max_upload_bytes
            for r in records:
                if r.kind == "image" and r.error is None and r.image is not None:
                    task = DecodeTask(r.image, self._expected_digest(chunk, r))
                    chunk.reads.append((r, self._io().submit(read_and_hash, task, limit)))
            return chunk
        images = [
            r for r in records if r.kind == "image" and r.error is None and r.image is not None
        ]
        for start in range(0, len(images), _TASK_SIZE):
            part = images[start : start + _TASK_SIZE]
            tasks = [DecodeTask(r.image, self._expected_digest(chunk, r)) for r in part if r.image]
            chunk.decodes.append(
                (
                    part,
                    self._decode_pool().submit(
                        decode_files,
                        tasks,
                        self.pipeline,
                        self.settings.max_upload_bytes,
                        self.settings.max_image_pixels,
                        self._sink(),
                    ),
                )
            )
        return chunk

    def _finish_chunk(self, chunk: _Chunk) -> tuple[list[NewItem], np.ndarray, Progress]:
        done, failed = 0, 0
        errors: list[dict[str, Any]] = []
        texts: list[SourceRecord] = []
        version = self.encoder.version

        def fail(record: SourceRecord, reason: str) -> None:
            nonlocal failed
            failed += 1
            errors.append({"item": record.id, "seq": record.seq, "reason": reason})

        for r in chunk.records:
            if r.error is not None:
                fail(r, r.error)
            elif r.kind == "text":
                known = chunk.existing.get(r.id)
                if known and known.text == r.text and known.model_version == version:
                    done += 1
                else:
                    texts.append(r)
        decoded = self._device_decode(chunk) if self.device_decode else self._collect(chunk)
        images: list[tuple[SourceRecord, Decoded]] = []
        for r, d in decoded:
            if d.error is not None:
                fail(r, d.error)
            elif d.unchanged:
                done += 1
            else:
                images.append((r, d))
        vectors = [np.zeros((0, self.encoder.dim), np.float32)]
        items: list[NewItem] = []
        if texts:
            vectors.append(self.run_model(self.encoder.encode_texts, [r.text or "" for r in texts]))
            items += [NewItem(r.id, Modality.TEXT, r.metadata, text=r.text) for r in texts]
        batch = self.settings.import_batch_size
        for start in range(0, len(images), batch):
            part = images[start : start + batch]
            vectors.append(self.run_model(self._encode_pixels, [d.pixels for _, d in part]))
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
        done += len(items)
        cursor = chunk.records[-1].seq + 1
        errors.sort(key=lambda e: int(e["seq"]))
        return items, np.concatenate(vectors), Progress(cursor, done, failed, errors)

    def _encode_pixels(self, pixels: list[np.ndarray | torch.Tensor | None]) -> np.ndarray:
        """Stack a batch (HWC arrays from the PIL workers, CHW tensors already on the device
        from nvJPEG), normalise it on the device and encode it."""
        device = self.encoder.device
        batch = torch.stack(
            [
                p.to(device)
                if isinstance(p, torch.Tensor)
                else torch.from_numpy(np.ascontiguousarray(p)).to(device).permute(2, 0, 1)
                for p in pixels
            ]
        )
        return self.encoder.encode_image_tensors(self.pipeline.normalise(batch, device))

    def _collect(self, chunk: _Chunk) -> list[tuple[SourceRecord, Decoded]]:
        out: list[tuple[SourceRecord, Decoded]] = []
        for records, future in chunk.decodes:
            out += list(zip(records, future.result(), strict=True))
        return out

    def _device_decode(self, chunk: _Chunk) -> list[tuple[SourceRecord, Decoded]]:
        """Decode the JPEGs the I/O threads read (at prefetch) on the model's device and
        send what it cannot decode (other formats, odd JPEGs) through the PIL path."""
        out: list[tuple[SourceRecord, Decoded]] = []
        jpegs: list[tuple[SourceRecord, Decoded]] = []
        for r, future in chunk.reads:
            read = future.result()
            if read.raw is None:  # failed, or unchanged
                out.append((r, read))
            else:
                jpegs.append((r, read))
        blobs = [read.raw for _, read in jpegs if read.raw is not None]
        decoded = (
            self.run_model(
                decode_jpegs_on_device,
                blobs,
                self.pipeline,
                self.encoder.device,
                self.settings.max_image_pixels,
            )
            if blobs
            else []
        )
        sink = self._sink()
        writes: list[Future[Any]] = []
        fallback: list[SourceRecord] = []
        for (r, read), pixels in zip(jpegs, decoded, strict=True):
            if pixels is None:
                fallback.append(r)
                continue
            if sink is not None and read.raw is not None and read.sha256 is not None:
                writes.append(self._io().submit(sink, read.raw, read.sha256))
            out.append((r, Decoded(read.sha256, "image/jpeg", pixels)))
        if fallback:
            tasks = [DecodeTask(r.image) for r in fallback if r.image is not None]
            results = (
                self._decode_pool()
                .submit(
                    decode_files,
                    tasks,
                    self.pipeline,
                    self.settings.max_upload_bytes,
                    self.settings.max_image_pixels,
                    sink,
                )
                .result()
            )
            out += list(zip(fallback, results, strict=True))
        for w in writes:
            w.result()  # every image file is on disk before its item commits
        return out

    def _io(self) -> ThreadPoolExecutor:
        if self._io_pool is None:
            self._io_pool = ThreadPoolExecutor(
                max(4, 2 * (os.cpu_count() or 1)), thread_name_prefix="xmodal-import-io"
            )
        return self._io_pool

    def _expected_digest(self, chunk: _Chunk, record: SourceRecord) -> str | None:
        known = chunk.existing.get(record.id)
        if (
            known
            and known.modality is Modality.IMAGE
            and known.model_version == self.encoder.version
        ):
            return known.content_sha256
        return None

    def _sink(self) -> Callable[[bytes, str], Any] | None:
        return self.store.blobs.put if self.store.store_images else None

    def _decode_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            workers = self.settings.import_workers or os.cpu_count() or 1
            # spawn, not fork: the parent holds CUDA, torch thread pools and sqlite handles.
            self._pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(os.getpid(),),
            )
        return self._pool


def _batched(records: Iterator[SourceRecord], size: int) -> Iterator[list[SourceRecord]]:
    while True:
        chunk = list(itertools.islice(records, size))
        if not chunk:
            return
        yield chunk


def job_summary(job: Job) -> dict[str, Any]:
    """The job as the API and the CLI show it."""
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state.value,
        "collection": job.collection,
        "params": job.params,
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
    }
