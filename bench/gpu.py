"""Every GPU figure in one command: the encoders, ingest end to end, FAISS search and HTTP
searches as served, written as JSON and a Markdown table under ``--out`` (``$OUT`` on the
GPU host), each part saved as soon as it is measured.

    python -m bench.gpu                   # on the GPU host, about 6 minutes
    python -m bench.gpu --smoke           # small sizes on any machine (the test suite's)

On the GPU host, with the ``../shared/gpu`` kit (FAISS with GPU support, OpenCLIP and the
web stack as wheels):

    source .gpu/gpu-env.sh && PYTHONPATH=$PWD python -m bench.gpu --out $OUT

Weights are random (nothing is downloaded): speeds are those of the real architectures;
the precision check compares fp32 and the served precision on the same weights (the
agreement of their rankings and the activation gate's recall on synthetic pairs).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.gpu_serving import http, workers
from bench.gpu_sizes import FULL, SMALL_BATCH, SMOKE, Sizes


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` after two warm-up calls (allocator, autotuning)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def precision(device: torch.device) -> torch.dtype | None:
    from models.encoder import autocast_dtype

    return autocast_dtype(device)


def encoders(s: Sizes, device: torch.device, compile_: bool) -> dict[str, Any]:
    """The image tower in fp32 and the served precision, with the patch convolution and as
    a matrix multiply, at several batch sizes; the text tower; fp32 against the served
    precision on synthetic pairs."""
    import open_clip

    from models.fast_paths import patch_embedding_as_matmul
    from models.loading import register_model_configs

    register_model_configs()
    conv = open_clip.create_model(s.model, pretrained=None).to(device).eval()
    fast = copy.deepcopy(conv)
    swapped = patch_embedding_as_matmul(fast)
    side = conv.visual.image_size
    side = side[0] if isinstance(side, (tuple, list)) else side
    low = precision(device)
    out: dict[str, Any] = {
        "model": s.model,
        "served_precision": str(low or "fp32"),
        "patch_matmul": swapped,
    }

    def tower_rate(model: Any, batch: int, dtype: torch.dtype | None) -> float:
        x = torch.randn(batch, 3, side, side, device=device)

        def run() -> None:
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None),
            ):
                model.encode_image(x)

        return batch / timed(run, s.repeats, device)

    first = s.batches[0]
    rows = {
        f"fp32, convolution, batch {first}": tower_rate(conv, first, None),
        f"{low}, convolution, batch {first}": tower_rate(conv, first, low) if low else None,
    }
    for b in s.batches:
        rows[f"{low or 'fp32'}, served (patch {'matmul' if swapped else 'conv'}), batch {b}"] = (
            tower_rate(fast, b, low)
        )
    small = SMALL_BATCH
    rows[f"{low or 'fp32'}, served, batch {small} (a few queries)"] = tower_rate(fast, small, low)
    if compile_ and device.type == "cuda":
        # Large batches: fused kernels; small ones: CUDA graphs take the launch overhead.
        started = time.perf_counter()
        for mode, batch in (("max-autotune-no-cudagraphs", first), ("reduce-overhead", small)):
            compiled = copy.deepcopy(fast)
            compiled.visual = torch.compile(compiled.visual, mode=mode)
            rows[f"{low}, served + torch.compile ({mode}), batch {batch}"] = tower_rate(
                compiled, batch, low
            )
        out["compile_s"] = time.perf_counter() - started
    out["image_tower_per_s"] = {k: v for k, v in rows.items() if v is not None}
    tokens = open_clip.get_tokenizer(s.model)(
        [f"a photo of object number {i} on a table" for i in range(s.texts)]
    ).to(device)

    def text_run() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, low or torch.float32, enabled=low is not None),
        ):
            fast.encode_text(tokens)

    out["text_tower_per_s"] = {
        f"{low or 'fp32'}, batch {s.texts}": s.texts / timed(text_run, s.repeats, device)
    }
    out["precision_check"] = precision_check(fast, s, device, low)
    return out


def precision_check(
    model: Any, s: Sizes, device: torch.device, low: torch.dtype | None
) -> dict[str, float]:
    """fp32 against the served precision on the same weights and synthetic pairs: the
    top-10 overlap of each caption's image ranking, and text-to-image recall@5 of both."""
    import open_clip

    from models.evaluate import retrieval_metrics
    from models.pixels import PixelSpec
    from models.preprocess import normalise
    from models.synthetic import render, samples

    _, _, preprocess = open_clip.create_model_and_transforms(s.model, pretrained=None)
    spec = PixelSpec.from_preprocess(preprocess)
    pairs = list(samples(s.pairs, seed=7))
    pixels = normalise(spec, np.stack([spec.fit(render(p)) for p in pairs]), device)
    tokens = open_clip.get_tokenizer(s.model)([p.caption for p in pairs]).to(device)

    def vectors(dtype: torch.dtype | None) -> tuple[np.ndarray, np.ndarray]:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype or torch.float32, enabled=dtype is not None),
        ):
            xi = torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1)
            xt = torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
        return xi.cpu().numpy(), xt.cpu().numpy()

    full_i, full_t = vectors(None)
    low_i, low_t = vectors(low)
    top_full = np.argsort(-(full_t @ full_i.T), axis=1)[:, :10]
    top_low = np.argsort(-(low_t @ low_i.T), axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_full, top_low, strict=True)])
    groups = [p.caption for p in pairs]
    return {
        "top10_overlap": float(overlap),
        "t2i_r5_fp32": retrieval_metrics(full_i, full_t, groups=groups)["t2i_r5"],
        "t2i_r5_served": retrieval_metrics(low_i, low_t, groups=groups)["t2i_r5"],
        "max_abs_diff": float(np.abs(full_i - low_i).max()),
    }


def ingest(s: Sizes, device: str) -> dict[str, Any]:
    """An index job over photo-like 640x480 JPEGs on disk, start-up included: nvJPEG and
    the GPU's resize on CUDA, the decoding threads elsewhere."""
    from bench.ingest import bench_index_job

    return bench_index_job(
        s.model, "none", device, s.ingest_files, (640, 480), None, plain_sample=2000
    )


def search(s: Sizes, gpu: bool) -> dict[str, Any]:
    """Exact search over ``vectors`` x ``dim`` built as the service builds it (on the GPU
    when FAISS has one): one query at a time, and 64 at once."""
    from bench.run import bench_search
    from index.vectors.faiss_backends import FaissBackends

    r = bench_search(s.dim, s.vectors, "Flat", s.queries, FaissBackends(use_gpu=gpu).gpu_resources)
    return {
        "on_gpu": bool(r["on_gpu"]),
        "build_s": r["build_s"],
        "p50_ms_one_query": r["p50_ms"],
        "p99_ms_one_query": r["p99_ms"],
        "queries_per_s_batches_of_64": 1000 / r["batch64_ms_per_query"],
    }


def table(results: dict[str, Any]) -> str:
    lines = ["| measure | result |", "|---|---|"]
    enc = results.get("encoders", {})
    for name, rate in enc.get("image_tower_per_s", {}).items():
        lines.append(f"| {enc['model']} image tower, {name} | {rate:,.0f} images/s |")
    for name, rate in enc.get("text_tower_per_s", {}).items():
        lines.append(f"| {enc['model']} text tower, {name} | {rate:,.0f} texts/s |")
    if "precision_check" in enc:
        p = enc["precision_check"]
        lines.append(
            f"| fp32 against {enc['served_precision']}, same weights | top-10 overlap "
            f"{p['top10_overlap']:.3f}; t2i R@5 {p['t2i_r5_fp32']:.1f} / {p['t2i_r5_served']:.1f} |"
        )
    sizes = results["sizes"]
    if "ingest" in results:
        j = results["ingest"]
        how = "nvJPEG on the GPU" if j["device_decode"] else f"{int(j['workers'])} decoding threads"
        lines.append(
            f"| index job, {sizes['ingest_files']:,} JPEGs 640x480 ({j['mean_kb']:.0f} kB), "
            f"start-up included | {j['images_per_s']:,.0f} images/s ({how}; first progress "
            f"{j['first_progress_s']:.1f} s; plain PIL one core {j['plain_pil_per_s']:,.0f}/s) |"
        )
    if "search" in results:
        q = results["search"]
        where = "GPU" if q["on_gpu"] else "CPU"
        lines.append(
            f"| exact search {sizes['vectors']:,} x {sizes['dim']} ({where}) | one query p50 "
            f"{q['p50_ms_one_query']:.3f} ms; {q['queries_per_s_batches_of_64']:,.0f} queries/s "
            "in batches of 64 |"
        )
    if "http" in results:
        h = results["http"]
        lines.append(
            f"| HTTP text->image search, {h['clients']} clients, {h['vectors']:,} images | "
            f"{h['search']['per_s']:,.0f}/s (p50 {h['search']['p50_ms']:.1f} ms); no-op floor "
            f"{h['floor']['per_s']:,.0f}/s |"
        )
    if "workers" in results:
        w = results["workers"]
        for r in w["rows"]:
            memory = "" if r["gpu_mib"] is None else f"; GPU memory {r['gpu_mib']:,.0f} MiB"
            lines.append(
                f"| `--workers {r['workers']}`, text->image, {w['clients']} clients, "
                f"{w['vectors']:,} images | {r['search']['per_s']:,.0f}/s (p50 "
                f"{r['search']['p50_ms']:.1f} ms); no-op floor {r['floor']['per_s']:,.0f}/s; "
                f"ready in {r['ready_s']:.0f} s{memory} |"
            )
    for part, error in results.get("errors", {}).items():
        lines.append(f"| {part} | failed: {error.splitlines()[-1][:120]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="small sizes, any device")
    parser.add_argument("--out", default=os.environ.get("OUT", "bench-results"))
    parser.add_argument("--parts", default="encoders,search,ingest,http,workers")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    args = parser.parse_args(argv)
    s = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "sizes": s.__dict__,
        "errors": {},
    }
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        "encoders": lambda: encoders(s, device, compile_=not args.no_compile),
        "search": lambda: search(s, gpu=device.type == "cuda"),
        "ingest": lambda: ingest(s, device.type),
        "http": lambda: http(s, device.type),
        "workers": lambda: workers(s, device.type),
    }
    for name in args.parts.split(","):
        started = time.perf_counter()
        try:
            results[name] = parts[name]()
        except Exception:
            results["errors"][name] = traceback.format_exc()
            print(results["errors"][name], flush=True)
        results.setdefault("seconds", {})[name] = time.perf_counter() - started
        (out / "gpu.json").write_text(json.dumps(results, indent=2, default=str))
        (out / "gpu.md").write_text(table(results))
        print(f"{name}: {results['seconds'][name]:.1f} s", flush=True)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
