"""Synthetic train and held-out splits shared by the fine-tuning and alignment tests."""

from __future__ import annotations

from PIL import Image

from models.synthetic import render, samples

SEEDS = (0, 1, 2)


Split = tuple[list[Image.Image], list[str], list[Image.Image], list[str]]


def split(seed: int, n_train: int = 640, n_test: int = 200) -> Split:
    train = list(samples(n_train, seed, "a"))
    test = list(samples(n_test, 1000 + seed, "a"))
    return (
        [render(s, side=48) for s in train],
        [s.caption for s in train],
        [render(s, side=48) for s in test],
        [s.caption for s in test],
    )
