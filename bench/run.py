"""`make bench`: encoder throughput, search latency at 100k vectors (FAISS, and both vector
backends through the store), HTTP searches/s, and a search against its floor (a no-op
FastAPI endpoint driven by the same clients, `bench/floor.py`).

    python -m bench.run [--model xmodal-tiny] [--pretrained none] [--device auto]

Prints a Markdown table (paste it into BENCHMARKS.md with the machine) and writes the
figures as JSON under bench-results/. Timings are medians of repeated runs; nothing here
is a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from bench import floor, vectors
from bench.ingest import bench_index_job
from bench.serving import ServerProcess, add_images, drive
from index import FaissIndex
from models.encoder import ClipEncoder, load_encoder


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up: lazy init, cuDNN autotune, allocator
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def bench_encoder(encoder: ClipEncoder, batch: int, repeats: int) -> dict[str, float]:
    side = encoder.pixels.size
    pixels = torch.randn(batch, 3, side, side)
    texts = [f"a photo of object number {i} on a table" for i in range(batch)]
    image_t = statistics.median(timed(lambda: encoder.encode_image_tensors(pixels), repeats))
    text_t = statistics.median(timed(lambda: encoder.encode_texts(texts), repeats))
    # End to end from PIL: preprocessing on this process's threads, then the model.
    from PIL import Image

    pil = [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (480, 640, 3), np.uint8))
        for i in range(batch)
    ]
    pil_t = statistics.median(timed(lambda: encoder.encode_images(pil), max(1, repeats // 3)))
    return {
        "images_per_s": batch / image_t,
        "texts_per_s": batch / text_t,
        "pil_images_per_s": batch / pil_t,
    }


def bench_search(
    d: int, n: int, spec: str, queries: int, gpu_resources: object | None = None
) -> dict[str, float]:
    """One query at a time (p50, p99) and 64 at once, over ``n`` x ``d`` random unit
    vectors; on the GPU with ``gpu_resources`` (the service's FAISS backends' own)."""
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = rng.standard_normal((queries, d), dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    started = time.perf_counter()
    index = FaissIndex.build(d, spec, np.arange(n, dtype=np.int64), xb, gpu_resources=gpu_resources)
    build_s = time.perf_counter() - started
    for q in xq[:20]:
        index.search(q[None], 10)
    lat = []
    for q in xq:
        t = time.perf_counter()
        index.search(q[None], 10)
        lat.append(time.perf_counter() - t)
    lat_ms = np.array(lat) * 1000
    # The same 64 queries one by one and as one matrix: what search/batch gains.
    block = xq[:64]
    one_by_one = statistics.median(timed(lambda: [index.search(q[None], 10) for q in block], 5))
    as_matrix = statistics.median(timed(lambda: index.search(block, 10), 5))
    return {
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "build_s": build_s,
        "on_gpu": float(index.on_gpu),
        "batch64_ms_per_query": as_matrix * 1000 / len(block),
        "single64_ms_per_query": one_by_one * 1000 / len(block),
    }


def bench_batch_http(url: str, queries: int = 64, rounds: int = 5) -> dict[str, float]:
    """``queries`` text searches from one client: one request each, then one batch."""
    bodies = [{"text": f"batch query {i}", "k": 10} for i in range(queries)]
    with httpx.Client(base_url=url, timeout=120) as c:

        def singles() -> None:
            for body in bodies:
                assert c.post("/v1/collections/bench/search", json=body).status_code == 200

        def batch() -> None:
            r = c.post("/v1/collections/bench/search/batch", json={"queries": bodies})
            assert r.status_code == 200, r.text

        single_s = statistics.median(timed(singles, rounds))
        batch_s = statistics.median(timed(batch, rounds))
    return {"single_queries_per_s": queries / single_s, "batch_queries_per_s": queries / batch_s}


def bench_http(
    model: str, pretrained: str, device: str, clients: int, seconds: float, corpus: int
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(
            Path(tmp) / "data", model=model, pretrained=pretrained, device=device
        ).start(timeout=300)
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                assert c.post("/v1/collections", json={"name": "bench"}).status_code == 201
                add_images(c, "bench", corpus)
            h = drive(
                server.url,
                "/v1/collections/bench/search",
                lambda worker, i: {"text": f"query {worker} {i}", "k": 10},
                clients,
                seconds,
            )
            batched = bench_batch_http(server.url)
            return {
                **batched,
                "searches_per_s": h["per_s"],
                **{k: h[k] for k in ("p50_ms", "p99_ms", "errors", "requests")},
            }
        finally:
            server.stop()


def bench_training(encoder: ClipEncoder, pairs: int, epochs: int) -> dict[str, float]:
    """Contrastive fine-tuning samples per second on synthetic pairs, and the time of a
    linear fit on 10,000 cached embedding pairs."""
    from models.adapt.contrastive import train_contrastive
    from models.adapt.linear import fit_linear
    from models.adapt.methods import (
        ContrastiveConfig,
        LinearConfig,
        TrainStep,
    )
    from models.synthetic import render, samples

    data = list(samples(pairs, 0, "a"))
    images = [render(s) for s in data]
    texts = [s.variant(i) for i, s in enumerate(data)]
    steps: list[TrainStep] = []
    started = time.perf_counter()
    train_contrastive(
        encoder,
        images,
        texts,
        ContrastiveConfig(epochs=epochs, batch_size=64),
        on_step=steps.append,
    )
    elapsed = time.perf_counter() - started
    rates = [s.samples_per_second for s in steps[1:]] or [0.0]
    rng = np.random.default_rng(0)
    xi = rng.standard_normal((10_000, encoder.dim), dtype=np.float32)
    xt = xi + 0.5 * rng.standard_normal((10_000, encoder.dim), dtype=np.float32)
    started = time.perf_counter()
    fit_linear(xi, xt, LinearConfig())
    return {
        "contrastive_samples_per_s": float(np.median(rates)),
        "contrastive_seconds": elapsed,
        "linear_fit_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.environ.get("XMODAL_MODEL", "xmodal-tiny"))
    parser.add_argument("--pretrained", default=os.environ.get("XMODAL_PRETRAINED", "none"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument(
        "--dims", default="model,512", help="vector sizes to search; 'model' = embed dim"
    )
    parser.add_argument(
        "--specs", default="Flat;HNSW32;IVF1024,Flat", help="FAISS specs, ;-separated"
    )
    parser.add_argument(
        "--backend-vectors", type=int, default=100_000, help="FAISS and Milvus rows (0: skip)"
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--corpus", type=int, default=512, help="images indexed for the HTTP run")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument(
        "--floor-clients", default="16,64", help="the floor table's client counts ('': none)"
    )
    parser.add_argument(
        "--train-pairs", type=int, default=1024, help="pairs for the training row (0: skip)"
    )
    parser.add_argument(
        "--index-images", type=int, default=2000, help="JPEGs for the job row (0: skip)"
    )
    parser.add_argument("--index-size", default="640x480", help="their size, WxH")
    parser.add_argument("--index-workers", type=int, default=None, help="decoding threads")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        encoder = load_encoder(args.model, args.pretrained, args.device, cache)
    device = encoder.device_name
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    rows: list[tuple[str, str, str]] = []
    results: dict[str, Any] = {
        "model": encoder.version,
        "device": device,
        "cpu": cpu,
        "torch": torch.__version__,
    }

    enc = bench_encoder(encoder, args.batch, args.repeats)
    results["encoder"] = enc
    rows += [
        (
            f"image encoder, batch {args.batch} (preprocessed tensors)",
            f"{enc['images_per_s']:,.0f} images/s",
            device,
        ),
        (
            f"image encoder from 640x480 PIL images, batch {args.batch}",
            f"{enc['pil_images_per_s']:,.0f} images/s",
            device,
        ),
        (f"text encoder, batch {args.batch}", f"{enc['texts_per_s']:,.0f} texts/s", device),
    ]
    specs = [s for s in args.specs.split(";") if s]
    dims = sorted({encoder.dim if d == "model" else int(d) for d in args.dims.split(",")})
    results["search"] = {}
    for d in dims:
        for spec in specs:
            s = bench_search(d, args.vectors, spec, queries=1000)
            results["search"][f"{spec}/{d}"] = s
            where = "GPU" if s["on_gpu"] else "CPU"
            rows.append(
                (
                    f"search {spec}, {args.vectors:,} x {d}, k=10, one query",
                    f"p50 {s['p50_ms']:.3f} ms, p99 {s['p99_ms']:.3f} ms "
                    f"(build {s['build_s']:.1f} s)",
                    where,
                )
            )
            rows.append(
                (
                    f"search {spec}, {args.vectors:,} x {d}, 64 queries one by one / as a batch",
                    f"{s['single64_ms_per_query']:.3f} / {s['batch64_ms_per_query']:.3f} ms"
                    " per query",
                    where,
                )
            )
    if args.backend_vectors:
        results["index_specs"], spec_rows = vectors.spec_rows(args.backend_vectors, 512)
        results["backends"], backend_rows = vectors.rows(args.backend_vectors, 512, 300, 30)
        rows += spec_rows + backend_rows
    if not args.skip_http:
        h = bench_http(
            args.model, args.pretrained, args.device, args.clients, args.seconds, args.corpus
        )
        results["http"] = h
        rows.append(
            (
                f"HTTP text->image search, {args.clients} clients, {args.corpus} images",
                f"{h['searches_per_s']:,.0f} searches/s (p50 {h['p50_ms']:.1f} ms, "
                f"p99 {h['p99_ms']:.1f} ms, {int(h['errors'])} errors)",
                device,
            )
        )
        rows.append(
            (
                "HTTP text->image search, one client, 64 queries: a request each / search/batch",
                f"{h['single_queries_per_s']:,.0f} / {h['batch_queries_per_s']:,.0f} queries/s",
                device,
            )
        )

    if args.train_pairs:
        t = bench_training(encoder, args.train_pairs, epochs=2)
        results["training"] = t
        rows += [
            (
                f"contrastive fine-tuning, batch 64, {args.train_pairs} synthetic pairs",
                f"{t['contrastive_samples_per_s']:,.0f} samples/s (median step)",
                device,
            ),
            (
                "linear fit, 10,000 cached pairs, 200 epochs",
                f"{t['linear_fit_seconds']:.1f} s",
                "cpu",
            ),
        ]
    if args.index_images:
        width, height = (int(x) for x in args.index_size.split("x"))
        j = bench_index_job(
            args.model,
            args.pretrained,
            args.device,
            args.index_images,
            (width, height),
            args.index_workers,
        )
        results["index_job"] = j
        how = (
            "nvJPEG + PIL fallback"
            if j["device_decode"]
            else f"{int(j['workers'])} decoding threads"
        )
        rows.append(
            (
                f"batch index job, {args.index_images} JPEGs {args.index_size} "
                f"({j['mean_kb']:.0f} kB) from disk, start-up included",
                f"{j['images_per_s']:,.0f} images/s ({how}; {j['ratio_to_plain_pil']:.2f}x "
                f"plain PIL on one core; first progress {j['first_progress_s']:.1f} s)",
                device,
            )
        )
        r = bench_index_job(
            args.model,
            args.pretrained,
            args.device,
            args.index_images,
            (width, height),
            args.index_workers,
            engine="ray",
            warm_up=True,
        )
        results["index_job_ray"] = r
        rows.append(
            (
                f"the same job on a local Ray cluster ({os.cpu_count()} CPUs, "
                "decode tasks, 1 encoding actor)",
                f"{r['images_per_s']:,.0f} images/s",
                device,
            )
        )

    floor_table = None
    if not args.skip_http and args.floor_clients:
        # Closed-loop clients against a no-op FastAPI endpoint and against xmodal's search
        # (20,000 texts, 512 images), each search row as a fraction of the floor.
        floor_table = floor.table(floor.floor_rows(args.floor_clients, args.seconds, 20_000, 512))
        results["floor"] = floor_table

    print(f"\nmodel {encoder.version}; torch {torch.__version__}; CPU {cpu}\n")
    print("| benchmark | result | device |")
    print("|---|---|---|")
    for name, value, where in rows:
        print(f"| {name} | {value} | {where} |")
    if floor_table:
        print(f"\nA search against its floor ({device}):\n\n{floor_table}")
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
