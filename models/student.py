"""Distilled query encoders: a smaller OpenCLIP text tower (the student) trained to put
captions where the serving model's text tower (the teacher) puts them.

A ``DistilledEncoder`` lives in its teacher's embedding space (``space``): images and
stored texts are encoded by the teacher, exactly as before, and only queries
(``encode_queries``) by the student. So activating one needs no re-embedding, and rolling
back to the teacher none either.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.model import _build_text_tower  # OpenCLIP's own text-tower factory

from models.derived import DerivedEncoder
from models.encoder import Encoder, autocast, normalised, save_weights, tokenize
from models.errors import InvalidParameters, ModelLoadError
from models.loading import register_model_configs

STUDENT_FILE = "student.pt"


def teacher_text_cfg(model_name: str) -> dict[str, Any]:
    """The teacher architecture's text tower settings, or ``InvalidParameters`` where there
    is no OpenCLIP text transformer to shrink (a Hugging Face text tower)."""
    register_model_configs()
    cfg = open_clip.get_model_config(model_name) or {}
    text = dict(cfg.get("text_cfg") or {})
    if not text or text.get("hf_model_name"):
        raise InvalidParameters(
            f"distill needs an OpenCLIP text transformer; {model_name} has none to shrink"
        )
    return text


class Student:
    """A text tower of its own shape, its tokenizer, and the shape it was built with."""

    def __init__(self, model_name: str, embed_dim: int, text_cfg: dict[str, Any]) -> None:
        self.model_name = model_name
        self.embed_dim = embed_dim
        self.text_cfg = dict(text_cfg)
        self.module: Any = _build_text_tower(embed_dim, self.text_cfg)
        self.context_length = int(self.text_cfg["context_length"])
        self.tokenizer = open_clip.get_tokenizer(model_name, context_length=self.context_length)
        self.device = torch.device("cpu")

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def to(self, device: torch.device) -> Student:
        self.module = self.module.to(device)
        self.device = device
        return self

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, self.context_length, texts)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        tokens = self.tokenize(texts).to(self.device, non_blocking=True)
        self.module.eval()
        with torch.inference_mode(), autocast(self.device):
            features = self.module(tokens)
        return normalised(features)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Weights and shape, written atomically."""
        return save_weights(
            self.module,
            path,
            model_name=self.model_name,
            embed_dim=self.embed_dim,
            text_cfg=self.text_cfg,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device) -> Student:
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
            student = cls(record["model_name"], int(record["embed_dim"]), record["text_cfg"])
            student.module.load_state_dict(record["state_dict"])
        except Exception as exc:  # a damaged or foreign file: say which
            raise ModelLoadError(f"could not load the student text tower {path}: {exc}") from exc
        return student.to(device)


class DistilledEncoder(DerivedEncoder):
    """The teacher (``inner``) for images and stored texts, the student for queries."""

    def __init__(self, teacher: Encoder, student: Student, version: str) -> None:
        if student.embed_dim != teacher.dim:
            raise ModelLoadError(
                f"the student writes {student.embed_dim}-d vectors; its teacher {teacher.dim}-d"
            )
        super().__init__(teacher, version)
        self.student = student

    @property
    def space(self) -> str:
        return self.inner.space  # the teacher's vectors

    @property
    def separate_queries(self) -> bool:
        return True

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.student.encode(texts)


def teacher_of(encoder: Encoder) -> Encoder:
    """What a new student learns from: the serving encoder, or its teacher if it is a
    student itself (a student of a student would learn the first one's errors)."""
    return encoder.inner if isinstance(encoder, DistilledEncoder) else encoder
