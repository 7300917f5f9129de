"""The batch-index-job benchmark: photo-like JPEGs on disk through a real job."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np


def write_jpegs(folder: Path, n: int, width: int, height: int) -> int:
    """Photo-like JPEGs (smooth gradients plus grain), quality 90; returns total bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    total = 0
    from PIL import Image

    for i in range(n):
        c = rng.uniform(0, 255, 6)
        base = np.stack(
            [c[j] + (c[j + 3] - c[j]) * (xx / width if j % 2 else yy / height) for j in range(3)],
            -1,
        )
        grain = rng.normal(0, 12, (height, width, 1))
        pixels = np.clip(base + grain, 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total


def bench_index_job(
    model: str,
    pretrained: str,
    device: str,
    n: int,
    size: tuple[int, int],
    workers: int | None,
    engine: str = "local",
) -> dict[str, float]:
    """Images indexed per second from JPEG files on disk, through a batch job (source
    walk, decoding, encoding, SQLite commits and FAISS adds), in this process or, with
    ``engine="ray"``, on a local Ray cluster started here (the warm-up job starts it)."""
    from app.service.config import Settings
    from app.service.jobs import INDEX_JOB
    from app.service.stack import build_stack

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        nbytes = write_jpegs(data / "import" / "photos", n, *size)
        write_jpegs(data / "import" / "warmup", 32, *size)
        settings = Settings(
            model=model, pretrained=pretrained, device=device, data_dir=data, import_workers=workers
        )
        stack = build_stack(settings)
        jobs = stack.jobs
        try:
            stack.store.create_collection("bench", stack.engine.dim, stack.engine.space)
            # The warm-up starts the worker pool.
            jobs.run(jobs.submit(INDEX_JOB, "bench", {"source": "warmup", "engine": engine}))
            job = jobs.submit(INDEX_JOB, "bench", {"source": "photos", "engine": engine})
            started = time.perf_counter()
            finished = jobs.run(job)
            elapsed = time.perf_counter() - started
        finally:
            stack.close()
    assert finished.done == n, finished
    return {
        "images_per_s": n / elapsed,
        "seconds": elapsed,
        "workers": float(settings.import_workers or os.cpu_count() or 1),
        "mean_kb": nbytes / n / 1024,
        "device_decode": float(stack.jobs.runners[INDEX_JOB].pipeline.device_decode),
    }
