"""Feature maps: what a ``linear`` or ``subspace_alignment`` version applies to its base's
embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FeatureMap:
    """An affine map per modality applied to L2-normalised embeddings, renormalised after:
    ``y = normalise((x - mean) @ weight)``."""

    image_weight: np.ndarray
    text_weight: np.ndarray
    image_mean: np.ndarray
    text_mean: np.ndarray

    def apply(self, vectors: np.ndarray, modality: str) -> np.ndarray:
        if modality == "image":
            w, mu = self.image_weight, self.image_mean
        elif modality == "text":
            w, mu = self.text_weight, self.text_mean
        else:
            raise ValueError(f"unknown modality {modality!r}")
        y = (np.asarray(vectors, dtype=np.float32) - mu) @ w
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return np.ascontiguousarray(y / np.maximum(norms, 1e-12), dtype=np.float32)

    def save(self, path: Any) -> None:
        np.savez(
            path,
            image_weight=self.image_weight,
            text_weight=self.text_weight,
            image_mean=self.image_mean,
            text_mean=self.text_mean,
        )

    @classmethod
    def load(cls, path: Any) -> FeatureMap:
        with np.load(path) as data:
            return cls(
                data["image_weight"], data["text_weight"], data["image_mean"], data["text_mean"]
            )
