"""A fake encoder for tests of the layers above the model: deterministic vectors from the
content, no weights, and a count of what it was asked to encode."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from models.pixels import PixelSpec


def _unit(seed: bytes, dim: int) -> np.ndarray:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed).digest()[:8], "little"))
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeEncoder:
    """Implements ``models.encoder.Encoder``: a text's vector is a function of the text and
    the version; an image's of its pixels and the version. Equal content, equal vector."""

    def __init__(self, version: str = "fake@v1", dim: int = 16) -> None:
        self.version = version
        self.model_name = "fake"
        self.dim = dim
        self.device = torch.device("cpu")
        self.pixels = PixelSpec(4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.calls: Counter[str] = Counter()  # "texts"/"images" -> items encoded

    separate_queries = False

    @property
    def space(self) -> str:
        return self.version

    @property
    def device_name(self) -> str:
        return "cpu"

    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(self.pixels.fit(image.convert("RGB")).copy())

    def encode_image_tensors(self, pixels: Sequence[torch.Tensor] | torch.Tensor) -> np.ndarray:
        rows = list(pixels)
        self.calls["images"] += len(rows)
        return self._stack([self.version.encode() + p.numpy().tobytes() for p in rows])

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.encode_image_tensors([self.preprocess_image(im) for im in images])

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.calls["texts"] += len(texts)
        return self._stack([f"{self.version}\0{t}".encode() for t in texts])

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_texts(texts)

    def count_tokens(self, texts: Sequence[str]) -> int:
        return sum(len(t.split()) + 2 for t in texts)

    def _stack(self, seeds: list[bytes]) -> np.ndarray:
        if not seeds:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([_unit(s, self.dim) for s in seeds])
