"""One model switch for every server of a service (a shared catalogue).

An activation names the version it switches to in the catalogue (``pending``) before it
re-embeds anything. Every server's ``ModelFollower`` loads that version, tries it, and
says so in its row of ``servers`` (or why it could not). The activation goes on only once
every live server has it loaded, and fails, switching nothing, when one cannot load it.
The switch itself is one step in the catalogue: the collections' copies take their
originals' place and the active version changes, while no other server writes; each
server then answers with the new vectors at once (a query is embedded with its
collection's version, which it has loaded) and embeds new items with the new version
within a follow step. A server started later loads the active version, and the pending
one, before it says it is ready.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.service.engine import Engine
from app.service.errors import Conflict
from app.service.finetune import FineTuner
from index.catalogue.base import Catalogue, Conn
from index.catalogue.servers import (
    BEAT_S,
    ModelState,
    Servers,
    read_model_state,
    write_model_state,
)
from models.encoder import Encoder
from models.errors import TrainingDiverged

log = logging.getLogger(__name__)

PREPARE_TIMEOUT_S = 120.0  # how long every live server has to load a version


class ActivationError(Conflict):
    """The collections cannot move to the new version (e.g. content that was not kept, or
    a server that cannot load it)."""


def probe(engine: Engine, encoder: Encoder) -> None:
    """A version whose encoders give a non-finite vector never serves: tried on a text, a
    query and an image before anything is re-embedded (each chunk written after is
    checked by the store as well)."""
    side = encoder.pixels.size
    image = Image.new("RGB", (side, side), (127, 127, 127))
    tries = (
        (encoder.encode_texts, ["a photo of a dog"]),
        (encoder.encode_queries, ["a photo of a dog"]),
        (encoder.encode_images, [image]),
    )
    for encode, inputs in tries:
        if not np.isfinite(engine.run_model(encode, inputs)).all():
            raise TrainingDiverged(f"{encoder.version} gives non-finite vectors: it cannot serve")


class ActiveModel:
    """Which version serves, the ones before it (for rollback), and the one an activation
    is switching to: in the catalogue, one answer for every server. A data dir from before
    kept the first two in ``active_model.json``: read until an activation writes them."""

    def __init__(self, db: Catalogue, legacy: Path) -> None:
        self.db = db
        self.legacy = legacy

    def read(self, conn: Conn | None = None) -> ModelState:
        state = read_model_state(conn or self.db.reader())
        if state is not None:
            return state
        try:
            data = json.loads(self.legacy.read_text())
        except FileNotFoundError:
            return ModelState()
        return ModelState(data.get("active"), list(data.get("history", [])))

    def update(self, change: Callable[[ModelState], None], held: bool = False) -> None:
        """Read, ``change`` and write the state in one transaction (``held``: the caller
        holds the catalogue's write lock)."""
        with self.db.locked_transaction() if held else self.db.transaction() as conn:
            state = self.read(conn)
            change(state)
            write_model_state(conn, state)


class ModelFollower:
    """This server's side of the model switch: the versions the catalogue names loaded,
    the active one serving, and a heartbeat saying which it holds."""

    def __init__(
        self,
        model: ActiveModel,
        servers: Servers,
        engine: Engine,
        finetuner: FineTuner,
        floor: Callable[[], int] = lambda: 0,
    ) -> None:
        """``floor``: the tombstone this server's indexes have applied up to (its
        heartbeat says so: tombstones are pruned only that far)."""
        self.model = model
        self.servers = servers
        self.engine = engine
        self.finetuner = finetuner
        self.floor = floor
        self.failed: dict[str, str] = {}  # version -> why this server cannot load it
        self._beat_at = 0.0
        self._lock = threading.Lock()  # the follow loop and an activation step in turn

    def step(self) -> None:
        """Load what the catalogue names, serve its active version, and beat."""
        with self._lock:
            self._step()

    def _step(self) -> None:
        state = self.model.read()
        if state.pending is None:
            self.failed.clear()  # a later activation of the same version tries again
        for version in (state.active, state.pending):
            if version is not None:
                self._load(version)
        engine = self.engine
        active = state.active or engine.configured_version
        if engine.version != active and active in engine.encoders:
            log.info("serving %s, activated by another server (was %s)", active, engine.version)
            engine.activate(active)
        keep = {active, state.pending, *state.history[-1:]}
        for version in list(engine.encoders):
            if version not in keep:
                engine.drop_version(version)  # never the serving or the configured one
        if time.monotonic() - self._beat_at >= BEAT_S:
            self.beat()

    def beat(self) -> None:
        self.servers.beat(list(self.engine.encoders), self.failed, self.floor())
        self._beat_at = time.monotonic()

    def _load(self, version: str) -> None:
        engine = self.engine
        if version in engine.encoders or version in self.failed:
            return
        try:
            encoder = self.finetuner.encoder_for(version, engine.encoders)
            probe(engine, encoder)
        except Exception as exc:  # the activation reports it, with this server's name
            self.failed[version] = str(exc)
            log.error("cannot load model version %s: %s", version, exc)
            self.beat()
            return
        engine.add_version(encoder)
        log.info("loaded model version %s", version)
        self.beat()

    def wait_loaded(self, version: str, should_stop: Callable[[], bool]) -> None:
        """Until every other live server has ``version`` loaded; ``ActivationError``
        naming a server that cannot load it, or those that did not within
        ``PREPARE_TIMEOUT_S``. A server that dies meanwhile stops counting."""
        self.beat()
        deadline = time.monotonic() + PREPARE_TIMEOUT_S
        while True:
            others = [s for s in self.servers.alive() if s.id != self.servers.id]
            for server in others:
                if version in server.failed:
                    raise ActivationError(
                        f"server {server.id} cannot load {version}: {server.failed[version]};"
                        " nothing was switched"
                    )
            missing = [s.id for s in others if version not in s.loaded]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ActivationError(
                    f"servers {', '.join(missing)} did not load {version} within"
                    f" {PREPARE_TIMEOUT_S:.0f} s; nothing was switched"
                )
            if should_stop():
                return  # the caller sees the stop at its next check
            time.sleep(0.25)
