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
version keeps serving as if nothing happened.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.service.config import Settings
from app.service.engine import Engine
from app.service.errors import Conflict
from app.service.finetune import FineTuner
from index import CollectionStore, Job, JobStore, Migration
from index.blobs import atomic_write
from index.types import StoredItem
from models.adapt.methods import TrainingStopped
from models.adapt.reembed import StoredContent, reembed
from models.encoder import Encoder
from models.errors import TrainingDiverged

log = logging.getLogger(__name__)

ACTIVATE_JOB = "activate"


class ActivationError(Conflict):
    """The collections cannot move to the new version (e.g. content that was not kept)."""


@dataclass
class ActiveModel:
    """Which version serves, and the ones before it (for rollback), kept in the data dir."""

    path: Path
    active: str | None = None
    history: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ActiveModel:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        return cls(path, data.get("active"), list(data.get("history", [])))

    def save(self) -> None:
        atomic_write(
            self.path, json.dumps({"active": self.active, "history": self.history}).encode()
        )


class Activator:
    def __init__(
        self,
        settings: Settings,
        store: CollectionStore,
        engine: Engine,
        finetuner: FineTuner,
        jobs: JobStore,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.finetuner = finetuner
        self.jobs = jobs
        self.state = ActiveModel.load(settings.data_dir / "active_model.json")

    def run(self, job: Job, should_stop: Callable[[], bool]) -> None:
        target = job.params["version"]
        rollback = bool(job.params.get("rollback"))
        current = self.engine.encoder
        if target == current.version:
            self.jobs.report(job.id, {"phase": "done", "message": f"{target} is already active"})
            return
        new = self.finetuner.encoder_for(target, self.engine.encoders)
        self._probe(new)
        self.engine.add_version(new)
        detail: dict[str, Any] = {"phase": "re-embedding", "from": current.version, "to": target}
        done = total = 0
        migration = None
        try:
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
                self.engine.activate(target)
                previous = self.state.active or current.version
                if rollback and self.state.history:
                    self.state.history.pop()
                else:
                    self.state.history.append(previous)
                self.state.active = target
                self.state.save()

            # The point of no return: from here a cancel is refused (409), and a cancel that
            # came first stops the activation here.
            detail["phase"] = "switching"
            if not self.jobs.pass_point_of_no_return(job.id, detail):
                raise TrainingStopped
            if migration is None:
                switch()  # writes go on meanwhile: their vectors are in the shared space
            else:
                migration.commit(after=switch)
        except BaseException:
            if migration is not None:
                migration.abort()
            self.engine.drop_version(target)
            raise
        # The version just replaced stays loaded: queries that read the collection's version
        # before the swap still embed with it (and then retry). Older ones go.
        for version in list(self.engine.encoders):
            if version not in (target, current.version):
                self.engine.drop_version(version)  # never the configured model
        detail["phase"] = "done"
        self.jobs.report(job.id, detail, done=total)
        log.info(
            "activated %s (was %s) for %d collections",
            target,
            current.version,
            len(detail["collections"]),
        )

    def _probe(self, encoder: Encoder) -> None:
        """A version whose encoders give a non-finite vector never serves: tried on a text,
        a query and an image before anything is re-embedded (each chunk written after is
        checked by the store as well)."""
        side = encoder.pixels.size
        image = Image.new("RGB", (side, side), (127, 127, 127))
        tries = (
            (encoder.encode_texts, ["a photo of a dog"]),
            (encoder.encode_queries, ["a photo of a dog"]),
            (encoder.encode_images, [image]),
        )
        for encode, inputs in tries:
            if not np.isfinite(self.engine.run_model(encode, inputs)).all():
                raise TrainingDiverged(
                    f"{encoder.version} gives non-finite vectors: it cannot serve"
                )

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


def restore_active(settings: Settings, engine: Engine, finetuner: FineTuner) -> str | None:
    """At start-up, serve the version the last activation left active, if it is not the
    configured model. Returns that version (None: the configured model serves)."""
    state = ActiveModel.load(settings.data_dir / "active_model.json")
    if state.active is None or state.active == engine.version:
        return None
    encoder = finetuner.encoder_for(state.active, engine.encoders)
    engine.add_version(encoder)
    engine.activate(state.active)
    return state.active
