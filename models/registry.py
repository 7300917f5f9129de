"""Model versions on disk: what each fine-tune produced, with its lineage and evaluation.

A version is a folder ``<root>/<slug>/`` holding ``version.json`` (base, method, data,
hyperparameters, metrics of the base and of the result, the loss curve) and its artifact:
``checkpoint.pt`` for a fine-tuned model, ``map.npz`` for a feature map over its base.
Folders are written under a temporary name and renamed, so a version is complete or
absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.adapt.methods import QUERY_SIDE
from models.errors import ModelError

RECALL_KEYS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")


class UnknownModel(ModelError):
    pass


def mean_recall(metrics: dict[str, float]) -> float:
    """The one number versions are compared by: the mean of the six Recall@K."""
    return sum(metrics[k] for k in RECALL_KEYS) / len(RECALL_KEYS)


@dataclass(frozen=True)
class ModelVersion:
    version: str
    architecture: str
    base: str
    method: str
    artifact: str  # file name inside the version folder
    data: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # "base", "result"
    history: list[dict[str, float]] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)

    @property
    def beats_base(self) -> bool:
        """The activation gate: better retrieval than the base on the evaluation pairs; for
        a query-side version (``distill``), retrieval within ``max_recall_drop`` points of
        its teacher's and faster text encoding."""
        base, result = self.metrics.get("base"), self.metrics.get("result")
        if not (base and result):
            return False
        if self.method in QUERY_SIDE:
            drop = float(self.hyperparameters.get("max_recall_drop", 0.0))
            faster = self.metrics.get("speed", {}).get("speedup", 0.0) > 1.0
            return faster and mean_recall(result) >= mean_recall(base) - drop
        return mean_recall(result) > mean_recall(base)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, version: str) -> Path:
        return self.root / _slug(version)

    def artifact_path(self, version: ModelVersion) -> Path:
        return self.folder(version.version) / version.artifact

    def save(self, version: ModelVersion, write_artifact: Callable[[Path], object]) -> ModelVersion:
        """Write the artifact (``write_artifact(path)``) and the record, all or nothing."""
        target = self.folder(version.version)
        if target.exists():
            raise FileExistsError(f"model version {version.version!r} exists already")
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".incoming-"))
        try:
            write_artifact(staging / version.artifact)
            record = staging / "version.json"
            record.write_text(json.dumps(version.as_dict(), indent=2))
            with record.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def get(self, version: str) -> ModelVersion:
        record = self.folder(version) / "version.json"
        try:
            data = json.loads(record.read_text())
        except FileNotFoundError as exc:
            raise UnknownModel(f"model version {version!r} does not exist") from exc
        if data.get("version") != version:  # another name with the same folder ("a/b", "a_b")
            raise UnknownModel(f"model version {version!r} does not exist")
        return ModelVersion(**data)

    def versions(self) -> list[ModelVersion]:
        out = []
        for record in sorted(self.root.glob("*/version.json")):
            try:
                out.append(ModelVersion(**json.loads(record.read_text())))
            except (ValueError, TypeError):
                continue  # a foreign or damaged folder is not a version
        return sorted(out, key=lambda v: v.created_at)


def _slug(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", version)
