"""Which index specs of the grammar FAISS can serve from the GPU, and whether it answers
like the CPU: each spec is cloned to the GPU by FAISS itself (not through xmodal's
allowlist) in a child process, since some unsupported configurations abort the process
instead of raising. For each: placed or not, aborted or not, top-10 overlap with the same
index on the CPU, and both search times.

    python -m bench.gpu_specs [--out FILE]      (needs FAISS with GPU support and a GPU)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

D = 64
N = 20_000
SPECS = [
    "Flat",
    "SQ8",
    "SQfp16",
    "PQ8",
    "HNSW16",
    "IVF64,Flat",
    "IVF64,SQ4",
    "IVF64,SQ6",
    "IVF64,SQ8",
    "IVF64,SQfp16",
    "IVF64,PQ8",
    "IVF64,PQ16",
    "IVF64,PQ32",
    "IVF64,PQ8x4",
    "IVF64,PQ8x10",
    "IVF64,PQ64",
    "PCA32,IVF64,Flat",
    "OPQ8_32,IVF64,PQ8",
]


def probe(spec: str) -> dict[str, object]:
    """In this (child) process: build on the CPU, clone to the GPU, compare."""
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((N, D)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[:200] + 0.05 * rng.standard_normal((200, D)).astype(np.float32)
    cpu = faiss.index_factory(D, spec, faiss.METRIC_INNER_PRODUCT)
    cpu.train(xb)
    cpu.add(xb)
    ivf = faiss.try_extract_index_ivf(cpu)
    if ivf is not None:
        ivf.nprobe = 16
    t = time.perf_counter()
    _, i_cpu = cpu.search(xq, 10)
    cpu_ms = (time.perf_counter() - t) * 1000
    options = faiss.GpuClonerOptions()
    options.useFloat16 = True
    try:
        gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu, options)
    except RuntimeError as exc:
        return {"spec": spec, "placed": False, "why": str(exc).strip().splitlines()[-1][:160]}
    gpu.search(xq[:1], 10)  # warm-up
    t = time.perf_counter()
    _, i_gpu = gpu.search(xq, 10)
    gpu_ms = (time.perf_counter() - t) * 1000
    overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_cpu, i_gpu, strict=True)]))
    return {
        "spec": spec,
        "placed": True,
        "top10_overlap_with_cpu": round(overlap, 3),
        "cpu_ms_200_queries": round(cpu_ms, 2),
        "gpu_ms_200_queries": round(gpu_ms, 2),
    }


def probe_backend(spec: str, d: int, n: int) -> dict[str, object]:
    """In this (child) process: the spec through xmodal's own backend on the GPU (its
    placement rules, its search parameters), filtered and not."""
    import numpy as np

    from index import FaissBackends

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    labels = np.arange(n, dtype=np.int64)
    index = FaissBackends(use_gpu=True, nprobe=8).build(d, spec, labels, xb)
    plain = index.search(xb[:5], 10)
    filtered = index.search(xb[:5], 10, allowed=labels[::3])
    return {
        "spec": spec,
        "d": d,
        "n": n,
        "on_gpu": index.on_gpu,
        "self_found": float(np.mean([r.labels[0] == i for i, r in enumerate(plain)])),
        "filtered_ok": all(set(r.labels) <= set(labels[::3]) for r in filtered),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--backend", action="store_true", help="through xmodal's backend")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--n", type=int, default=1050)
    parser.add_argument("--specs", nargs="*", default=SPECS)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row = probe_backend(args.one, args.dim, args.n) if args.backend else probe(args.one)
        print(json.dumps(row))
        return
    rows = []
    for spec in args.specs:
        extra = ["--backend", "--dim", str(args.dim), "--n", str(args.n)] if args.backend else []
        proc = subprocess.run(
            [sys.executable, "-m", "bench.gpu_specs", "--one", spec, *extra],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode == 0:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
            row = {"spec": spec, "placed": None, "aborted": proc.returncode, "why": tail}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
