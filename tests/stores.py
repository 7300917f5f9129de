"""Shared helpers for store-level tests: unit vectors, items, a simulated process death."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from index import CollectionStore, FaissBackends, Modality, NewItem

D = 16
V = "test-model@v1"
CPU = FaissBackends(use_gpu=False)


def die(store: CollectionStore) -> None:
    """What the kernel does to a store whose process dies: its data-dir lock goes (and
    nothing is closed or snapshotted)."""
    os.close(store._lock)


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` random L2-normalised float32 vectors, the same for the same seed."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def normalised(n: int, seed: int) -> np.ndarray:
    return unit_vectors(n, D, seed)


def items(n: int, modality: Modality = Modality.IMAGE, start: int = 0) -> list[NewItem]:
    out = []
    for i in range(start, start + n):
        meta = {"n": i, "parity": "even" if i % 2 == 0 else "odd", "big": i >= 50}
        if modality is Modality.IMAGE:
            out.append(
                NewItem(
                    f"img-{i}",
                    modality,
                    meta,
                    content=f"bytes {i}".encode(),
                    media_type="image/png",
                )
            )
        else:
            out.append(NewItem(f"txt-{i}", modality, meta, text=f"caption {i}"))
    return out


def top_ids(
    store: CollectionStore, name: str, target: Modality, xq: np.ndarray, k: int = 5, **kw: Any
) -> list[list[str]]:
    return [
        [h.id for h in hits] for hits in store.search(name, target, xq, k, model_version=V, **kw)
    ]
