"""Index advice as the service gives it: one measurement at a time, since building the
ladder's indexes takes the CPU, each in a process of its own (``index.vectors.advice_run``) so
that it ends at its deadline, when its client leaves, or when the server stops."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import index
from app.service.errors import Busy, Failed, NotReady
from index import CollectionStore, InvalidIndexSpec, Modality
from index.vectors.reindex import advice_sample
from models.errors import DeadlineExceeded

POLL_S = 0.2
ADVICE_TIMEOUT_S = 120.0  # one index advice, all specs measured (504 past it)


class AdviceStopped(NotReady):
    """The advice was stopped: its client left or the server is shutting down."""

    code = "advice_stopped"


class Advisor:
    def __init__(self, store: CollectionStore, timeout_s: float, tmp_dir: Path) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.tmp_dir = tmp_dir
        self._busy = threading.Lock()
        self._closing = threading.Event()
        for left in tmp_dir.glob("advice-*"):  # what a killed server left behind
            shutil.rmtree(left, ignore_errors=True)

    def advise(
        self,
        name: str,
        targets: dict[str, float],
        modality: Modality | None = None,
        sample: int = 5000,
        specs: list[str] | None = None,
        stop: threading.Event | None = None,
    ) -> dict[str, Any]:
        """The ladder measured on a sample of ``name``'s vectors (blocking); 429 while
        another advice is being measured, 504 past the deadline, 503 once ``stop`` is
        set or the advisor closes."""
        if not self._busy.acquire(blocking=False):
            raise Busy(
                "an index advice is already being measured; try again when it is done",
                "queue_full",
            )
        try:
            started = time.monotonic()
            taken = advice_sample(self.store, name, modality, sample, specs)
            args = {
                "targets": targets,
                "specs": taken.specs,
                "gpu": getattr(self.store.backends, "gpu_resources", None) is not None,
                "nprobe": getattr(self.store.backends, "nprobe", None),
            }
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.tmp_dir, prefix="advice-") as tmp:
                folder = Path(tmp)
                np.savez(folder / "sample.npz", labels=taken.labels, vectors=taken.vectors)
                (folder / "args.json").write_text(json.dumps(args))
                out = self._run(folder, started + self.timeout_s, stop or threading.Event())
        finally:
            self._busy.release()
        if "invalid" in out:
            raise InvalidIndexSpec(out["invalid"])
        return {
            "collection": name,
            "modality": taken.modality.value,
            "sample": len(taken.labels),
            **out["answer"],
        }

    def _run(self, folder: Path, deadline: float, stop: threading.Event) -> dict[str, Any]:
        root = str(Path(index.__file__).resolve().parents[1])  # where ``index`` lives
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "index.vectors.advice_run", str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": path},
        )
        try:
            while True:
                try:
                    stdout, stderr = proc.communicate(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    if stop.is_set() or self._closing.is_set():
                        raise AdviceStopped(
                            "index advice stopped: the client left or the server is stopping"
                        ) from None
                    if time.monotonic() > deadline:
                        raise DeadlineExceeded(
                            f"index advice took longer than {self.timeout_s:g} s: measure "
                            "fewer specs or a smaller sample"
                        ) from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if proc.returncode != 0:
            last = (stderr.strip().splitlines() or ["no message"])[-1]
            raise Failed(f"index advice failed (exit status {proc.returncode}): {last[:300]}")
        answer: dict[str, Any] = json.loads(stdout)
        return answer

    def close(self) -> None:
        """Stops a measurement in progress (its request gets 503)."""
        self._closing.set()
