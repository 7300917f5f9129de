"""Versions built on another version: one delegating base, and the mapped versions.

A ``DerivedEncoder`` forwards the whole ``Encoder`` contract to the encoder it is built on
(``inner``); a derived version overrides only what it changes. A mapped version (a
``linear`` or ``subspace_alignment`` map) changes the vectors; a distilled query encoder
(``models.student``) changes the queries only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from models.encoder import ClipEncoder, Encoder
from models.feature_map import FeatureMap


class DerivedEncoder:
    """Everything as ``inner`` does it, under its own ``version`` (its own embedding space
    unless a subclass says otherwise)."""

    def __init__(self, inner: Encoder, version: str) -> None:
        self.inner = inner
        self.version = version
        self.model_name = inner.model_name
        self.dim = inner.dim
        self.device = inner.device
        self.pixels = inner.pixels

    @property
    def space(self) -> str:
        return self.version

    @property
    def separate_queries(self) -> bool:
        return self.inner.separate_queries

    @property
    def device_name(self) -> str:
        return self.inner.device_name

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return self.inner.preprocess_image(image)

    def encode_image_tensors(self, pixels: Sequence[torch.Tensor] | torch.Tensor) -> np.ndarray:
        return self.inner.encode_image_tensors(pixels)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_image_tensors([self.preprocess_image(im) for im in images])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.encode_texts(texts)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.encode_queries(texts)

    def count_tokens(self, texts: Sequence[str]) -> int:
        return self.inner.count_tokens(texts)


class MappedEncoder(DerivedEncoder):
    """``inner`` followed by a feature map: its preprocessing and model, outputs mapped
    and renormalised."""

    def __init__(self, inner: Encoder, feature_map: FeatureMap, version: str) -> None:
        super().__init__(inner, version)
        self.feature_map = feature_map

    def encode_image_tensors(self, pixels: Sequence[torch.Tensor] | torch.Tensor) -> np.ndarray:
        return self.feature_map.apply(self.inner.encode_image_tensors(pixels), "image")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.feature_map.apply(self.inner.encode_texts(texts), "text")

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.feature_map.apply(self.inner.encode_queries(texts), "text")


def clip_of(encoder: Encoder) -> ClipEncoder:
    """The OpenCLIP encoder at the bottom of a chain of derived versions: what contrastive
    training tunes and a student starts from. ``TypeError`` when there is none."""
    while isinstance(encoder, DerivedEncoder):
        encoder = encoder.inner
    if not isinstance(encoder, ClipEncoder):
        raise TypeError(f"{encoder.version} has no OpenCLIP model to train")
    return encoder
