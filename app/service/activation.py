"""Switching the served model to another version, collections and all.

An activation job re-embeds every collection of the active version into a hidden copy
(unless the new version keeps the active one's embedding space, as a distilled query
encoder keeps its teacher's: then it only switches):
``linear`` and ``subspace_alignment`` versions map the stored vectors (each item keeps
its unmapped vector, so other maps and a rollback to the base need no re-encoding
either); other versions re-encode the stored images and texts. Searches keep using the
old vectors meanwhile, and writes keep landing in the old collections. Then, under the
store's write lock, the writes made since are caught up, every copy replaces its
original in one transaction and new items start being embedded with the new version, so
no collection ever mixes two versions. A failure or a cancel drops the copies: the old
version keeps serving as if nothing happened. With several servers, every one loads
the new version before the switch, and switches with it (``app.service.cluster``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from app.service.cluster import ActivationError, ModelFollower
from app.service.config import Settings
from app.service.engine import Engine
from app.service.tagging import Tagger
from index import CollectionStore, Job, JobStore, Migration
from index.catalogue.servers import ModelState
from index.types import StoredItem
from models.adapt.methods import TrainingStopped
from models.adapt.reembed import StoredContent, reembed
from models.encoder import Encoder
from models.errors import ModelLoadError

log = logging.getLogger(__name__)

ACTIVATE_JOB = "activate"
__all__ = ["ACTIVATE_JOB", "ActivationError", "Activator", "restore_active"]


class Activator:
    def __init__(
        self,
        settings: Settings,
        store: CollectionStore,
        engine: Engine,
        jobs: JobStore,
        follower: ModelFollower,
        tagger: Tagger,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.jobs = jobs
        self.follower = follower
        self.tagger = tagger
        self.model = follower.model

    @property
    def state(self) -> ModelState:
        return self.model.read()

    def run(self, job: Job, should_stop: Callable[[], bool]) -> None:
        target = job.params["version"]
        rollback = bool(job.params.get("rollback"))
        current = self.engine.encoder
        if target == current.version:
            self.jobs.report(job.id, {"phase": "done", "message": f"{target} is already active"})
            return
        detail: dict[str, Any] = {"phase": "loading", "from": current.version, "to": target}
        self.jobs.report(job.id, detail)
        done = total = 0
        migration = None
        self.model.update(lambda state: setattr(state, "pending", target))
        try:
            new = self._load_everywhere(target, should_stop)
            detail["phase"] = "re-embedding"
            if new.space != current.space:
                # Every collection of the serving space moves, those created meanwhile too.
                migration = Migration(
                    self.store,
                    current.space,
                    new.space,
                    lambda items: reembed(
                        items,
                        current,
                        new,
                        self._load_bytes,
                        self.settings.max_image_pixels,
                        self.engine.run_model,
                    ),
                    tag=lambda name, items, vectors: self.tagger.tagged(
                        name, new.space, items, vectors
                    ),
                )
                detail["collections"] = migration.names
                total = migration.total
                self.jobs.report(job.id, detail, done=0, total=total)
                started = time.monotonic()
                while True:
                    if should_stop():
                        raise TrainingStopped
                    n = migration.copy()
                    detail["collections"] = migration.names
                    if not n:
                        break
                    done += n
                    self.jobs.report(job.id, detail, done=done, seconds=time.monotonic() - started)
                    started = time.monotonic()
            else:
                # A query-side version (distill) or its teacher: the stored vectors are
                # already the new version's; only how queries are encoded changes.
                detail["collections"] = []
                detail["message"] = f"{target} keeps {current.space}'s vectors: no re-embedding"

            def switch() -> None:
                """The catalogue's active version changes with the swap, under the write
                lock (and, for a migration, while no other server writes)."""
                self.engine.activate(target)

                def change(state: ModelState) -> None:
                    previous = state.active or current.version
                    if rollback and state.history:
                        state.history.pop()
                    else:
                        state.history.append(previous)
                    state.active, state.pending = target, None

                self.model.update(change, held=True)

            # The point of no return: from here a cancel is refused (409), and a cancel that
            # came first stops the activation here.
            detail["phase"] = "switching"
            if not self.jobs.pass_point_of_no_return(job.id, detail):
                raise TrainingStopped
            if migration is None:
                with self.store.locked():
                    switch()  # writes go on meanwhile: their vectors are in the shared space
            else:
                migration.commit(after=switch)
        except BaseException:
            if migration is not None:
                migration.abort()
            self._abandon(target)
            raise
        self.follower.step()  # older versions go; the one just replaced stays a while
        detail["phase"] = "done"
        self.jobs.report(job.id, detail, done=total)
        log.info(
            "activated %s (was %s) for %d collections",
            target,
            current.version,
            len(detail["collections"]),
        )

    def _load_everywhere(self, target: str, should_stop: Callable[[], bool]) -> Encoder:
        """``target`` loaded and tried here, then on every other live server."""
        self.follower.step()
        new = self.engine.encoders.get(target)
        if new is None:
            why = self.follower.failed.get(target, "it could not be loaded")
            raise ActivationError(f"{target} cannot serve: {why}")
        self.follower.wait_loaded(target, should_stop)
        return new

    def _abandon(self, target: str) -> None:
        """After a failure or a cancel: no server keeps loading ``target`` for it."""

        def change(state: ModelState) -> None:
            if state.pending == target:
                state.pending = None

        try:
            self.model.update(change)
            self.follower.step()
        except Exception:  # the job's own error says what went wrong
            log.exception("could not withdraw %s from the catalogue", target)

    def _load_bytes(self, item: StoredContent) -> bytes:
        assert isinstance(item, StoredItem)
        digest = item.content_sha256
        if digest is None or not self.store.blobs.exists(digest):
            raise ActivationError(
                f"item {item.id!r} has no stored image to re-embed with the new version"
                " (XMODAL_STORE_IMAGES was off when it was added); a linear or"
                " subspace_alignment version over the same base needs no content"
            )
        return self.store.blobs.get(digest)


def restore_active(follower: ModelFollower) -> str | None:
    """At start-up, serve the version the catalogue names active, if it is not the
    configured model, and load the one an activation is switching to. Returns the
    version serving when it is not the configured model."""
    follower.step()
    engine = follower.engine
    active = follower.model.read().active
    if active is not None and engine.version != active:
        raise ModelLoadError(
            f"cannot serve {active}, the version last activated: "
            f"{follower.failed.get(active, 'it could not be loaded')}"
        )
    return active if active != engine.configured_version else None
