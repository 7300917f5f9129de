"""Index jobs on a Ray cluster (``"engine": "ray"``).

The job runs as an in-process one does (``app.service.jobs.index``: chunks in source order, each
chunk's items and the job's progress committed in one transaction, failures counted per
record, cancel and resume from the last committed chunk), except for where the work is
done: the source's records go to Ray Data a window of chunks at a time; reading, hashing
and decoding run as Ray tasks on the cluster's CPUs (the same function the in-process
job's worker processes run), and encoding in a pool of actors (``map_batches`` with a
class and an ``ActorPoolStrategy``, one GPU each when the cluster has GPUs), each given
the job's encoder once. The vectors come back in batches and are committed here. If an
activation switches the collection's model version meanwhile, the chunk is encoded again
in this process with the new version.

Ray is optional (``pip install 'xmodal[scale]'``); without an address the server starts a
local cluster in its own process the first time a job asks for one.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from app.service.jobs.loop import JobStopped, OnProgress, batched, shown
from index import Job, JobState, Modality, NewItem, Progress
from models.preprocess import DecodeTask, PixelPipeline, decode_files
from models.sources import FileRef, SourceRecord, open_source

if TYPE_CHECKING:
    from app.service.jobs.index import IndexRunner

RAY_ENGINE = "ray"
WINDOW_CHUNKS = 8  # chunks handed to Ray at once: enough to keep the actors busy
_LOCK = threading.Lock()


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def connect(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at ``address``, or start a local one in this process (once)."""
    import ray

    with _LOCK:
        if ray.is_initialized():
            return
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=False,
            )


class Embedder:
    """A Ray actor: one copy of the job's encoder, encoding batches of decoded pixels and
    texts (rows of other kinds pass through with a zero vector)."""

    def __init__(self, encoder: Any) -> None:
        import ray
        import torch

        if isinstance(encoder, ray.ObjectRef):  # put once by the driver, fetched once here
            encoder = ray.get(encoder)
        self.encoder = encoder
        self.pixels = PixelPipeline.from_preprocess(encoder.preprocess)
        self.torch = torch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        n = len(batch["seq"])
        vectors = np.zeros((n, self.encoder.dim), np.float32)
        images = [i for i in range(n) if batch["has_pixels"][i]]
        if images:
            device = self.encoder.device
            stacked = torch.from_numpy(np.ascontiguousarray(batch["pixels"][images]))
            chw = stacked.to(device).permute(0, 3, 1, 2)
            vectors[images] = self.encoder.encode_image_tensors(self.pixels.normalise(chw, device))
        texts = [i for i in range(n) if batch["kind"][i] == "text" and not batch["error"][i]]
        if texts:
            vectors[texts] = self.encoder.encode_texts([str(batch["text"][i]) for i in texts])
        out = {k: v for k, v in batch.items() if k != "pixels"}
        out["vector"] = vectors
        return out


def _decode_rows(
    batch: dict[str, np.ndarray], pipeline: PixelPipeline, limits: dict[str, Any]
) -> dict[str, np.ndarray]:
    """A Ray task: read, hash and decode a batch's image rows (texts pass through)."""
    n = len(batch["seq"])
    side = pipeline.size
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
        decode_files(tasks, pipeline, limits["max_bytes"], limits["max_pixels"], limits["sink"]),
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


class RayIngest:
    """An index job's run on Ray; ``runner`` is the in-process runner it shares its
    checks, store and commit path with."""

    def __init__(self, runner: IndexRunner) -> None:
        self.runner = runner
        self.settings = runner.settings

    def run(
        self, job: Job, should_stop: Callable[[], bool], on_progress: OnProgress | None
    ) -> None:
        import ray.data

        runner, settings = self.runner, self.settings
        assert job.collection is not None
        collection = job.collection
        connect(job.params.get("ray_address") or settings.ray_address, settings.ray_num_cpus)
        source = open_source(
            settings.import_root_dir, job.params["source"], job.params.get("format")
        )
        runner.store.serving(collection)
        if job.total is None:
            runner.jobs.set_total(job.id, source.count())
        version = runner.engine.space
        encoder = ray.put(runner.engine.encoder_of(version))  # pickled once, for every actor
        gpus = float(ray.cluster_resources().get("GPU", 0))
        actors = max(1, int(gpus) if gpus else settings.ray_actors)
        limits = {
            "max_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_image_pixels,
            "sink": runner.store.blobs.put if runner.store.store_images else None,
        }
        size = settings.import_chunk_size
        records = itertools.islice(source.records(), job.cursor, None)
        refused: set[str] = set()
        for window in batched(records, size * WINDOW_CHUNKS):
            if self._stopping(job, should_stop):
                return
            started = time.monotonic()
            rows, existing = self._rows(collection, window, version)
            ds = (
                ray.data.from_items(rows)
                .map_batches(
                    _decode_rows,  # type: ignore[arg-type]  # fn_kwargs fill the rest
                    fn_kwargs={"pipeline": runner.pipeline.pipeline, "limits": limits},
                    batch_size=32,
                    batch_format="numpy",
                )
                .map_batches(
                    Embedder,
                    fn_constructor_kwargs={"encoder": encoder},
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    num_gpus=1 if gpus else 0,
                    batch_size=settings.import_batch_size,
                    batch_format="numpy",
                )
            )
            results: dict[int, dict[str, Any]] = {}
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for i, seq in enumerate(batch["seq"]):
                    results[int(seq)] = {k: batch[k][i] for k in batch}
            elapsed = time.monotonic() - started
            for chunk in batched(iter(window), size):
                if self._stopping(job, should_stop):
                    return
                refused = self._commit(
                    job,
                    collection,
                    chunk,
                    results,
                    existing,
                    version,
                    refused,
                    elapsed * len(chunk) / len(window),
                )
                if on_progress is not None:
                    on_progress(runner.jobs.get(job.id))

    def _stopping(self, job: Job, should_stop: Callable[[], bool]) -> bool:
        if not should_stop():
            return False
        if self.runner.jobs.state(job.id) is JobState.RUNNING:
            raise JobStopped
        return True  # cancelled: what is committed stays

    def _rows(
        self, collection: str, window: list[SourceRecord], version: str
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        checked = [self.runner._check(r) for r in window]
        window[:] = checked
        existing = self.runner.store.existing(
            collection, [r.id for r in checked if r.error is None]
        )
        rows = []
        for r in checked:
            known = existing.get(r.id)
            expected = ""
            if (
                known is not None
                and known.modality is Modality.IMAGE
                and known.model_version == version
                and known.content_sha256
            ):
                expected = known.content_sha256
            ref = r.image
            rows.append(
                {
                    "seq": r.seq,
                    "kind": r.kind,
                    "text": r.text or "",
                    "error": r.error or "",
                    "path": ref.path if ref else "",
                    "root": ref.root if ref else "",
                    "offset": ref.offset if ref else 0,
                    "size": -1 if ref is None or ref.size is None else ref.size,
                    "expected": expected,
                    "sha256": "",
                    "media_type": "",
                }
            )
        return rows, existing

    def _commit(
        self,
        job: Job,
        collection: str,
        chunk: list[SourceRecord],
        results: dict[int, dict[str, Any]],
        existing: dict[str, Any],
        version: str,
        refused_before: set[str],
        seconds: float,
    ) -> set[str]:
        """The in-process job's ``_sort`` and commit, on vectors computed by the actors."""
        runner = self.runner
        done, failed = 0, 0
        errors: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        refused: set[str] = set()
        items: list[NewItem] = []
        vectors: list[np.ndarray] = []

        def count(name: str) -> None:
            counts[name] = counts.get(name, 0) + 1

        def fail(r: SourceRecord, reason: str) -> None:
            nonlocal failed
            failed += 1
            count(f"{'images' if r.kind == 'image' else 'texts'}_failed")
            if r.kind == "image":
                refused.add(r.id)
            errors.append({"item": shown(r.id), "seq": r.seq, "reason": shown(reason)})

        for r in chunk:
            row = results[r.seq]
            if r.error is not None or row["error"]:
                fail(r, r.error or str(row["error"]))
            elif r.kind == "image":
                if row["unchanged"]:
                    done += 1
                    count("images_unchanged")
                else:
                    items.append(
                        NewItem(
                            r.id,
                            Modality.IMAGE,
                            r.metadata,
                            media_type=str(row["media_type"]),
                            content_sha256=str(row["sha256"]),
                        )
                    )
                    vectors.append(row["vector"])
                    count("images_new")
        for r in chunk:
            if r.kind != "text" or r.error is not None or results[r.seq]["error"]:
                continue
            image_id = r.metadata.get("image_id")
            if isinstance(image_id, str) and image_id in refused | refused_before:
                fail(r, f"its image {image_id!r} was refused")
                continue
            known = existing.get(r.id)
            if known and known.text == r.text and known.model_version == version:
                done += 1
                count("texts_unchanged")
            else:
                items.append(NewItem(r.id, Modality.TEXT, r.metadata, text=r.text))
                vectors.append(results[r.seq]["vector"])
                count("texts_new")
        errors.sort(key=lambda e: int(e["seq"]))
        progress = Progress(chunk[-1].seq + 1, done + len(items), failed, errors, seconds, counts)
        if not items:
            runner.jobs.advance(job.id, progress)
            return refused

        def embed(now: str) -> tuple[list[NewItem], np.ndarray]:
            if now == version:
                return items, np.stack(vectors).astype(np.float32)
            # The collection moved to another version meanwhile: encode here, with it.
            return runner.local_embed(items, chunk, now)

        runner.retrieval.add_blocking(
            collection,
            embed,
            extra=runner.jobs.recorder(job.id, progress),
            uid=job.params.get("collection_uid"),
        )
        return refused
