"""What the lifespan builds and the routes use: the stack, its readiness and its state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from app.service.config import Settings
from app.service.metrics import Metrics
from app.service.stack import Stack, build_stack, open_store
from app.service.threads import run_in_threadpool
from app.service.thumbnails import ThumbnailCache
from index import CatalogueUnavailable, CollectionStore, DataDirInUse
from models.errors import ModelLoadError

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 3600.0
SWEEP_GRACE_S = 3600.0  # a batch job commits the images it decoded well within this
CATALOGUE_RETRY_S = 2.0  # how often a server whose catalogue is down at start tries again
FOLLOW_WAIT_S = 0.5  # a follower's step at least this often, notified of writes or not
MODEL_INTERVAL_S = 0.2  # how often a server looks for a model switch


class Services:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store: CollectionStore | None = None  # opens first: it serves without a model
        self.stack: Stack | None = None
        self.thumbnails = ThumbnailCache(
            settings.data_dir / "thumbnails", settings.max_image_pixels
        )
        self.load_error: str | None = None
        self.loading = "loading the model and the store"  # what start-up is doing now
        self.shutting_down = False
        self._tasks: list[asyncio.Task[None]] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        # A worker of ``--workers`` shares its port with the others: it starts accepting
        # connections once ready, so none lands on a worker still loading.
        self.accept_when_ready = False
        metrics.add_state(self.metric_state)

    @property
    def ready(self) -> bool:
        return self.stack is not None and not self.shutting_down

    def start(self) -> None:
        """Open the store and load the model in the background: /healthz answers at once,
        /readyz once both are done."""
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._load(), name="xmodal-load"))
        self._tasks.append(loop.create_task(self._dump_loop(), name="xmodal-index-dumps"))
        self._tasks.append(loop.create_task(self._sweep_loop(), name="xmodal-sweep"))
        self._tasks.append(loop.create_task(self._follow_loop(), name="xmodal-follow"))
        self._tasks.append(loop.create_task(self._model_loop(), name="xmodal-model-follow"))

    async def until_ready(self) -> None:
        """Until ready, or told to stop (a worker whose model never loads still stops)."""
        while not self.ready and not self.shutting_down:
            await asyncio.sleep(0.1)

    async def _load(self) -> None:
        try:
            self.store = await self._open_store()
            self.store.garbage.on_removed.append(self.thumbnails.forget)
            self.loading = "loading the model"
            stack = await run_in_threadpool(build_stack, self.settings, self.metrics, self.store)
            stack.engine.start()
            stack.jobs.start()  # picks up jobs a restart interrupted
            self.stack = stack
            encoder = stack.engine.encoder
            self.load_error = None
            log.info("ready: model %s on %s", encoder.version, encoder.device_name)
        except Exception as exc:
            self.load_error = str(exc)
            # Load errors carry their own explanation; anything else gets its traceback.
            known = isinstance(exc, (ModelLoadError, DataDirInUse))
            log.error("start-up failed: %s", exc, exc_info=not known)

    async def _open_store(self) -> CollectionStore:
        """The store, once its catalogue answers: a database server that is down at start
        is waited for (``/readyz`` says why meanwhile), as it is when it goes down later."""
        while True:
            try:
                return await run_in_threadpool(open_store, self.settings, self._progress)
            except CatalogueUnavailable as exc:
                if self.load_error != str(exc):
                    log.error("waiting for the catalogue: %s", exc)
                self.load_error = str(exc)
                await asyncio.sleep(CATALOGUE_RETRY_S)

    def _progress(self, message: str) -> None:
        self.loading = message

    async def _dump_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.index_dump_interval_s)
            if self.store is not None:
                try:
                    await run_in_threadpool(self.store.dump, True)
                except CatalogueUnavailable as exc:
                    log.warning("periodic index dump waits for the catalogue: %s", exc)
                except Exception:
                    log.exception("periodic index dump failed; SQLite still holds every item")

    async def _follow_loop(self) -> None:
        """On a catalogue other servers write to, keep this server's collections (and its
        FAISS indexes) level with it, in a thread of its own: it wakes when another
        server commits a write (PostgreSQL's notifications; SQLite's data version) or
        every ``FOLLOW_WAIT_S``."""
        while self.store is None:
            await asyncio.sleep(0.2)
        if not self.store.state.shared:
            return
        thread = threading.Thread(
            target=self._follow, args=(self.store,), daemon=True, name="xmodal-follow"
        )
        thread.start()
        self._threads.append(thread)

    def _follow(self, store: CollectionStore) -> None:
        while not self._stop.is_set():
            try:
                store.db.wait_for_writes(FOLLOW_WAIT_S)
                if not self._stop.is_set():
                    store.follow()
            except CatalogueUnavailable:
                self._stop.wait(CATALOGUE_RETRY_S)  # requests say so; this tries again
            except Exception:
                log.exception("following the catalogue failed; trying again")
                self._stop.wait(CATALOGUE_RETRY_S)

    async def _model_loop(self) -> None:
        """On a shared catalogue, the model switch as other servers make it, and this
        server's heartbeat (apart from following writes: loading a version takes a while)."""
        while self.stack is None:
            await asyncio.sleep(0.5)
        if not self.stack.store.state.shared:
            return
        while True:
            await asyncio.sleep(MODEL_INTERVAL_S)
            try:
                await run_in_threadpool(self.stack.follower.step)
            except CatalogueUnavailable:
                pass
            except Exception:
                log.exception("following the model switch failed; trying again")

    async def _sweep_loop(self) -> None:
        """Now and then, remove image files and thumbnails no item refers to."""
        while self.store is None:
            await asyncio.sleep(1.0)
        while True:  # once at start (what a killed process left), then every interval
            try:
                await run_in_threadpool(self.sweep)
            except CatalogueUnavailable as exc:
                log.warning("sweeping unreferenced images waits for the catalogue: %s", exc)
            except Exception:
                log.exception("sweeping unreferenced images failed")
            await asyncio.sleep(SWEEP_INTERVAL_S)

    def sweep(self, grace_s: float = SWEEP_GRACE_S) -> tuple[int, int]:
        """Remove unreferenced image files older than ``grace_s`` and every unreferenced
        thumbnail; returns how many of each."""
        assert self.store is not None
        images = self.store.garbage.sweep(grace_s)
        thumbnails = self.thumbnails.sweep(self.store.garbage.referenced())
        return images, thumbnails

    async def stop(self) -> None:
        self.shutting_down = True
        self._stop.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stack = self.stack
        if stack is not None:
            stack.advisor.close()
            if self.store is not None and self.store.state.shared:
                with contextlib.suppress(Exception):  # its row ages out anyway
                    await run_in_threadpool(stack.follower.servers.leave)
            # A running job stops at its next chunk boundary and resumes on the next start.
            await run_in_threadpool(stack.jobs.stop)
            await stack.engine.stop()
        for thread in self._threads:  # wakes within FOLLOW_WAIT_S
            await run_in_threadpool(thread.join, 2 * FOLLOW_WAIT_S)
        if self.store is not None:
            await run_in_threadpool(self.store.close)

    def metric_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ready": self.ready}
        if self.stack is not None:
            engine = self.stack.engine
            state["queue_depth"] = {
                "image": engine.images.queue_depth,
                "text": engine.texts.queue_depth,
            }
        if self.store is not None:
            state["index_vectors"] = {
                (c.name, m.value): n
                for c in self.store.list_collections()
                for m, n in c.counts.items()
            }
        return state
