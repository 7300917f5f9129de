"""int8 text encoding on the CPU (``XMODAL_QUANTIZE_TEXT``): texts per second against the
float model, and the recall it costs on held-out pairs, from one run.

    .venv/bin/python -m bench.quantized

Speed needs no trained weights (random ones take as long), so it is measured for
xmodal-tiny and for ViT-B-32; recall needs a model that has learnt something, so it is
measured on xmodal-tiny fine-tuned on the synthetic pairs (three seeds), with the float
and the int8 text tower against the same float image vectors, and with both towers under
bf16 autocast (what the service runs on a GPU; here on the CPU's bf16 kernels).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from bench.alignment import pictures, tuned
from models.encoder import ClipEncoder, load_encoder
from models.evaluate import retrieval_metrics
from models.synthetic import samples

BATCH = 256


def texts_per_second(enc: ClipEncoder, repeats: int) -> float:
    texts = [f"a photo of a {w} thing number {i}" for i, w in enumerate(["red", "blue"] * 128)]
    enc.encode_texts(texts[:8])  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        enc.encode_texts(texts[:BATCH])
        times.append(time.perf_counter() - started)
    return BATCH / statistics.median(times)


def speed_rows(cache: str, repeats: int) -> list[str]:
    rows = []
    for model in ("xmodal-tiny", "ViT-B-32"):
        enc = load_encoder(model, "none", "cpu", cache)
        fp32 = texts_per_second(enc, repeats)
        enc.enable_int8_text()
        int8 = texts_per_second(enc, repeats)
        name = f"{model} text tower, batch {BATCH}"
        rows.append(f"| {name} | {fp32:,.0f} | {int8:,.0f} | {int8 / fp32:.2f}x |")
    return rows


def recall_rows(cache: str, seeds: int) -> list[str]:
    out: dict[str, list[float]] = {}
    for seed in range(seeds):
        base = load_encoder("xmodal-tiny", "none", "cpu", cache, seed=seed)
        model = tuned(base, list(samples(640, seed, "a")), seed, epochs=6)
        test = list(samples(300, 1000 + seed, "a"))
        captions = [s.caption for s in test]
        xi = model.encode_images(pictures(test))
        # What the GPU path computes (bf16 autocast on both towers), here on the CPU's
        # bf16 kernels: the same number format, float32 accumulation.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            xi16, xt16 = model.encode_images(pictures(test)), model.encode_texts(captions)
        m = retrieval_metrics(xi16, xt16, groups=captions)
        for key in ("t2i_r1", "t2i_r5", "i2t_r5"):
            out.setdefault(f"bf16 {key}", []).append(float(m[key]))
        for name in ("float", "int8"):
            if name == "int8":
                model.enable_int8_text()
            m = retrieval_metrics(xi, model.encode_texts(captions), groups=captions)
            for key in ("t2i_r1", "t2i_r5", "i2t_r5"):
                out.setdefault(f"{name} {key}", []).append(float(m[key]))
    rows = []
    for key in ("t2i_r1", "t2i_r5", "i2t_r5"):
        f, q, h = out[f"float {key}"], out[f"int8 {key}"], out[f"bf16 {key}"]
        rows.append(
            f"| {key} | {np.mean(f):.1f} ({', '.join(f'{v:.1f}' for v in f)}) | "
            f"{np.mean(q):.1f} ({', '.join(f'{v:.1f}' for v in q)}) | "
            f"{np.mean(q) - np.mean(f):+.1f} | "
            f"{np.mean(h):.1f} ({', '.join(f'{v:.1f}' for v in h)}) | "
            f"{np.mean(h) - np.mean(f):+.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        print("| texts | float32 texts/s | int8 texts/s | speed-up |")
        print("|---|---|---|---|")
        print("\n".join(speed_rows(cache, args.repeats)))
        print(
            "\n| held-out recall (xmodal-tiny, fine-tuned) | float32 | int8 texts | change"
            " | bf16 autocast, both towers | change |"
        )
        print("|---|---|---|---|---|---|")
        print("\n".join(recall_rows(cache, args.seeds)))


if __name__ == "__main__":
    main()
