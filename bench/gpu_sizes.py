"""The sizes ``python -m bench.gpu`` measures at: the GPU host's, and the smoke run's."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    model: str
    batches: tuple[int, ...]
    repeats: int
    texts: int
    pairs: int
    ingest_files: int
    vectors: int
    dim: int
    queries: int
    clients: int
    seconds: float
    workers: tuple[int, ...]


SMALL_BATCH = 16
FULL = Sizes(
    "ViT-B-32", (256, 512, 1024), 10, 1024, 512, 20_000, 1_000_000, 512, 1000, 64, 15.0, (1, 4, 8)
)
SMOKE = Sizes("xmodal-tiny-vit", (8,), 2, 16, 32, 48, 5_000, 64, 50, 4, 1.0, (2,))
