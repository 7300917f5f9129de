"""A synthetic image-caption dataset, deterministic from a seed, for tests and the demo.

Each picture is one shape drawn at a size and position on a background; its caption says
so ("a small red circle at the top left on a white background"). Two domains share the
vocabulary but differ in appearance: domain ``a`` draws plain shapes in clean colours on
flat backgrounds, domain ``b`` other shades, striped or dotted fills and noisy
backgrounds, so a model tuned on one meets a real shift on the other.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

Domain = Literal["a", "b"]

SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 0.22, "large": 0.46}
POSITIONS = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
# Domain b keeps every word of domain a (the captions read alike) but not the look: other
# shades of the same colours, striped or dotted fills, and noisy backgrounds.
COLOURS: dict[Domain, dict[str, tuple[int, int, int]]] = {
    "a": {
        "red": (220, 30, 30),
        "green": (30, 170, 60),
        "blue": (30, 70, 220),
        "yellow": (235, 210, 30),
    },
    "b": {
        "red": (150, 20, 60),
        "green": (110, 200, 90),
        "blue": (60, 140, 240),
        "yellow": (200, 160, 40),
    },
}
BACKGROUNDS: dict[Domain, dict[str, tuple[int, int, int]]] = {
    "a": {"white": (250, 250, 250), "black": (15, 15, 15), "grey": (128, 128, 128)},
    "b": {"white": (225, 220, 205), "black": (40, 35, 50), "grey": (100, 110, 120)},
}
FILLS: dict[Domain, tuple[str, ...]] = {"a": ("plain",), "b": ("striped", "dotted")}


@dataclass(frozen=True)
class Sample:
    shape: str
    colour: str
    size: str
    position: str
    background: str
    fill: str
    seed: int
    domain: Domain = "a"

    @property
    def caption(self) -> str:
        return (
            f"a {self.size} {self.colour} {self.shape} at the {self.position}"
            f" on a {self.background} background"
        )

    def variant(self, k: int) -> str:
        """One of several true descriptions, shorter ones included, as people type them."""
        s = self
        return (
            self.caption,
            f"a {s.size} {s.colour} {s.shape}",
            f"a {s.colour} {s.shape} at the {s.position}",
            f"a {s.size} {s.colour} {s.shape} at the {s.position}",
            f"a {s.colour} {s.shape} on a {s.background} background",
        )[k % 5]


def samples(n: int, seed: int, domain: Domain = "a") -> Iterator[Sample]:
    """``n`` random attribute combinations of ``domain``; the same seed gives the same list."""
    rng = random.Random(f"{domain}:{seed}")
    for _ in range(n):
        yield Sample(
            shape=rng.choice(SHAPES),
            colour=rng.choice(sorted(COLOURS[domain])),
            size=rng.choice(sorted(SIZES)),
            position=rng.choice(sorted(POSITIONS)),
            background=rng.choice(sorted(BACKGROUNDS[domain])),
            fill=rng.choice(FILLS[domain]),
            seed=rng.randrange(2**31),
            domain=domain,
        )


def _placement(sample: Sample, side: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """The shape's centre and half-size in pixels, drawn as ``render`` draws them."""
    cx, cy = POSITIONS[sample.position]
    jitter = rng.uniform(-0.04, 0.04, 2)
    r = SIZES[sample.size] * side / 2 * rng.uniform(0.9, 1.1)
    return (cx + jitter[0]) * side, (cy + jitter[1]) * side, r


def shape_box(sample: Sample, side: int = 64) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom, in pixels) the shape of ``render(sample, side)``
    is drawn in: what a map of where a picture matches can be checked against."""
    rng = np.random.default_rng(sample.seed)
    noise = 18.0 if sample.domain == "b" else 0.0
    rng.normal(0.0, noise, (side, side, 3))  # the background's draws, as render takes them
    x, y, r = _placement(sample, side, rng)
    return x - r, y - r, x + r, y + r


def render(sample: Sample, side: int = 64) -> Image.Image:
    domain = sample.domain
    rng = np.random.default_rng(sample.seed)
    bg = np.array(BACKGROUNDS[domain][sample.background], dtype=np.float32)
    noise = 18.0 if domain == "b" else 0.0  # domain b: noisy backgrounds
    pixels = bg + rng.normal(0.0, noise, (side, side, 3)).astype(np.float32)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    x, y, r = _placement(sample, side, rng)
    if sample.shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    elif sample.shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=255)
    elif sample.shape == "triangle":
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=255)
    else:  # cross
        w = r / 3
        draw.rectangle([x - r, y - w, x + r, y + w], fill=255)
        draw.rectangle([x - w, y - r, x + w, y + r], fill=255)
    colour = Image.new("RGB", (side, side), COLOURS[domain][sample.colour])
    if sample.fill != "plain":
        pattern = Image.new("L", (side, side), 0)
        pd = ImageDraw.Draw(pattern)
        step = max(3, side // 10)
        if sample.fill == "striped":
            for k in range(-side, 2 * side, 2 * step):
                pd.line([(k, 0), (k + side, side)], fill=255, width=step)
        else:
            for px in range(0, side, step):
                for py in range(0, side, step):
                    pd.ellipse([px, py, px + 0.7 * step, py + 0.7 * step], fill=255)
        mask = Image.fromarray(
            (np.asarray(mask) // 255 * np.asarray(pattern)).astype(np.uint8), "L"
        )
    img.paste(colour, mask=mask)
    return img


def as_file(image: Image.Image) -> Callable[[], bytes]:
    """A loader of ``image`` as a PNG file's bytes: what evaluation reads of a pair."""
    out = io.BytesIO()
    image.save(out, "PNG")
    data = out.getvalue()
    return lambda: data


def write_dataset(
    root: Path,
    name: str,
    n: int,
    seed: int = 0,
    domain: Domain = "a",
    side: int = 64,
    varied: bool = True,
) -> Path:
    """Write ``n`` PNGs and a JSONL manifest (``image``, ``text``, ``id`` and the attributes)
    under ``root/name``; returns the manifest's path. Paths in it are relative to ``root``.
    ``varied`` mixes shorter true captions in with the full ones."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = root / f"{name}.jsonl"
    with manifest.open("w") as f:
        for i, sample in enumerate(samples(n, seed, domain)):
            rel = f"{name}/{i:06d}.png"
            render(sample, side).save(root / rel)
            attrs = {k: v for k, v in asdict(sample).items() if k not in ("seed", "domain")}
            row = {
                "id": f"{name}-{i:06d}",
                "image": rel,
                "text": sample.variant(i) if varied else sample.caption,
                "domain": domain,
                **attrs,
            }
            f.write(json.dumps(row) + "\n")
    return manifest


# Named pictures for a first session by hand (the README's examples use them).
NAMED_SAMPLES = {
    "red-circle": Sample("circle", "red", "small", "center", "white", "plain", 11),
    "blue-square": Sample("square", "blue", "large", "top left", "grey", "plain", 12),
    "green-cross": Sample("cross", "green", "large", "center", "black", "plain", 13),
    "yellow-triangle": Sample("triangle", "yellow", "small", "bottom right", "white", "plain", 14),
}


def write_samples(folder: Path, side: int = 64) -> list[Path]:
    """Write the named pictures (``red-circle.png``, ...) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, sample in NAMED_SAMPLES.items():
        path = folder / f"{name}.png"
        render(sample, side).save(path)
        paths.append(path)
    return paths
