"""The ``BackendFactory`` for FAISS (``index.vectors.faiss_backend`` holds the index itself)."""

from __future__ import annotations

from typing import Any

import numpy as np

from index.vectors.faiss_backend import FaissIndex, build_index, gpu_count, new_gpu_resources
from index.vectors.faiss_specs import parse_spec


class FaissBackends:
    """The ``BackendFactory`` for FAISS: every index on the GPU when asked (or, by default,
    when FAISS sees one), with one ``nprobe`` for IVF indexes (None: from nlist)."""

    shared = False

    def __init__(self, use_gpu: bool | None = None, nprobe: int | None = None) -> None:
        want_gpu = gpu_count() > 0 if use_gpu is None else use_gpu
        self.gpu_resources: Any = new_gpu_resources() if want_gpu else None
        self.nprobe = nprobe

    def check(self, d: int, spec: str | None) -> str:
        normal = parse_spec(spec, d)
        build_index(d, normal)  # raises InvalidIndexSpec before anything is written
        return normal

    def attach(self, db: Any) -> None:
        pass  # FAISS keeps vectors only

    def check_items(self, items: Any) -> None:
        pass

    def prune(self, keys: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def create(self, d: int, spec: str, key: str = "") -> FaissIndex:
        return FaissIndex(d, spec, gpu_resources=self.gpu_resources, nprobe=self.nprobe)

    def build(
        self, d: int, spec: str, labels: np.ndarray, xb: np.ndarray, key: str = ""
    ) -> FaissIndex:
        return FaissIndex.build(
            d, spec, labels, xb, gpu_resources=self.gpu_resources, nprobe=self.nprobe
        )

    def existing(self, d: int, spec: str, key: str) -> None:
        return None  # every process holds its own

    def load(self, data: bytes) -> tuple[FaissIndex, dict[str, Any]]:
        return FaissIndex.from_bytes(data, gpu_resources=self.gpu_resources, nprobe=self.nprobe)
