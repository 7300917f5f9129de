"""The serving parts of ``python -m bench.gpu``: text-to-image searches/s from one server
process, and from ``xmodal serve --workers N``, each beside the no-op floor driven alike."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu_sizes import Sizes


def fill_photos(s: Sizes, data: Path, settings: dict[str, Any]) -> float:
    """``vectors`` image items (random vectors, stored as the service stores them) in a
    collection ``photos`` under ``data``; returns the seconds it took."""
    from app.service.config import Settings
    from app.service.stack import build_stack
    from index import Modality, NewItem

    stack = build_stack(Settings(data_dir=data, **settings))
    started = time.perf_counter()
    try:
        store = stack.store
        store.create_collection("photos", stack.engine.dim, stack.engine.space)
        rng = np.random.default_rng(1)
        step = 50_000
        for lo in range(0, s.vectors, step):
            n = min(step, s.vectors - lo)
            xb = rng.standard_normal((n, stack.engine.dim), dtype=np.float32)
            xb /= np.linalg.norm(xb, axis=1, keepdims=True)
            items = [NewItem(f"p{lo + i}", Modality.IMAGE, {"n": lo + i}) for i in range(n)]
            store.upsert("photos", items, xb, stack.engine.space)
    finally:
        stack.close()
    return time.perf_counter() - started


def search_body(w: int, i: int) -> dict[str, Any]:
    return {"text": f"query {w} {i}", "target": "image", "k": 10}


def http(s: Sizes, device: str) -> dict[str, Any]:
    """Text-to-image searches/s from one server process over ``vectors`` image items,
    beside a no-op FastAPI endpoint driven by the same clients in the same run."""
    from bench.floor import FloorProcess
    from bench.serving import ServerProcess, drive

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        settings = {"model": s.model, "pretrained": "none", "device": device}
        fill_s = fill_photos(s, data, settings)
        floor = FloorProcess()
        server = ServerProcess(data, **settings).start(timeout=300)
        try:
            base = drive(floor.url, "/v1/collections/x/search", search_body, s.clients, s.seconds)
            got = drive(
                server.url, "/v1/collections/photos/search", search_body, s.clients, s.seconds
            )
        finally:
            server.stop()
            floor.stop()
    return {
        "vectors": s.vectors,
        "clients": s.clients,
        "fill_s": fill_s,
        "floor": base,
        "search": got,
    }


def workers(s: Sizes, device: str) -> dict[str, Any]:
    """``xmodal serve --workers N`` for each N of ``workers``: text-to-image searches/s
    over the same ``vectors`` image items (an SQLite catalogue the workers share: no
    database server on the GPU host), each beside the floor app run with N uvicorn
    workers, and the GPU memory in use with all N loaded."""
    from bench.floor import FloorProcess
    from bench.serving import ServerProcess, drive

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        settings = {"model": s.model, "pretrained": "none", "device": device}
        fill_photos(s, data, settings)
        for n in s.workers:
            floor = FloorProcess(workers=n)
            try:
                base = drive(
                    floor.url, "/v1/collections/x/search", search_body, s.clients, s.seconds
                )
            finally:
                floor.stop()
            server = ServerProcess(data, args=("--workers", str(n)), **settings)
            started = time.perf_counter()
            server.start(wait=False)
            try:
                wait_all_ready(server, n)
                ready_s = time.perf_counter() - started
                got = drive(
                    server.url, "/v1/collections/photos/search", search_body, s.clients, s.seconds
                )
                memory = gpu_memory_mib()
            finally:
                server.stop()
            rows.append(
                {"workers": n, "ready_s": ready_s, "floor": base, "search": got, "gpu_mib": memory}
            )
    return {"vectors": s.vectors, "clients": s.clients, "rows": rows}


def wait_all_ready(server: Any, n: int, timeout: float = 600.0) -> None:
    """Until ``n`` workers answer ``/readyz`` (each accepts only once ready: the first
    answer comes from the first ready one, so a few more answers are asked for)."""
    import httpx

    server.wait_ready(timeout)
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while len(seen) < n and time.monotonic() < deadline:
        with httpx.Client(timeout=5) as c:  # a new connection: any worker may take it
            r = c.get(server.url + "/readyz")
        if r.status_code == 200:
            seen.add(r.json()["server"])
        time.sleep(0.05)


def gpu_memory_mib() -> float | None:
    """GPU memory in use on the device (every process), from NVML via nvidia-smi."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return float(out.stdout.split()[0])
    except (IndexError, ValueError):
        return None
