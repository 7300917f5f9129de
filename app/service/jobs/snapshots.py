"""Snapshot and restore jobs: a collection to one archive file and back (``index.archives``).

Snapshots live under ``<data dir>/archives/<collection>/<snapshot>.tar``, named by the time
they were taken. A restore job creates its collection from an archive given as a path
under the import root, or uploaded (kept under ``uploads/`` until the job ends),
in the archive's embedding space, or re-encoded with the serving model (``reembed``): its
stored images and texts are embedded again, a chunk at a time, on the model thread.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from app.service.config import Settings
from app.service.engine import Engine
from app.service.errors import Conflict, InsufficientStorage, Invalid, ServiceError
from app.service.jobs.loop import JobContext, JobFailed, JobStopped
from index import CollectionExists, CollectionStore, JobStore, NewItem
from index.archive_check import checked_member, load_json
from index.archives import (
    ArchiveError,
    Rules,
    Stopped,
    archive_estimate,
    restore_archive,
    write_archive,
)
from index.collections import COLLECTION_NAME, COLLECTION_NAME_RULE
from models.errors import ModelError
from models.images import decode_image
from models.import_root import SourceError, open_under, reason, resolve_under
from models.stored import encode_contents

SNAPSHOT_JOB = "snapshot"
SNAPSHOTS_PER_COLLECTION = 10  # kept of one collection (409 beyond: delete one)
RESTORE_JOB = "restore"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.tar")


@dataclass(frozen=True)
class SnapshotFile:
    name: str
    size: int
    created: float
    items: int | None


class Archives:
    """Where snapshots are kept, and what is there: ``<data dir>/archives/<collection>/``,
    removed with the collection, within a quota per collection (count and bytes)."""

    def __init__(self, settings: Settings) -> None:
        self.root = settings.shared_root / "archives"
        self.max_count = SNAPSHOTS_PER_COLLECTION
        self.max_bytes = settings.snapshot_bytes_per_collection

    def folder(self, collection: str) -> Path:
        if not COLLECTION_NAME.match(collection):  # never a path the name makes up
            raise FileNotFoundError(collection)
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

    def remove(self, collection: str) -> None:
        """Delete the collection's snapshots (it was deleted)."""
        folder = self.folder(collection)
        if folder.is_dir():
            gone = folder.with_name(f".deleted.{collection}.{uuid.uuid4().hex[:8]}")
            folder.rename(gone)  # at once: the name's next owner never sees them
            shutil.rmtree(gone, ignore_errors=True)

    def check_room(self, collection: str, estimate: int) -> None:
        """Refuse a snapshot beyond the collection's quota, or one the disk cannot hold."""
        folder = self.folder(collection)
        # Sizes only: no archive is opened to count its items.
        kept = [p.stat().st_size for p in folder.glob("*.tar")] if folder.is_dir() else []
        if len(kept) >= self.max_count:
            raise Conflict(
                f"collection {collection!r} has {len(kept)} snapshots, as many as a "
                "collection keeps; delete one first",
                code="snapshot_quota",
            )
        used = sum(kept)
        if used + estimate > self.max_bytes:
            raise Conflict(
                f"collection {collection!r} has {used:,} bytes of snapshots and this one needs "
                f"about {estimate:,} more: over its quota of {self.max_bytes:,} "
                "(XMODAL_SNAPSHOT_BYTES_PER_COLLECTION); delete one first",
                code="snapshot_quota",
            )
        self.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.root).free
        if estimate + HEADROOM > free:
            raise InsufficientStorage(
                f"the data dir's disk has {free:,} bytes free; this snapshot needs about "
                f"{estimate:,} and {HEADROOM:,} are kept free"
            )

    def clear_partials(self) -> int:
        """Remove the partial archives a process killed while writing left (at start,
        when no snapshot job runs), and folders of deleted collections; returns how many."""
        if not self.root.is_dir():
            return 0
        stale = list(self.root.glob("*/.*.partial"))
        for path in stale:
            path.unlink(missing_ok=True)
        for folder in self.root.glob(".deleted.*"):
            shutil.rmtree(folder, ignore_errors=True)
        return len(stale)


HEADROOM = 256 * 1024 * 1024  # bytes a snapshot leaves free on the data dir's disk


def _items_of(path: Path) -> int | None:
    """The item count the archive's header gives (None if it cannot be read quickly: the
    header must be a small plain file, first)."""
    try:
        with path.open("rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != "collection.json":
                return None
            checked_member(first, 0)
            return int(sum(load_json(tar, first)["counts"].values()))
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
        self.store.get(collection)  # 404 (409 for a broken one) now
        self.archives.check_room(collection, archive_estimate(self.store, collection))
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return {"snapshot": f"{collection}-{stamp}-{uuid.uuid4().hex[:6]}.tar"}

    def run(self, ctx: JobContext) -> None:
        job = ctx.job
        assert job.collection is not None
        try:  # again: snapshots queued together each passed alone
            self.archives.check_room(job.collection, archive_estimate(self.store, job.collection))
        except ServiceError as exc:
            raise JobFailed(str(exc)) from None
        dest = self.archives.folder(job.collection) / job.params["snapshot"]
        self.jobs.report(job.id, {"phase": "writing"})
        try:
            info = write_archive(self.store, job.collection, dest, ctx.should_stop)
        except Stopped:
            ctx.interrupted()
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
    """Restores run from a file the job itself opens: an upload kept under
    ``<data dir>/uploads`` (removed when the job ends, whatever the outcome, and at start
    when no job holds it), or a path under the import root opened with the index jobs'
    defence (``open_under``). A job's params hold no server path."""

    kind = RESTORE_JOB
    pins_collection = False  # it creates its collection

    def __init__(
        self, settings: Settings, store: CollectionStore, jobs: JobStore, engine: Engine
    ) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.engine = engine
        self.uploads = Uploads(settings.shared_root)
        held = {
            str(j.params.get("upload"))
            for j in jobs.unfinished()
            if j.kind == RESTORE_JOB and j.params.get("upload")
        }
        self.uploads.clear(keep=held)

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        assert collection is not None
        if not COLLECTION_NAME.match(collection):
            raise Invalid(COLLECTION_NAME_RULE, code="invalid_name")
        if self.store.exists(collection):
            raise CollectionExists(f"collection {collection!r} already exists")
        out: dict[str, Any] = {"reembed": bool(params.get("reembed"))}
        if params.get("upload"):
            out["upload"] = self.uploads.check(str(params["upload"]))
        elif params.get("local"):  # the in-process CLI: a file of the user running it
            out["_local"] = str(params["local"])
        else:
            source = str(params.get("source") or "")
            try:
                path = resolve_under(self.settings.import_root_dir, source)
            except SourceError as exc:
                raise Invalid(str(exc), code="invalid_source") from None
            if not path.is_file():
                raise Invalid(
                    f"source {source[:200]!r} is not a file under the import root",
                    code="invalid_source",
                )
            out["source"] = source
        return out

    def _open(self, params: dict[str, Any]) -> IO[bytes]:
        if params.get("upload"):
            return self.uploads.path(params["upload"]).open("rb")
        if params.get("_local"):
            return Path(params["_local"]).open("rb")
        root = self.settings.import_root_dir
        try:
            return open_under(root, resolve_under(root, params["source"]))
        except (OSError, SourceError) as exc:
            raise JobFailed(f"the archive cannot be opened: {reason(exc)}") from None

    def run(self, ctx: JobContext) -> None:
        job = ctx.job
        assert job.collection is not None
        keep_upload = False
        try:
            self.jobs.report(job.id, {"phase": "verifying"})
            rules = Rules(
                self.settings.max_upload_bytes, _image_type(self.settings), ctx.should_stop
            )
            version, dim = self.engine.space, self.engine.dim
            reembed = self._reembed if job.params["reembed"] else None
            last = time.monotonic()

            def chunk(done: int) -> None:
                nonlocal last
                now = time.monotonic()
                detail = {"phase": "restoring"}
                self.jobs.report(job.id, detail, done=done, seconds=now - last)
                last = now

            try:
                with self._open(job.params) as f:
                    info = restore_archive(
                        self.store, f, job.collection, (version, dim), rules, reembed, chunk
                    )
            except Stopped:
                ctx.interrupted()
                return  # cancelled: nothing was kept
            except (ArchiveError, CollectionExists) as exc:
                raise JobFailed(str(exc)) from None
            detail = {"phase": "done", "items": info.items, "from": info.collection}
            self.jobs.report(job.id, detail, done=info.items, total=info.items)
        except JobStopped:
            keep_upload = True  # the server is stopping: the job resumes on the next start
            raise
        finally:
            if job.params.get("upload") and not keep_upload:
                self.uploads.remove(job.params["upload"])

    def _reembed(self, items: list[NewItem], archived: np.ndarray) -> np.ndarray:
        """The chunk's vectors in the serving model's space: texts and images encoded again,
        the way uploads and index jobs encode them (``models.stored``)."""

        def content(item: NewItem) -> bytes:
            if item.content is None:
                raise JobFailed(f"{item.id!r} has no stored image to encode again")
            return item.content

        return encode_contents(
            items,
            self.engine.encoder,
            content,
            self.settings.max_image_pixels,
            self.engine.run_model,
        )


def _image_type(settings: Settings) -> Callable[[bytes], str]:
    def image_type(data: bytes) -> str:
        try:
            return decode_image(data, settings.max_image_pixels).media_type
        except ModelError as exc:
            raise ValueError(str(exc)) from None

    return image_type


class Uploads:
    """Uploaded archives waiting for their restore job, outside the snapshots' folders."""

    _ID = re.compile(r"[0-9a-f]{32}")

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "uploads"

    def new(self) -> tuple[str, Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        upload = uuid.uuid4().hex
        return upload, self.folder / f"{upload}.tar"

    def check(self, upload: str) -> str:
        if not self._ID.fullmatch(upload) or not self.path(upload).is_file():
            raise Invalid("no such upload", code="invalid_source")
        return upload

    def path(self, upload: str) -> Path:
        return self.folder / f"{upload}.tar"

    def remove(self, upload: str) -> None:
        if self._ID.fullmatch(upload):
            self.path(upload).unlink(missing_ok=True)

    def clear(self, keep: set[str]) -> None:
        """Remove what no unfinished restore holds (left by a crash)."""
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if path.stem not in keep:
                    path.unlink(missing_ok=True)
