"""The re-embedding plan of an activation: the new version's vectors for stored items, by
the cheapest route that gives exactly what encoding their content with it would.

- a map over the version that serves now: map the stored vectors;
- a map over the same base as the current map: map the stored unmapped vectors;
- the base of the current map: the stored unmapped vectors themselves;
- anything else: encode the stored texts and images again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from models.adapt.run import RunModel, direct
from models.encoder import Encoder, MappedEncoder


class StoredContent(Protocol):
    """What the plan reads of a stored item."""

    @property
    def modality(self) -> str: ...  # "image" or "text"
    @property
    def text(self) -> str | None: ...
    @property
    def embedding(self) -> np.ndarray: ...
    @property
    def raw_embedding(self) -> np.ndarray | None: ...  # before the version's map, if any


ImageLoader = Callable[[StoredContent], Image.Image]


def reembed(
    items: Sequence[StoredContent],
    current: Encoder,
    new: Encoder,
    load_image: ImageLoader,
    run_model: RunModel = direct,
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """The vectors of ``items`` under ``new`` (they are under ``current`` now), and for each
    the unmapped vector to keep beside it (None when ``new`` maps nothing).
    ``load_image(item)`` gives a stored image back, or raises saying why it cannot."""
    # Compared by embedding space: a distilled version writes its teacher's vectors.
    cur_base = current.base.space if isinstance(current, MappedEncoder) else None

    def raw_kept() -> np.ndarray | None:
        kept = [it.raw_embedding for it in items]
        if any(v is None for v in kept):
            return None
        return np.stack([v for v in kept if v is not None])

    if isinstance(new, MappedEncoder):
        base = new.base
        raw = None
        if base.space == current.space:
            raw = np.stack([it.embedding for it in items])
        elif base.space == cur_base:
            raw = raw_kept()
        if raw is None:
            raw = encode(items, base, load_image, run_model)
        out = np.empty_like(raw)
        for modality in ("image", "text"):
            rows = [i for i, it in enumerate(items) if it.modality == modality]
            if rows:
                out[rows] = new.feature_map.apply(raw[rows], modality)
        return out, list(raw)
    vectors = raw_kept() if new.space == cur_base else None
    if vectors is None:
        vectors = encode(items, new, load_image, run_model)
    return vectors, [None] * len(items)


def encode(
    items: Sequence[StoredContent],
    encoder: Encoder,
    load_image: ImageLoader,
    run_model: RunModel = direct,
) -> np.ndarray:
    """The stored content of ``items`` encoded again with ``encoder``."""
    out = np.empty((len(items), encoder.dim), dtype=np.float32)
    texts = [i for i, it in enumerate(items) if it.modality == "text"]
    images = [i for i, it in enumerate(items) if it.modality == "image"]
    if texts:
        out[texts] = run_model(encoder.encode_texts, [items[i].text or "" for i in texts])
    if images:
        pixels = [encoder.preprocess_image(load_image(items[i])) for i in images]
        out[images] = run_model(encoder.encode_image_tensors, pixels)
    return out
