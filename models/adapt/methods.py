"""The adaptation methods, their settings and what they report while they run.

Importing this module needs no torch (the CLI lists the methods from here); the methods
themselves live in ``contrastive``, ``linear``, ``subspace``, ``cca``, ``adversarial`` and
``distill``, and ``run`` picks one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

from models.errors import InvalidParameters, TrainingDiverged

MIN_PAIRS = 4  # training pairs below which no method is worth running


@dataclass(frozen=True)
class ContrastiveConfig:
    epochs: int = 5
    batch_size: int = 64  # micro-batch that fits in memory
    accumulate: int = 1  # micro-batches per optimiser step: effective batch = product
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 10
    lock_image: bool = False  # LiT: train the text tower only
    freeze_image_blocks: int = 0
    freeze_text_blocks: int = 0
    seed: int = 0


@dataclass(frozen=True)
class LinearConfig:
    epochs: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class SubspaceConfig:
    dims: int = 32  # size of the aligned subspaces


@dataclass(frozen=True)
class AdversarialConfig:
    epochs: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 1024
    adversary_weight: float = 0.3  # the reversed gradient's weight once warmed up
    warmup_fraction: float = 0.3  # of the training over which that weight rises from 0
    hidden: int = 64  # the discriminator's hidden units
    seed: int = 0

    def __post_init__(self) -> None:
        ok = (
            1 <= self.epochs <= 100_000
            and self.lr > 0
            and self.batch_size >= 2
            and 0 <= self.adversary_weight <= 10
            and 0 <= self.warmup_fraction <= 1
            and 1 <= self.hidden <= 4096
        )
        if not ok:
            raise TypeError(
                "epochs 1..100000, lr > 0, batch_size >= 2, adversary_weight 0..10,"
                " warmup_fraction 0..1, hidden 1..4096"
            )


@dataclass(frozen=True)
class CcaConfig:
    dims: int = 32  # canonical components kept
    reg: float = 0.01  # ridge on each covariance, as a fraction of its mean variance
    power: float = 0.0  # each component scaled by its correlation to this power

    def __post_init__(self) -> None:
        if self.dims < 1 or self.reg < 0 or not 0 <= self.power <= 8:
            raise TypeError("dims >= 1, reg >= 0 and 0 <= power <= 8")


@dataclass(frozen=True)
class DistillConfig:
    # The student's text tower; 0: derived from the teacher's (half its width, a third of
    # its layers, heads of 32 or more units, the teacher's context length).
    width: int = 0
    layers: int = 0
    heads: int = 0
    context_length: int = 0
    loss: str = "cosine"  # or "mse": the student's raw output against the teacher's vector
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    # The gate: the student's mean Recall@K may fall this many points below its teacher's,
    # and it must encode texts faster.
    max_recall_drop: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        ok = (
            (self.width == 0 or 8 <= self.width <= 4096)
            and 0 <= self.layers <= 48
            and 0 <= self.heads <= 64
            and (self.context_length == 0 or 4 <= self.context_length <= 512)
            and self.loss in ("cosine", "mse")
            and 1 <= self.epochs <= 10_000
            and self.batch_size >= 2
            and 0 < self.lr <= 1
            and self.weight_decay >= 0
            and self.warmup_steps >= 0
            and 0 <= self.max_recall_drop <= 100
        )
        if not ok:
            raise TypeError(
                "width 0 or 8..4096, layers 0..48, heads 0..64, context_length 0 or 4..512,"
                " loss cosine or mse, epochs 1..10000, batch_size >= 2, 0 < lr <= 1,"
                " max_recall_drop 0..100"
            )
        if self.width and self.heads and self.width % self.heads:
            raise TypeError(f"width {self.width} is not a multiple of heads {self.heads}")


@dataclass(frozen=True)
class TrainStep:
    epoch: int
    step: int
    steps: int
    loss: float
    lr: float
    samples_per_second: float


StepCallback = Callable[[TrainStep], None]
StopCheck = Callable[[], bool]


class TrainingStopped(Exception):
    """``should_stop`` said so (a cancelled job)."""


def finite_loss(loss: float, step: int, lr: float) -> float:
    """``loss``, or ``TrainingDiverged`` when it is NaN or infinite: raised before the
    step's gradients reach the weights, so nothing non-finite is ever saved."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged: the loss was {loss} at step {step + 1} (learning rate "
            f"{lr:g}); try a lower lr"
        )
    return loss


Config = (
    ContrastiveConfig
    | LinearConfig
    | SubspaceConfig
    | CcaConfig
    | AdversarialConfig
    | DistillConfig
)
# name -> settings; a method that trains a feature map over a frozen base is in MAPS.
METHODS: dict[str, type[Config]] = {
    "contrastive": ContrastiveConfig,
    "linear": LinearConfig,
    "subspace_alignment": SubspaceConfig,
    "cca": CcaConfig,
    "adversarial": AdversarialConfig,
    "distill": DistillConfig,
}
MAPS = frozenset({"linear", "subspace_alignment", "cca", "adversarial"})
# Methods that take unpaired images and texts of a target domain (``target_source``).
TARGETED = frozenset({"adversarial", "subspace_alignment"})
# Methods whose version keeps its base's embedding space: only queries are encoded anew.
QUERY_SIDE = frozenset({"distill"})


def check_hyperparameters(method: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The method's full configuration, or ``InvalidParameters`` naming what is wrong."""
    if method not in METHODS:
        raise InvalidParameters(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    config = METHODS[method]
    known = {f.name: f.type for f in fields(config)}
    unknown = sorted(set(hyperparameters) - set(known))
    if unknown:
        raise InvalidParameters(
            f"{method} takes no {', '.join(unknown)}; it takes {', '.join(known)}"
        )
    for name, value in hyperparameters.items():
        _check_value(method, name, value, known[name])
    try:
        return asdict(config(**hyperparameters))
    except TypeError as exc:
        raise InvalidParameters(f"bad hyperparameters for {method}: {exc}") from exc


# What a request may set, by name: (lowest, highest, lowest excluded). Bounded so that one
# request cannot ask for a week of training or a learning rate no optimiser survives.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "epochs": (1, 10_000, False),
    "batch_size": (2, 65_536, False),
    "accumulate": (1, 1_024, False),
    "lr": (0, 1, True),
    "weight_decay": (0, 10, False),
    "warmup_steps": (0, 1_000_000, False),
    "freeze_image_blocks": (0, 1_000, False),
    "freeze_text_blocks": (0, 1_000, False),
    "seed": (0, 2**32 - 1, False),
    "dims": (1, 4_096, False),
    "reg": (0, 1e6, False),
    "power": (0, 8, False),
    "adversary_weight": (0, 10, False),
    "warmup_fraction": (0, 1, False),
    "hidden": (1, 4_096, False),
    "width": (0, 4_096, False),
    "layers": (0, 48, False),
    "heads": (0, 64, False),
    "context_length": (0, 512, False),
    "max_recall_drop": (0, 100, False),
}


def _check_value(method: str, name: str, value: Any, kind: Any) -> None:
    """One hyperparameter of the type its field declares (a boolean is not a number, a
    float not an integer), finite and within its range."""
    kind = str(kind)
    where = f"{method}: {name}"
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidParameters(f"{where} must be true or false, got {value!r}")
        return
    if kind == "str":
        if not isinstance(value, str):
            raise InvalidParameters(f"{where} must be a string, got {value!r}")
        return
    numbers = (int,) if kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, numbers):
        raise InvalidParameters(
            f"{where} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}"
        )
    if not math.isfinite(value):
        raise InvalidParameters(f"{where} must be finite, got {value!r}")
    low, high, open_low = _RANGES.get(name, (-math.inf, math.inf, False))
    if value > high or value < low or (open_low and value == low):
        lowest = f"above {low:g}" if open_low else f"at least {low:g}"
        raise InvalidParameters(f"{where} must be {lowest} and at most {high:g}, got {value!r}")
