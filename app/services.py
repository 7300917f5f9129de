"""What the lifespan builds and the routes use: the store, the engine, and their state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool

from app.activation import Activator, restore_active
from app.config import Settings
from app.engine import Engine
from app.finetune import FineTuner
from app.jobs import JobManager
from app.metrics import Metrics
from app.thumbnails import ThumbnailCache
from index import CollectionStore, JobStore
from models import ModelLoadError, load_encoder
from models.registry import ModelRegistry

log = logging.getLogger(__name__)


class Services:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store: CollectionStore | None = None
        self.engine: Engine | None = None
        self.jobs: JobManager | None = None
        self.registry: ModelRegistry | None = None
        self.finetuner: FineTuner | None = None
        self.thumbnails = ThumbnailCache(
            settings.data_dir / "thumbnails", settings.max_image_pixels
        )
        self.load_error: str | None = None
        self.shutting_down = False
        self._tasks: list[asyncio.Task[None]] = []
        metrics.add_state(self.metric_state)

    @property
    def ready(self) -> bool:
        return self.store is not None and self.engine is not None and not self.shutting_down

    def start(self) -> None:
        """Open the store and load the model in the background: /healthz answers at once,
        /readyz once both are done."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._load(), name="xmodal-load"))
        self._tasks.append(loop.create_task(self._snapshot_loop(), name="xmodal-snapshots"))

    async def _load(self) -> None:
        s = self.settings
        try:
            self.store = await run_in_threadpool(
                CollectionStore,
                s.data_dir,
                store_images=s.store_images,
                use_gpu=s.faiss_gpu,
                snapshot_every=s.snapshot_every,
                nprobe=s.nprobe,
            )
            encoder = await run_in_threadpool(
                load_encoder, s.model, s.pretrained, s.device, s.model_cache_dir, s.seed
            )
            engine = Engine(encoder, s, self.metrics)
            engine.start()
            job_store = await run_in_threadpool(JobStore, self.store)
            self.registry = ModelRegistry(s.data_dir / "versions")
            self.finetuner = FineTuner(s, self.registry, job_store)
            restored = await run_in_threadpool(restore_active, s, engine, self.finetuner)
            if restored:
                log.info("serving %s, the version last activated", restored)
            jobs = JobManager(
                s, self.store, job_store, lambda: engine.encoder, engine.run_model, self.finetuner
            )
            jobs.activator = Activator(s, self.store, engine, self.finetuner, job_store)
            jobs.start()  # picks up jobs a restart interrupted
            self.jobs = jobs
            self.engine = engine
            log.info("ready: model %s on %s", encoder.version, encoder.device_name)
        except Exception as exc:
            self.load_error = str(exc)
            # Load errors carry their own explanation; anything else gets its traceback.
            log.error("start-up failed: %s", exc, exc_info=not isinstance(exc, ModelLoadError))

    async def _snapshot_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.snapshot_interval_s)
            if self.store is not None:
                try:
                    await run_in_threadpool(self.store.snapshot, True)
                except Exception:
                    log.exception("periodic snapshot failed; SQLite still holds every item")

    async def stop(self) -> None:
        self.shutting_down = True
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.jobs is not None:
            # A running job stops at its next chunk boundary and resumes on the next start.
            await run_in_threadpool(self.jobs.stop)
        if self.engine is not None:
            await self.engine.stop()
        if self.store is not None:
            await run_in_threadpool(self.store.close)

    def metric_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ready": self.ready}
        if self.engine is not None:
            state["queue_depth"] = {
                "image": self.engine.images.queue_depth,
                "text": self.engine.texts.queue_depth,
            }
        if self.store is not None:
            state["index_vectors"] = {
                (c.name, m.value): n
                for c in self.store.list_collections()
                for m, n in c.counts.items()
            }
        return state
