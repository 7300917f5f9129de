"""uvicorn's server with a drain period: on SIGTERM (or SIGINT) readiness turns false at
once, requests keep being served for ``drain_s`` so that a load balancer polling
``/readyz`` stops sending new ones, then uvicorn's graceful shutdown runs (stop accepting,
let in-flight requests finish within the timeout, then the app's shutdown, which snapshots
the indexes). A second signal skips what is left of the drain.

A stop asked for by a signal is the normal end of a server: once the shutdown has run the
process exits 0 (uvicorn would raise the signal again and die of it, which ``make run``
reports as an error on every Ctrl-C)."""

from __future__ import annotations

import logging
import socket
import threading
from types import FrameType

import uvicorn

from app.service.services import Services

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, services: Services, drain_s: float) -> None:
        super().__init__(config)
        self.services = services
        self.drain_s = drain_s
        self._draining: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.services.shutting_down = True
        if self.drain_s <= 0 or self.should_exit:
            super().handle_exit(sig, frame)
            return
        if self._draining is not None:  # second signal: stop draining now
            self._draining.cancel()
            super().handle_exit(sig, frame)
            return
        log.info("draining for %.1f s before closing the listener", self.drain_s)
        self._draining = threading.Timer(self.drain_s, super().handle_exit, (sig, frame))
        self._draining.daemon = True
        self._draining.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        self._captured_signals.clear()
