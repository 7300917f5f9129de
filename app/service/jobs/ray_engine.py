"""Index jobs on a Ray cluster (``"engine": "ray"``).

The job runs as an in-process one does, through the same chunk accounting
(``app.service.jobs.chunks``: chunks in source order, each chunk's items and the job's
progress committed in one transaction, failures counted per record, cancel and resume
from the last committed chunk), except for where the work is done: the source's records
go to the cluster a window of chunks at a time; reading, hashing and decoding run as Ray
tasks on the cluster's CPUs (the function the in-process job's decoding threads run, which
does not import torch), and encoding in actors (one per GPU when the cluster has GPUs),
started once per job and given the job's encoder once: a window's batches go to them in
turn, each decoded batch straight from its task to an actor. The vectors come back in
batches and are committed here. If an activation switches the collection's model version meanwhile,
the chunk is encoded again in this process with the new version.

Ray is optional (``pip install 'xmodal[scale]'``); without an address the server starts a
local cluster in its own process the first time a job asks for one, bound to loopback.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.service.jobs.chunks import IMPORT_BATCH, IngestParts, SortedChunk
from app.service.jobs.loop import JobContext, batched
from models.decoding import DecodeTask, decode_files
from models.ingest import encode_uint8
from models.pixels import PixelSpec
from models.sources import FileRef, SourceRecord

RAY_ENGINE = "ray"
RAY_CPU_ACTORS = 1  # encoding actors on a cluster without GPUs (else one per GPU)
WINDOW_CHUNKS = 8  # chunks handed to Ray at once: enough to keep the actors busy
DECODE_BATCH = 32  # records per decoding task
_LOCK = threading.Lock()


# Ray's own switch for a cluster on loopback only (its default on macOS and Windows): read
# once when ray is imported, and inherited by the GCS, the raylet and the workers it starts.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


log = logging.getLogger(__name__)
LOCAL_STARTS = 2  # tries at starting the local cluster


def ray_available() -> bool:
    """Whether Ray is installed (without importing it: importing fixes its network mode)."""
    return importlib.util.find_spec("ray") is not None


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address``, or start a local one in this process (once), its
    GCS, raylet and workers listening on loopback only."""
    with _LOCK:
        if not address:
            os.environ.update(LOOPBACK_ENV)
        import ray

        if ray.is_initialized():
            return
        if address:
            ray.init(address=address, log_to_driver=False)
            return
        for attempt in range(1, LOCAL_STARTS + 1):
            try:
                ray.init(
                    num_cpus=num_cpus or os.cpu_count() or 1,
                    include_dashboard=False,
                    log_to_driver=False,
                    _node_ip_address="127.0.0.1",
                )
                return
            except Exception as exc:
                # Ray gives its raylet 30 s to register; on a host busy with other work
                # it may not: the processes it started are stopped and it starts again.
                if attempt == LOCAL_STARTS or "timed out during startup" not in str(exc):
                    raise
                log.warning("Ray's local cluster did not start (%s); starting it again", exc)
                ray.shutdown()


class Embedder:
    """A Ray actor: one copy of the job's encoder, encoding batches of decoded pixels and
    texts (rows of other kinds pass through with a zero vector)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder  # put once by the driver, fetched by Ray once per actor

    def embed(self, *parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One encoder call over the rows of every decoded batch given."""
        batch = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        n = len(batch["seq"])
        vectors = np.zeros((n, self.encoder.dim), np.float32)
        images = [i for i in range(n) if batch["has_pixels"][i]]
        if images:
            vectors[images] = encode_uint8(self.encoder, batch["pixels"][images])
        texts = [i for i in range(n) if batch["kind"][i] == "text" and not batch["error"][i]]
        if texts:
            vectors[texts] = self.encoder.encode_texts([str(batch["text"][i]) for i in texts])
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["vector"] = vectors
        return out


def _decode_rows(
    batch: dict[str, np.ndarray], spec: PixelSpec, limits: dict[str, Any]
) -> dict[str, np.ndarray]:
    """A Ray task: read, hash and decode a batch's image rows (texts pass through); the
    image files kept are durable when it returns."""
    n = len(batch["seq"])
    side = spec.size
    pixels = np.zeros((n, side, side, 3), np.uint8)
    has_pixels = np.zeros(n, bool)
    sha = np.array(batch["sha256"], dtype=object)
    media = np.array(batch["media_type"], dtype=object)
    error = np.array(batch["error"], dtype=object)
    unchanged = np.zeros(n, bool)
    todo = [i for i in range(n) if batch["kind"][i] == "image" and not batch["error"][i]]
    tasks = [
        DecodeTask(
            FileRef(
                str(batch["path"][i]),
                str(batch["root"][i]),
                int(batch["offset"][i]),
                None if int(batch["size"][i]) < 0 else int(batch["size"][i]),
            ),
            str(batch["expected"][i]) or None,
        )
        for i in todo
    ]
    for i, d in zip(
        todo,
        decode_files(tasks, spec, limits["max_bytes"], limits["max_pixels"], limits["sink"]),
        strict=True,
    ):
        sha[i], media[i] = d.sha256 or "", d.media_type or ""
        if d.error is not None:
            error[i] = d.error
        elif d.unchanged:
            unchanged[i] = True
        elif d.pixels is not None:
            pixels[i] = np.asarray(d.pixels)
            has_pixels[i] = True
    return {
        **batch,
        "pixels": pixels,
        "has_pixels": has_pixels,
        "sha256": sha,
        "media_type": media,
        "error": error,
        "unchanged": unchanged,
    }


@dataclass(frozen=True)
class Outcome:
    """One record as it came back from the cluster (``chunks.ImageOutcome`` for images)."""

    error: str | None
    unchanged: bool
    media_type: str | None
    sha256: str | None
    vector: np.ndarray


def _row(record: SourceRecord, expected: str) -> dict[str, Any]:
    ref = record.image
    return {
        "seq": record.seq,
        "kind": record.kind,
        "text": record.text or "",
        "error": record.error or "",
        "path": ref.path if ref else "",
        "root": ref.root if ref else "",
        "offset": ref.offset if ref else 0,
        "size": -1 if ref is None or ref.size is None else ref.size,
        "expected": expected,
        "sha256": "",
        "media_type": "",
    }


Reencode = Callable[[SortedChunk[Any], str], np.ndarray]  # a chunk again, in a version


class RayIngest:
    """An index job's run on Ray: the same chunk book as in process, with the vectors
    computed on the cluster. ``reencode`` encodes a chunk again in this process, for a
    collection that switched versions under the job."""

    def __init__(self, parts: IngestParts, reencode: Reencode) -> None:
        self.parts = parts
        self.settings = parts.settings
        self.reencode = reencode

    def run(self, ctx: JobContext) -> None:
        import ray

        job, parts, settings = ctx.job, self.parts, self.settings
        connect(job.params.get("ray_address") or settings.ray_address)
        book = parts.book(job)
        records = parts.records(book)
        version = parts.engine.space
        encoder = parts.engine.encoder_of(version)
        store = parts.store
        limits = {
            "max_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_image_pixels,
            "sink": store.blobs if store.store_images else None,
        }
        # Sent once each, not with every task.
        pixels = ray.put(encoder.pixels)
        limits_ref = ray.put(limits)
        decode = ray.remote(_decode_rows)
        actors = _start_actors(ray, ray.put(encoder), RAY_CPU_ACTORS)
        size = settings.import_chunk_size
        per_call = max(1, IMPORT_BATCH // DECODE_BATCH)
        try:
            for window in batched(records, size * WINDOW_CHUNKS):
                if ctx.stopping():
                    return
                started = time.monotonic()
                window = book.check(window)
                existing = book.existing(window)
                expected = book.expected(window, existing, version)
                rows = [_row(r, expected.get(r.id, "")) for r in window]
                decoded = [
                    decode.remote(_columns(batch), pixels, limits_ref)
                    for batch in batched(iter(rows), DECODE_BATCH)
                ]
                # Each actor call encodes up to IMPORT_BATCH rows: several decoded
                # batches, handed over as they are (Ray resolves them on the actor's side).
                pending = [
                    actors[i % len(actors)].embed.remote(*group)
                    for i, group in enumerate(batched(iter(decoded), per_call))
                ]
                results: dict[int, Outcome] = {}
                for batch in ray.get(pending):
                    for i, seq in enumerate(batch["seq"]):
                        results[int(seq)] = Outcome(
                            str(batch["error"][i]) or None,
                            bool(batch["unchanged"][i]),
                            str(batch["media_type"][i]) or None,
                            str(batch["sha256"][i]) or None,
                            batch["vector"][i],
                        )
                elapsed = time.monotonic() - started

                def vectors(
                    chunk: SortedChunk[Outcome], now: str, results: dict[int, Outcome] = results
                ) -> np.ndarray:
                    if now != version:  # an activation switched the collection meanwhile
                        return self.reencode(chunk, now)
                    return np.stack([results[seq].vector for seq in chunk.seqs]).astype(np.float32)

                for chunk in batched(iter(window), size):
                    if ctx.stopping():
                        return
                    seconds = elapsed * len(chunk) / len(window)
                    book.commit(book.sort(chunk, results, existing, version, seconds), vectors)
                    ctx.progress()
        finally:
            for actor in actors:  # their model copies and GPUs go back to the cluster
                ray.kill(actor)


def _start_actors(ray: Any, encoder: Any, cpu_actors: int) -> list[Any]:
    """The job's encoding actors: one per GPU of the cluster, else ``cpu_actors``. On CPUs
    they leave at least one CPU to the decoding tasks (an actor holding every CPU would
    leave the tasks it waits on unscheduled)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        options: dict[str, float] = {"num_gpus": 1, "num_cpus": 0}
        count = gpus
    else:
        count = cpu_actors
        options = {"num_cpus": min(1.0, max(resources.get("CPU", 1) - 1, 0) / count)}
    actor = ray.remote(Embedder).options(**options)
    return [actor.remote(encoder) for _ in range(count)]


def _columns(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Rows as the column batch the tasks and actors take."""
    return {key: np.array([r[key] for r in rows], dtype=object) for key in rows[0]}
