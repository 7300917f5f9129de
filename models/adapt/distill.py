"""``distill``: train a smaller text tower (the student) to map captions to the vectors the
serving model's text tower (the teacher) gives them, so queries can be encoded by the
student and searched against the vectors already stored.

The student is an OpenCLIP ``TextTransformer`` of the teacher's kind, narrower and
shallower (``DistillConfig``). Its token and position embeddings start as the teacher's
projected onto their top principal directions, so tokens the captions never show still
land near where the teacher puts them; everything else starts at random. The loss is the
cosine distance to the teacher's vector (or the squared error of the raw output against
it), under AdamW with warm-up and cosine decay.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.adapt.contrastive import warmup_cosine
from models.adapt.methods import (
    DistillConfig,
    StepCallback,
    StopCheck,
    TrainingStopped,
    TrainStep,
    finite_loss,
)
from models.encoder import ClipEncoder, seeded
from models.errors import InvalidParameters
from models.student import Student, teacher_text_cfg


def student_cfg(
    model_name: str, config: DistillConfig, available_bytes: int | None = None
) -> dict[str, Any]:
    """The student's text tower settings: the teacher's, with the shape ``config`` asks for
    (0: derived from the teacher's), or ``InvalidParameters`` naming what does not fit: a
    student larger than its teacher's text tower, or (given ``available_bytes``) one whose
    training would not fit in the memory there is."""
    teacher = teacher_text_cfg(model_name)
    t_width, t_layers = int(teacher["width"]), int(teacher["layers"])
    t_context = int(teacher.get("context_length", 77))
    width = config.width or max(8, t_width // 2)
    heads = config.heads or max(1, width // 64)
    if width % heads:
        width = max(heads, width - width % heads)
    layers = config.layers or max(1, t_layers // 3)
    context = config.context_length or t_context
    if context > t_context:
        raise InvalidParameters(
            f"context_length {context} is longer than the teacher's ({t_context})"
        )
    for what, mine, theirs in (("width", width, t_width), ("layers", layers, t_layers)):
        if mine > theirs:
            raise InvalidParameters(
                f"distill: {what} {mine} is larger than the teacher's text tower ({theirs}): "
                "a student is smaller than its teacher"
            )
    if width // heads < 8:
        raise InvalidParameters(f"distill: {heads} heads of width {width} are under 8 wide each")
    cfg = {**teacher, "width": width, "heads": heads, "layers": layers, "context_length": context}
    need = training_bytes(cfg)
    if available_bytes is not None and need > available_bytes:
        raise InvalidParameters(
            f"distill: training this student takes about {need / 2**30:.1f} GiB and "
            f"{available_bytes / 2**30:.1f} GiB are free: choose a smaller width or fewer layers"
        )
    return cfg


def parameters(cfg: dict[str, Any]) -> int:
    """About how many parameters a text transformer of ``cfg`` has: 12 width^2 per layer
    (attention and a 4x MLP), the token and position embeddings."""
    width, layers = int(cfg["width"]), int(cfg["layers"])
    vocab, context = int(cfg.get("vocab_size", 49408)), int(cfg.get("context_length", 77))
    return layers * 12 * width * width + (vocab + context) * width


def training_bytes(cfg: dict[str, Any]) -> int:
    """Memory to train a student of ``cfg`` with AdamW in float32: weights, gradients and
    two moments (16 bytes a parameter), and as much again for activations and workspace."""
    return 32 * parameters(cfg)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now (None where that cannot be told)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _top_directions(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """(columns, k): the top-k right singular vectors of ``matrix``."""
    _, _, vt = torch.linalg.svd(matrix.float(), full_matrices=False)
    return vt[:k].T


@torch.no_grad()
def _start_from_teacher(student: Student, teacher: ClipEncoder) -> None:
    """Token and position embeddings projected from the teacher's (left at random where
    the two towers do not line up: another vocabulary, a wider student)."""
    text = getattr(teacher.model, "text", teacher.model)  # CustomTextCLIP keeps it apart
    tokens = getattr(text, "token_embedding", None)
    positions = getattr(text, "positional_embedding", None)
    mine = student.module
    if tokens is None or positions is None or tokens.weight.shape[0] != mine.vocab_size:
        return
    width = mine.token_embedding.weight.shape[1]
    if width > tokens.weight.shape[1]:
        return
    project = _top_directions(tokens.weight.detach().cpu(), width)
    mine.token_embedding.weight.copy_(tokens.weight.detach().cpu().float() @ project)
    context = mine.positional_embedding.shape[0]
    mine.positional_embedding.copy_(positions.detach().cpu().float()[:context] @ project)


def fit_distill(
    teacher: ClipEncoder,
    texts: Sequence[str],
    targets: np.ndarray,
    config: DistillConfig,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> Student:
    """A student trained on ``texts`` to reproduce ``targets`` (the teacher's vectors for
    them, row i for text i); ``teacher`` is the OpenCLIP model it starts from."""
    if len(texts) != len(targets) or len(texts) < 2:
        raise ValueError("need at least two texts, one teacher vector each")
    cfg = student_cfg(teacher.model_name, config)
    with seeded(config.seed):
        student = Student(teacher.model_name, int(targets.shape[1]), cfg)
    _start_from_teacher(student, teacher)
    device = teacher.device
    student.to(device)
    module = student.module.train()
    tokens = student.tokenize(texts)
    goal = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimiser = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    steps_per_epoch = math.ceil(len(texts) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: warmup_cosine(s, total, config.warmup_steps)
    )
    generator = torch.Generator().manual_seed(config.seed)
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(texts), generator=generator)
        for s in range(steps_per_epoch):
            if should_stop is not None and should_stop():
                raise TrainingStopped
            started = time.perf_counter()
            batch = order[s * config.batch_size : (s + 1) * config.batch_size]
            out = module(tokens[batch].to(device)).float()
            want = goal[batch].to(device)
            if config.loss == "cosine":
                loss = 1 - (F.normalize(out, dim=-1) * want).sum(-1).mean()
            else:
                loss = ((out - want) ** 2).sum(-1).mean()
            lr = float(optimiser.param_groups[0]["lr"])
            finite_loss(float(loss.detach()), step, lr)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            if on_step is not None:
                on_step(
                    TrainStep(
                        epoch=epoch,
                        step=step,
                        steps=total,
                        loss=float(loss.detach()),
                        lr=lr,
                        samples_per_second=len(batch) / (time.perf_counter() - started),
                    )
                )
            step += 1
    module.eval()
    return student


def text_speed(
    encode: Callable[[Sequence[str]], np.ndarray],
    texts: Sequence[str],
    run_model: Callable[..., Any],
    batch: int = 256,
    rounds: int = 3,
    singles: int = 20,
) -> dict[str, float]:
    """Texts per second in batches of ``batch`` and the latency of one text alone (ms),
    medians over ``rounds`` batches and ``singles`` single texts, each a model call."""
    if not texts:
        raise ValueError("no texts to time")
    batch_texts = [texts[i % len(texts)] for i in range(batch)]
    run_model(encode, batch_texts[:8])  # warm-up: first-call allocations are not the speed
    per_batch = []
    for _ in range(rounds):
        started = time.perf_counter()
        run_model(encode, batch_texts)
        per_batch.append(time.perf_counter() - started)
    single = []
    for i in range(singles):
        started = time.perf_counter()
        run_model(encode, [texts[i % len(texts)]])
        single.append(time.perf_counter() - started)
    return {
        "texts_per_second": round(batch / statistics.median(per_batch), 1),
        "single_text_ms": round(1000 * statistics.median(single), 3),
    }
