"""The batch-index-job benchmark: photo-like JPEGs on disk through a real job."""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def scene(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like scene as float RGB: smooth gradients and a few soft shapes."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c = rng.uniform(0, 255, 6)
    base = np.stack(
        [c[j] + (c[j + 3] - c[j]) * (xx / width if j % 2 else yy / height) for j in range(3)],
        -1,
    )
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 160)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        base = base + blob * rng.uniform(-80, 80, 3)
    return base


def photo(
    rng: np.random.Generator, width: int, height: int, base: np.ndarray | None = None
) -> Image.Image:
    """A photo-like picture: a scene (``base``, or a new one) with its own grain (at
    640x480 and quality 90 about 52 kB, as camera photos scaled to that size are)."""
    base = scene(rng, width, height) if base is None else base
    grain = rng.normal(0, 3.5, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def photo_jpeg(seed: int, width: int = 640, height: int = 480) -> bytes:
    buf = io.BytesIO()
    photo(np.random.default_rng(seed), width, height).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_jpegs(
    folder: Path, n: int, width: int, height: int, scenes: int = 64, processes: int = 1
) -> int:
    """``n`` photo-like JPEGs, quality 90, over ``scenes`` scenes each with its own grain
    (so every file's bytes differ), written by ``processes`` processes; returns total
    bytes."""
    folder.mkdir(parents=True)
    parts = [
        (folder, lo, min(n, lo + -(-n // processes)), width, height, scenes)
        for lo in range(0, n, -(-n // processes))
    ]
    if processes == 1:
        return sum(_write_part(*p) for p in parts)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        return sum(pool.starmap(_write_part, parts))


def _write_part(folder: Path, lo: int, hi: int, width: int, height: int, scenes: int) -> int:
    rng = np.random.default_rng(lo)
    bases = [scene(rng, width, height) for _ in range(min(hi - lo, scenes))]
    total = 0
    for i in range(lo, hi):
        path = folder / f"{i:06d}.jpg"
        photo(rng, width, height, bases[(i - lo) % len(bases)]).save(path, quality=90)
        total += path.stat().st_size
    return total


def plain_pil_rate(files: list[Path], side: int = 224) -> float:
    """Images per second one core does with plain PIL on ``files``: open, decode every
    pixel, resize the shorter side to ``side`` (bicubic), centre crop. The yardstick."""
    started = time.perf_counter()
    for path in files:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            w, h = rgb.size
            nw, nh = (side, side * h // w) if w <= h else (side * w // h, side)
            rgb = rgb.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - side) // 2, (nh - side) // 2
            np.asarray(rgb.crop((left, top, left + side, top + side)))
    return len(files) / (time.perf_counter() - started)


class PeakRss:
    """This process's resident memory, sampled every 20 ms while in the block: what the
    job's decoders (threads here) and its buffers add."""

    def __init__(self) -> None:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> PeakRss:
        self.base = self.peak = _rss()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_index_job(
    model: str,
    pretrained: str,
    device: str,
    n: int,
    size: tuple[int, int],
    workers: int | None,
    engine: str = "local",
    warm_up: bool = False,
    plain_sample: int | None = None,
) -> dict[str, float]:
    """An index job over ``n`` JPEGs on disk (source walk, reading, hashing, decoding,
    encoding, image files kept, SQLite commits and FAISS adds), timed from its submission
    to its end with the decoders' start-up included (``warm_up``: a small job first, for
    Ray, whose local cluster would otherwise start inside the timing); beside it, plain PIL
    on one core over the same files in the same run, and the same job again over the
    unchanged files."""
    from app.service.config import Settings
    from app.service.jobs import INDEX_JOB
    from app.service.stack import build_stack

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        nbytes = write_jpegs(data / "import" / "photos", n, *size, processes=os.cpu_count() or 1)
        files = sorted((data / "import" / "photos").iterdir())
        threads = {"decode_workers": workers} if workers else {}
        settings = Settings(
            model=model, pretrained=pretrained, device=device, data_dir=data, **threads
        )
        stack = build_stack(settings)
        jobs = stack.jobs
        first: list[float] = []
        try:
            stack.store.create_collection("bench", stack.engine.dim, stack.engine.space)
            if warm_up:
                write_jpegs(data / "import" / "warmup", 32, *size)
                jobs.run(jobs.submit(INDEX_JOB, "bench", {"source": "warmup", "engine": engine}))
            plain = plain_pil_rate(files[:plain_sample])
            params = {"source": "photos", "engine": engine}
            job = jobs.submit(INDEX_JOB, "bench", params)
            started = time.perf_counter()
            with PeakRss() as memory:
                finished = jobs.run(
                    job,
                    lambda j: first.append(time.perf_counter()) if j.done and not first else None,
                )
            elapsed = time.perf_counter() - started
            again = time.perf_counter()
            unchanged = jobs.run(jobs.submit(INDEX_JOB, "bench", params))
            elapsed_unchanged = time.perf_counter() - again
        finally:
            stack.close()
    assert finished.done == n and unchanged.done == n, (finished, unchanged)
    runner = stack.jobs.runners[INDEX_JOB]
    return {
        "images_per_s": n / elapsed,
        "seconds": elapsed,
        "first_progress_s": first[0] - started if first else elapsed,
        "plain_pil_per_s": plain,
        "ratio_to_plain_pil": n / elapsed / plain,
        "unchanged_per_s": n / elapsed_unchanged,
        "peak_rss_added_mb": (memory.peak - memory.base) / 2**20,
        "workers": float(settings.decode_workers),
        "mean_kb": nbytes / n / 1024,
        "device_decode": float(runner.local.pipeline.device_decode),
    }


def main() -> None:
    """``python -m bench.ingest``: the index job against plain PIL on one core, medians of
    ``--runs`` fresh runs, each on its own files and stack."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", default=os.environ.get("XMODAL_MODEL", "xmodal-tiny"))
    parser.add_argument("--pretrained", default=os.environ.get("XMODAL_PRETRAINED", "none"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--files", default="1200", help="corpus sizes, comma-separated")
    parser.add_argument("--size", default="640x480", help="WxH")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="decoding threads")
    parser.add_argument("--engine", default="local", choices=("local", "ray"))
    parser.add_argument(
        "--plain-sample", type=int, default=None, help="files the plain-PIL yardstick reads"
    )
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    keys = (
        "images_per_s",
        "plain_pil_per_s",
        "ratio_to_plain_pil",
        "first_progress_s",
        "unchanged_per_s",
        "peak_rss_added_mb",
    )
    print(f"| files | {' | '.join(keys)} | mean kB |")
    print("|" + "---|" * (len(keys) + 2))
    for n in (int(x) for x in args.files.split(",")):
        runs = [
            bench_index_job(
                args.model,
                args.pretrained,
                args.device,
                n,
                (width, height),
                args.workers,
                args.engine,
                warm_up=args.engine == "ray",
                plain_sample=args.plain_sample,
            )
            for _ in range(args.runs)
        ]
        for r in runs:
            print("  run:", json.dumps({k: round(r[k], 3) for k in keys}), flush=True)
        med = {k: statistics.median(r[k] for r in runs) for k in (*keys, "mean_kb")}
        cells = " | ".join(f"{med[k]:,.2f}" for k in keys)
        print(f"| {n:,} | {cells} | {med['mean_kb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
