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

from models.adapt.run import RunModel, direct
from models.derived import MappedEncoder
from models.encoder import Encoder
from models.stored import encode_contents


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


BytesLoader = Callable[[StoredContent], bytes]


def reembed(
    items: Sequence[StoredContent],
    current: Encoder,
    new: Encoder,
    load_bytes: BytesLoader,
    max_pixels: int,
    run_model: RunModel = direct,
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """The vectors of ``items`` under ``new`` (they are under ``current`` now), and for each
    the unmapped vector to keep beside it (None when ``new`` maps nothing).
    ``load_bytes(item)`` gives a stored image's bytes back, or raises saying why it
    cannot; they are encoded the way uploads and index jobs encode (``models.stored``)."""
    # Compared by embedding space: a distilled version writes its teacher's vectors.
    cur_base = current.inner.space if isinstance(current, MappedEncoder) else None

    def raw_kept() -> np.ndarray | None:
        kept = [it.raw_embedding for it in items]
        if any(v is None for v in kept):
            return None
        return np.stack([v for v in kept if v is not None])

    if isinstance(new, MappedEncoder):
        base = new.inner
        raw = None
        if base.space == current.space:
            raw = np.stack([it.embedding for it in items])
        elif base.space == cur_base:
            raw = raw_kept()
        if raw is None:
            raw = encode_contents(items, base, load_bytes, max_pixels, run_model)
        out = np.empty_like(raw)
        for modality in ("image", "text"):
            rows = [i for i, it in enumerate(items) if it.modality == modality]
            if rows:
                out[rows] = new.feature_map.apply(raw[rows], modality)
        return out, list(raw)
    vectors = raw_kept() if new.space == cur_base else None
    if vectors is None:
        vectors = encode_contents(items, new, load_bytes, max_pixels, run_model)
    return vectors, [None] * len(items)
