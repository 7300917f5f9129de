"""Snapshot and restore jobs: a collection to one archive file and back (``index.archives``).

Snapshots live under ``<data dir>/archives/<collection>/<snapshot>.tar``, named by the time
they were taken. A restore job creates its collection from an archive given as a path
under the import root, or uploaded (kept under ``archives/.uploads`` until the job ends),
in the archive's embedding space, or re-encoded with the serving model (``reembed``): its
stored images and texts are embedded again, a chunk at a time, on the model thread.
"""

from __future__ import annotations

import json
import re
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.service.config import Settings
from app.service.engine import Engine
from app.service.errors import Invalid
from app.service.jobs.loop import JobFailed, JobStopped, OnProgress
from index import CollectionExists, CollectionStore, Job, JobState, JobStore, Modality, NewItem
from index.archives import ArchiveError, restore_archive, verify_archive, write_archive
from index.collections import COLLECTION_NAME, COLLECTION_NAME_RULE
from models.images import decode_image
from models.import_root import resolve_under

SNAPSHOT_JOB = "snapshot"
RESTORE_JOB = "restore"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.tar")


@dataclass(frozen=True)
class SnapshotFile:
    name: str
    size: int
    created: float
    items: int | None


class Archives:
    """Where snapshots are kept, and what is there."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.data_dir / "archives"

    def folder(self, collection: str) -> Path:
        return self.root / collection

    def path(self, collection: str, snapshot: str) -> Path:
        """The file of ``snapshot``, or ``FileNotFoundError`` (names are checked: no path)."""
        if not _NAME.fullmatch(snapshot):
            raise FileNotFoundError(snapshot)
        path = self.folder(collection) / snapshot
        if not path.is_file():
            raise FileNotFoundError(snapshot)
        return path

    def listed(self, collection: str) -> list[SnapshotFile]:
        folder = self.folder(collection)
        out = []
        for path in sorted(folder.glob("*.tar")) if folder.is_dir() else []:
            stat = path.stat()
            out.append(SnapshotFile(path.name, stat.st_size, stat.st_mtime, _items_of(path)))
        return out

    def clear_partials(self) -> int:
        """Remove the partial archives a process killed while writing left (at start,
        when no snapshot job runs); returns how many."""
        stale = list(self.root.glob("*/.*.partial")) if self.root.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def upload_path(self) -> Path:
        folder = self.root / ".uploads"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{uuid.uuid4().hex}.tar"


def _items_of(path: Path) -> int | None:
    """The item count the archive's header gives (None if it cannot be read quickly)."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != "collection.json":
                return None
            f = tar.extractfile(first)
            return int(sum(json.loads(f.read())["counts"].values())) if f else None
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError, AttributeError):
        return None


class SnapshotRunner:
    kind = SNAPSHOT_JOB

    def __init__(self, archives: Archives, store: CollectionStore, jobs: JobStore) -> None:
        self.archives = archives
        self.store = store
        self.jobs = jobs
        archives.clear_partials()  # the data dir as it was before a killed snapshot

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        assert collection is not None
        uid = self.store.get(collection).uid  # 404 (409 for a broken one) now
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return {
            "collection_uid": uid,
            "snapshot": f"{collection}-{stamp}-{uuid.uuid4().hex[:6]}.tar",
        }

    def run(
        self, job: Job, should_stop: Callable[[], bool], on_progress: OnProgress | None
    ) -> None:
        assert job.collection is not None
        if self.store.get(job.collection).uid != job.params["collection_uid"]:
            raise JobFailed(f"collection {job.collection!r} was deleted and created again")
        dest = self.archives.folder(job.collection) / job.params["snapshot"]
        self.jobs.report(job.id, {"phase": "writing"})
        try:
            info = write_archive(self.store, job.collection, dest, should_stop)
        except InterruptedError:
            if self.jobs.state(job.id) is JobState.RUNNING:
                raise JobStopped from None
            return  # cancelled: nothing was kept
        detail = {
            "phase": "done",
            "snapshot": dest.name,
            "size": dest.stat().st_size,
            "items": info.items,
            "download": f"/v1/collections/{job.collection}/snapshots/{dest.name}",
        }
        self.jobs.report(job.id, detail, done=info.items, total=info.items)


class RestoreRunner:
    kind = RESTORE_JOB

    def __init__(
        self, settings: Settings, store: CollectionStore, jobs: JobStore, engine: Engine
    ) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.engine = engine

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        assert collection is not None
        if not COLLECTION_NAME.match(collection):
            raise Invalid(COLLECTION_NAME_RULE, code="invalid_name")
        if collection in self.store.collections:
            raise CollectionExists(f"collection {collection!r} already exists")
        if params.get("upload"):
            path = Path(params["upload"])
        elif params.get("local"):  # the in-process CLI: a file of the user running it
            path = Path(params["local"])
        else:
            path = resolve_under(self.settings.import_root_dir, str(params.get("source") or ""))
            if not path.is_file():
                raise Invalid(
                    f"source {params.get('source')!r} is not a file under the import root"
                )
        return {
            "archive": str(path),
            "upload": bool(params.get("upload")),
            "reembed": bool(params.get("reembed")),
        }

    def run(
        self, job: Job, should_stop: Callable[[], bool], on_progress: OnProgress | None
    ) -> None:
        assert job.collection is not None
        path = Path(job.params["archive"])
        try:
            self.jobs.report(job.id, {"phase": "verifying"})
            info, _ = verify_archive(path)
            self.jobs.report(job.id, {"phase": "restoring"}, done=0, total=info.items)
            # Into the serving space: as archived, or encoded again (``reembed``).
            version = self.engine.space
            vectors = None
            if job.params["reembed"] and info.model_version != version:
                vectors = self._reembed
            last = time.monotonic()

            def chunk(n: int) -> None:
                nonlocal last
                now = time.monotonic()
                self.jobs.report(job.id, {"phase": "restoring"}, done=n, seconds=now - last)
                last = now

            try:
                restore_archive(
                    self.store, path, job.collection, version, vectors, chunk, should_stop
                )
            except InterruptedError:
                if self.jobs.state(job.id) is JobState.RUNNING:
                    raise JobStopped from None
                return  # cancelled: nothing was kept
            except (ArchiveError, CollectionExists) as exc:
                raise JobFailed(str(exc)) from None
            detail = {"phase": "done", "items": info.items, "from": info.collection}
            self.jobs.report(job.id, detail)
        finally:
            if job.params["upload"] and self.jobs.state(job.id) is not JobState.RUNNING:
                path.unlink(missing_ok=True)

    def _reembed(self, items: list[NewItem], archived: np.ndarray) -> np.ndarray:
        """The chunk's vectors in the serving model's space: texts and images encoded again."""
        encoder = self.engine.encoder
        out = np.zeros((len(items), self.engine.dim), np.float32)
        texts = [(i, it.text or "") for i, it in enumerate(items) if it.modality is Modality.TEXT]
        if texts:
            out[[i for i, _ in texts]] = self.engine.run_model(
                encoder.encode_texts, [t for _, t in texts]
            )
        images = [(i, it) for i, it in enumerate(items) if it.modality is Modality.IMAGE]
        if images:
            decoded = []
            for _, it in images:
                if it.content is None:
                    raise JobFailed(f"{it.id!r} has no stored image to encode again")
                decoded.append(decode_image(it.content, self.settings.max_image_pixels).image)
            out[[i for i, _ in images]] = self.engine.run_model(encoder.encode_images, decoded)
        return out
