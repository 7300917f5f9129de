"""Zero-shot labels and occlusion maps with the demo's fine-tuned model: xmodal-tiny
fine-tuned as ``xmodal demo`` does (contrastive, 2,000 generated pairs at 64 pixels, 25
epochs, lr 1e-3, batches of 64), then measured on 200 held-out generated pictures:

- zero-shot colour and shape labels (``app.service.zero_shot``): how often the most
  probable label is the picture's, with the default templates and with templates that
  read like the domain's captions;
- occlusion maps (``app.service.explain``, 7 x 7) for the picture's own caption: how
  often the strongest cell lies inside the shape's box, beside the chance rate (the share
  of cells whose centre lies in it).

    .venv/bin/python -m bench.explain [--pairs 2000] [--epochs 25]   # about 4 minutes here
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from app.service.explain import occluded, occlusion_map
from app.service.zero_shot import probabilities, prompts
from models.adapt.contrastive import train_contrastive
from models.adapt.methods import ContrastiveConfig
from models.encoder import ClipEncoder, load_encoder
from models.synthetic import COLOURS, SHAPES, render, samples, shape_box

SIDE, GRID = 64, 7


def accuracy(
    encoder: ClipEncoder,
    images: np.ndarray,
    labels: list[str],
    truth: list[str],
    templates: list[str] | None,
) -> float:
    texts = prompts(labels, templates)
    vectors = encoder.encode_texts(texts).reshape(len(labels), len(texts) // len(labels), -1)
    means = vectors.mean(axis=1)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    best = [labels[int(np.argmax(probabilities(v, means)))] for v in images]
    return float(np.mean([b == t for b, t in zip(best, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=25)
    args = parser.parse_args()
    base = load_encoder("xmodal-tiny", "none", "cpu", tempfile.mkdtemp(), seed=0)
    train = list(samples(args.pairs, 0, "a"))
    started = time.perf_counter()
    cfg = ContrastiveConfig(epochs=args.epochs, batch_size=64, lr=1e-3, seed=0)
    model = train_contrastive(
        base, [render(s, SIDE) for s in train], [s.caption for s in train], cfg
    )
    tuned = base.with_model(model, "xmodal-tiny@demo")
    trained_s = time.perf_counter() - started
    held = list(samples(200, 9000, "a"))
    images = tuned.encode_images([render(s, SIDE) for s in held])
    colours, shapes = sorted(COLOURS["a"]), list(SHAPES)
    domain = [f"a {size} {{}} {shape}" for size in ("small", "large") for shape in shapes]
    domain_shapes = [f"a {size} {colour} {{}}" for size in ("small", "large") for colour in colours]
    rows = {
        "colour, default templates": accuracy(
            tuned, images, colours, [s.colour for s in held], None
        ),
        "colour, the domain's templates": accuracy(
            tuned, images, colours, [s.colour for s in held], domain
        ),
        "shape, default templates": accuracy(tuned, images, shapes, [s.shape for s in held], None),
        "shape, the domain's templates": accuracy(
            tuned, images, shapes, [s.shape for s in held], domain_shapes
        ),
    }
    centres = (np.arange(GRID) + 0.5) / GRID
    hits = chance = 0.0
    for s in held:
        left, top, right, bottom = (v / SIDE for v in shape_box(s, SIDE))
        vectors = tuned.encode_image_tensors(occluded(tuned.preprocess(render(s, SIDE)), GRID))
        cells = occlusion_map(vectors, tuned.encode_texts([s.caption])[0], GRID)
        row, col = np.unravel_index(int(np.argmax(cells)), cells.shape)
        hits += left <= centres[col] <= right and top <= centres[row] <= bottom
        inside = ((centres >= left) & (centres <= right)).sum() * (
            (centres >= top) & (centres <= bottom)
        ).sum()
        chance += inside / GRID**2
    print(f"fine-tuned in {trained_s:.0f} s ({args.pairs} pairs, {args.epochs} epochs)")
    print("| measure (200 held-out pictures) | result |")
    print("|---|---|")
    for name, value in rows.items():
        print(f"| zero-shot {name} | {value:.3f} |")
    print(
        "| occlusion map's strongest cell in the shape's box (7 x 7) |"
        f" {hits / len(held):.3f} (chance {chance / len(held):.3f}) |"
    )


if __name__ == "__main__":
    main()
