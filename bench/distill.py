"""Distilled query encoders against their teachers, from one run: held-out retrieval and
text-encoding speed.

    .venv/bin/python -m bench.distill

- **Recall** (xmodal-tiny, three seeds): the teacher is xmodal-tiny fine-tuned
  (``contrastive``) on 640 pairs of synthetic domain a, as in ``bench.alignment``; the
  student is the ``distill`` method's default (half the width, a third of the layers)
  trained on those 640 captions. Both are measured on 200 held-out pairs: text-to-image
  Recall@1/5/10 (the student encodes the queries, the teacher the images) and the cosine
  between the student's and the teacher's vectors for the held-out captions.
- **Speed**: texts per second in batches of 256 and one query's latency, median of three
  batches and twenty single texts, for xmodal-tiny and for ViT-B-32's text tower (512 wide,
  12 layers) against students of 256x4 (the default) and 128x2 (context 32). Weights do not
  change speed; ViT-B-32's teacher has random weights here (nothing can be downloaded) and
  its students are trained a few epochs on its vectors, so only their speed is reported.
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import numpy as np

from bench.alignment import pictures, tuned
from models.adapt.distill import text_speed
from models.adapt.methods import check_hyperparameters
from models.adapt.run import adapt, evaluate
from models.encoder import load_encoder
from models.student import DistilledEncoder
from models.synthetic import as_file, samples


def direct(fn: Any, *args: Any) -> Any:
    return fn(*args)


def recall_rows(seed: int, cache: str) -> dict[str, dict[str, float]]:
    base = load_encoder("xmodal-tiny", "none", "cpu", cache, seed=seed)
    train, test = list(samples(640, seed, "a")), list(samples(200, 1000 + seed, "a"))
    teacher = tuned(base, train, seed, epochs=6)
    captions = [s.caption for s in train]
    hyper = check_hyperparameters("distill", {"seed": seed})
    student = adapt("distill", hyper, teacher, [], captions, "student").encoder
    files, texts = [as_file(p) for p in pictures(test)], [s.caption for s in test]
    out = {}
    for name, enc in (("teacher", teacher), ("student", student)):
        m = evaluate(enc, files, texts, 10_000_000)
        out[name] = {k: m[k] for k in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r5")}
    cos = (student.encode_queries(texts) * teacher.encode_texts(texts)).sum(axis=1)
    out["student"]["cosine"] = float(cos.mean())
    return out


def speed_rows(cache: str) -> list[tuple[str, str, dict[str, float]]]:
    captions = sorted({s.caption for s in samples(640, 0, "a")})
    rows = []
    for arch, students in (
        ("xmodal-tiny", [{}]),
        ("ViT-B-32", [{}, {"width": 128, "layers": 2, "heads": 2, "context_length": 32}]),
    ):
        teacher = load_encoder(arch, "none", "cpu", cache)
        rows.append((arch, "teacher", text_speed(teacher.encode_texts, captions, direct)))
        for shape in students:
            epochs = 60 if arch == "xmodal-tiny" else 3
            hyper = check_hyperparameters("distill", {**shape, "epochs": epochs})
            student = adapt("distill", hyper, teacher, [], captions, "s").encoder
            assert isinstance(student, DistilledEncoder)
            tower = student.student
            cfg = tower.text_cfg
            label = f"student {cfg['width']}x{cfg['layers']}, context {cfg['context_length']}"
            label += f", {tower.parameters / 1e6:.1f} M parameters"
            rows.append((arch, label, text_speed(student.encode_queries, captions, direct)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        runs = [recall_rows(seed, cache) for seed in range(args.seeds)]
        speeds = speed_rows(cache)
    print("| encoder | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@5 | cosine to teacher |")
    print("|---|---|---|---|---|---|")
    for who in ("teacher", "student"):
        cells = []
        for k in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r5", "cosine"):
            values = [r[who][k] for r in runs if k in r[who]]
            if not values:
                cells.append("-")
                continue
            fmt = "{:.3f}" if k == "cosine" else "{:.1f}"
            spread = ", ".join(fmt.format(v) for v in values)
            cells.append(f"{fmt.format(np.mean(values))} ({spread})")
        print(f"| {who} | " + " | ".join(cells) + " |")
    print()
    print("| architecture | text encoder | texts/s, batch 256 | one text, ms |")
    print("|---|---|---|---|")
    for arch, label, s in speeds:
        print(f"| {arch} | {label} | {s['texts_per_second']:,.0f} | {s['single_text_ms']:.2f} |")


if __name__ == "__main__":
    main()
