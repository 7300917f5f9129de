"""One wiring for the server, the in-process CLI and the benchmarks: from ``Settings`` to
the store, the engine, the model registry, the jobs and the activator."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.service.activation import Activator, restore_active
from app.service.advice import ADVICE_TIMEOUT_S, Advisor
from app.service.cluster import ActiveModel, ModelFollower
from app.service.config import Settings
from app.service.engine import Engine
from app.service.finetune import FineTuner
from app.service.image_urls import IMAGE_URL_FETCHES, IMAGE_URL_TIMEOUT_S, ImageFetcher
from app.service.jobs import (
    ActivateRunner,
    DuplicatesRunner,
    FinetuneRunner,
    IndexRunner,
    JobManager,
    ReindexRunner,
)
from app.service.jobs.retag import RetagRunner
from app.service.jobs.snapshots import Archives, RestoreRunner, SnapshotRunner, Uploads
from app.service.limits import Limits
from app.service.metrics import Metrics
from app.service.search.retrieval import Retrieval
from index import (
    BackendFactory,
    CollectionStore,
    FaissBackends,
    JobStore,
    MilvusBackends,
    open_catalogue,
)
from index.catalogue.servers import Servers
from models.encoder import load_encoder
from models.registry import ModelRegistry

log = logging.getLogger(__name__)


@dataclass
class Stack:
    settings: Settings
    store: CollectionStore
    engine: Engine
    registry: ModelRegistry
    finetuner: FineTuner
    activator: Activator
    follower: ModelFollower  # the model switch, as other servers make it
    jobs: JobManager
    retrieval: Retrieval
    advisor: Advisor
    images: ImageFetcher
    archives: Archives
    uploads: Uploads
    duplicates: DuplicatesRunner  # where a duplicates job's result is

    @property
    def limits(self) -> Limits:
        return self.retrieval.limits

    def delete_collection(self, name: str) -> None:
        """Delete the collection, and its snapshots with it: they are never handed to
        whoever creates the name next."""
        self.store.delete_collection(name)
        self.archives.remove(name)

    def close(self) -> None:
        """Release what ``build_stack`` made, for callers without an event loop (the CLI);
        the server stops the engine's batchers first."""
        self.advisor.close()
        self.jobs.stop()
        self.engine.shutdown()
        self.store.close()


def open_store(
    settings: Settings, progress: Callable[[str], None] | None = None
) -> CollectionStore:
    backends: BackendFactory
    if settings.vector_backend == "milvus":
        uri, token = settings.milvus_target
        backends = MilvusBackends(uri, token=token)
    else:
        backends = FaissBackends(use_gpu=settings.faiss_gpu)
    return CollectionStore(
        settings.data_dir,
        backends=backends,
        store_images=settings.store_images,
        database_url=database_url(settings),
        shared_dir=settings.shared_dir,
        progress=progress,
    )


def open_job_store(settings: Settings) -> JobStore:
    """The job records alone (listing jobs needs neither indexes nor a model)."""
    settings.shared_root.mkdir(parents=True, exist_ok=True)
    return JobStore(open_catalogue(settings.shared_root, database_url(settings)))


def server_id(data_dir: Path) -> str:
    """This server's name in the catalogue's job leases: kept in its data dir, so a
    restarted server takes its own running jobs back at once (another server waits for
    their lease to run out)."""
    path = data_dir / "server-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        name = uuid.uuid4().hex
        tmp = path.with_name(f".{path.name}.{name}")
        tmp.write_text(name)
        os.replace(tmp, path)
        return name


def database_url(settings: Settings) -> str | None:
    url = settings.database_url
    return url.get_secret_value() if url is not None else None


def build_stack(
    settings: Settings, metrics: Metrics | None = None, store: CollectionStore | None = None
) -> Stack:
    """Open the store (unless given one), load the model (and the version the last
    activation left active), and make the job manager. Blocking; nothing is started: the
    server starts the engine's batchers and the job loop, the CLI runs jobs in its own
    thread. On failure a store opened here is closed again; a given one stays open."""
    given = store is not None
    store = store or open_store(settings)
    try:
        encoder = load_encoder(
            settings.model,
            settings.pretrained,
            settings.device,
            settings.model_cache_dir,
        )
        if settings.quantize_text:
            encoder.enable_int8_text()
        metrics = metrics or Metrics()
        engine = Engine(encoder, settings, metrics)
        me = server_id(settings.data_dir)
        job_store = JobStore(store.db, owner=me)
        registry = ModelRegistry(settings.shared_root / "versions")
        finetuner = FineTuner(settings, registry, job_store, engine.run_model, engine.image_side)
        follower = ModelFollower(
            ActiveModel(store.db, settings.data_dir / "active_model.json"),
            Servers(store.db, me),
            engine,
            finetuner,
            lambda: store.state.floor,
        )
        restored = restore_active(follower)
        if restored:
            log.info("serving %s, the version last activated", restored)
        retrieval = Retrieval(Limits(settings), store, engine, metrics.search_batch.observe)
        activator = Activator(settings, store, engine, job_store, follower, retrieval.tagger)
        archives = Archives(settings)
        restores = RestoreRunner(settings, store, job_store, engine)
        duplicates = DuplicatesRunner(settings, store, job_store)
        jobs = JobManager(
            job_store,
            [
                IndexRunner(settings, store, job_store, engine, retrieval),
                FinetuneRunner(settings, job_store, engine, finetuner),
                ActivateRunner(job_store, activator, registry),
                duplicates,
                ReindexRunner(store, job_store),
                RetagRunner(store, job_store, retrieval.tagger),
                SnapshotRunner(archives, store, job_store),
                restores,
            ],
            max_queued=settings.max_queued_jobs,
            uid_of=lambda name: store.get(name).uid,
        )
    except BaseException:
        if not given:
            store.close()
        raise
    images = ImageFetcher(
        settings.max_upload_bytes,
        settings.image_url_network_list,
        IMAGE_URL_TIMEOUT_S,
        IMAGE_URL_FETCHES,
    )
    return Stack(
        settings,
        store,
        engine,
        registry,
        finetuner,
        activator,
        follower,
        jobs,
        retrieval,
        Advisor(store, ADVICE_TIMEOUT_S, settings.data_dir / "tmp"),
        images,
        archives,
        restores.uploads,
        duplicates,
    )
