"""Index advice as the service gives it: one measurement at a time, since building the
ladder's indexes takes the CPU (``index.reindex.advise_collection`` does the measuring)."""

from __future__ import annotations

import threading
from typing import Any

from app.service.errors import Busy
from index import CollectionStore, Modality
from index.reindex import advise_collection


class Advisor:
    def __init__(self, store: CollectionStore) -> None:
        self.store = store
        self._busy = threading.Lock()

    def advise(
        self,
        name: str,
        targets: dict[str, float],
        modality: Modality | None = None,
        sample: int = 5000,
        specs: list[str] | None = None,
    ) -> dict[str, Any]:
        """The ladder measured on a sample of ``name``'s vectors (blocking); 429 while
        another advice is being measured."""
        if not self._busy.acquire(blocking=False):
            raise Busy(
                "an index advice is already being measured; try again when it is done",
                "queue_full",
            )
        try:
            return advise_collection(self.store, name, targets, modality, sample, specs)
        finally:
            self._busy.release()
