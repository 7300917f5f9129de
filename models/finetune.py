"""Adapting the encoders to a user's own image-caption pairs.

Two methods live here; both return something the service can version and serve:

- ``train_contrastive``: the CLIP loss on both towers with the model's learnable
  temperature, AdamW with linear warm-up and cosine decay, mixed precision on CUDA, and
  gradient accumulation that really enlarges the contrastive batch: the features of all
  micro-batches are computed first without gradients, then each micro-batch is recomputed
  with gradients and its rows replaced, so every sample is contrasted with the whole
  effective batch. The image tower can be locked (LiT) and the first N blocks of either
  tower frozen.
- ``fit_linear``: both towers frozen; one linear map per modality, learnt with the same
  loss on cached embeddings. Seconds, not minutes, and applying it to stored vectors needs
  no re-encoding.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.encoder import ClipEncoder
from models.feature_map import FeatureMap


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of normalised, paired features."""
    logits = logit_scale * image_features @ text_features.T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _image_stages(visual: Any) -> tuple[list[Any], list[Any]]:
    """The image tower's stem (modules and bare parameters) and its blocks in order, for a
    VisionTransformer or a ModifiedResNet (the RN50 family and ``xmodal-tiny``)."""
    if hasattr(visual, "transformer"):
        stem = [visual.conv1, visual.ln_pre, visual.class_embedding, visual.positional_embedding]
        return stem, list(visual.transformer.resblocks)
    stem = [getattr(visual, f"{kind}{i}") for i in (1, 2, 3) for kind in ("conv", "bn")]
    return stem, [visual.layer1, visual.layer2, visual.layer3, visual.layer4]


def _lock(part: Any) -> None:
    """No gradients, and frozen statistics: a locked BatchNorm must not drift either."""
    part.requires_grad_(False)
    if isinstance(part, torch.nn.Module):
        part.eval()


def _freeze(model: Any, cfg: ContrastiveConfig) -> None:
    if cfg.lock_image:
        _lock(model.visual)
    elif cfg.freeze_image_blocks:
        stem, blocks = _image_stages(model.visual)
        for part in stem + blocks[: cfg.freeze_image_blocks]:
            _lock(part)
    if cfg.freeze_text_blocks:
        for block in list(model.transformer.resblocks)[: cfg.freeze_text_blocks]:
            _lock(block)
        _lock(model.token_embedding)
        _lock(model.positional_embedding)


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_contrastive(
    encoder: ClipEncoder,
    images: Sequence[Image.Image],
    texts: Sequence[str],
    cfg: ContrastiveConfig,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
) -> torch.nn.Module:
    """Fine-tune a copy of ``encoder``'s model on the pairs (images[i], texts[i])."""
    if len(images) != len(texts) or len(images) < 2:
        raise ValueError("need at least two image-caption pairs, as many images as texts")
    device = encoder.device
    model = copy.deepcopy(encoder.model).to(device).train()
    _freeze(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("everything is frozen: nothing to train")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]  # biases, norms, the temperature
    optimiser = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    effective = cfg.batch_size * cfg.accumulate
    steps_per_epoch = max(1, len(images) // effective)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: _schedule(s, total_steps, cfg.warmup_steps)
    )
    autocast_dtype = encoder.autocast_dtype
    scaler = torch.amp.GradScaler("cuda", enabled=autocast_dtype == torch.float16)
    generator = torch.Generator().manual_seed(cfg.seed)
    pixels_cache: dict[int, torch.Tensor] = {}

    def pixels(indices: list[int]) -> torch.Tensor:
        out = []
        for i in indices:
            if i not in pixels_cache:
                pixels_cache[i] = encoder.preprocess_image(images[i])
            out.append(pixels_cache[i])
        return torch.stack(out).to(device, non_blocking=True)

    def autocast() -> Any:
        if autocast_dtype is None:
            return torch.autocast(device_type="cpu", enabled=False)
        return torch.autocast(device_type=device.type, dtype=autocast_dtype)

    step = 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(images), generator=generator).tolist()
        for s in range(steps_per_epoch):
            if should_stop is not None and should_stop():
                raise TrainingStopped
            started = time.perf_counter()
            batch = order[s * effective : (s + 1) * effective]
            micro = [batch[i : i + cfg.batch_size] for i in range(0, len(batch), cfg.batch_size)]
            inputs = [
                (pixels(m), encoder.tokenize([texts[i] for i in m]).to(device)) for m in micro
            ]
            optimiser.zero_grad(set_to_none=True)
            if len(micro) == 1:
                with autocast():
                    img = F.normalize(model.encode_image(inputs[0][0]), dim=-1)
                    txt = F.normalize(model.encode_text(inputs[0][1]), dim=-1)
                    loss = clip_loss(img.float(), txt.float(), model.logit_scale.exp())
                scaler.scale(loss).backward()
            else:
                # Features of the whole effective batch without gradients first ...
                with torch.no_grad(), autocast():
                    all_img = [
                        F.normalize(model.encode_image(p), dim=-1).float() for p, _ in inputs
                    ]
                    all_txt = [F.normalize(model.encode_text(t), dim=-1).float() for _, t in inputs]
                # ... then each micro-batch with gradients, contrasted against all of it.
                for j, (p, t) in enumerate(inputs):
                    with autocast():
                        img = F.normalize(model.encode_image(p), dim=-1).float()
                        txt = F.normalize(model.encode_text(t), dim=-1).float()
                        imgs = torch.cat(all_img[:j] + [img] + all_img[j + 1 :])
                        txts = torch.cat(all_txt[:j] + [txt] + all_txt[j + 1 :])
                        loss = clip_loss(imgs, txts, model.logit_scale.exp())
                    scaler.scale(loss / len(micro)).backward()
            lr = float(optimiser.param_groups[0]["lr"])  # the rate this step used
            scaler.step(optimiser)
            scaler.update()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))  # as CLIP does
            if on_step is not None:
                on_step(
                    TrainStep(
                        epoch=epoch,
                        step=step,
                        steps=total_steps,
                        loss=float(loss.detach()),
                        lr=lr,
                        samples_per_second=len(batch) / (time.perf_counter() - started),
                    )
                )
            step += 1
    return model.eval()


# --- linear maps on frozen embeddings ------------------------------------------------------------
@dataclass(frozen=True)
class LinearConfig:
    epochs: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 1024
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_linear(
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    cfg: LinearConfig,
    on_step: StepCallback | None = None,
) -> FeatureMap:
    """Learn one d x d map per modality with the CLIP loss on cached, paired embeddings; the
    towers stay frozen. Each modality is standardised first (centred on its training mean,
    each dimension scaled by its spread), so the map starts from the identity on features
    whose differences are not lost in a shared offset: CLIP's modality gap, or the near-
    constant embeddings of an untrained tower."""
    if image_vectors.shape != text_vectors.shape:
        raise ValueError("image and text vectors must be paired row for row")
    torch.manual_seed(cfg.seed)
    mu_img, sd_img = _moments(image_vectors)
    mu_txt, sd_txt = _moments(text_vectors)
    x = torch.from_numpy((np.asarray(image_vectors, dtype=np.float32) - mu_img) / sd_img)
    t = torch.from_numpy((np.asarray(text_vectors, dtype=np.float32) - mu_txt) / sd_txt)
    d = x.shape[1]
    w_img = torch.nn.Parameter(torch.eye(d))
    w_txt = torch.nn.Parameter(torch.eye(d))
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    optimiser = torch.optim.AdamW(
        [w_img, w_txt, log_scale], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    n = len(x)
    steps = cfg.epochs * max(1, math.ceil(n / cfg.batch_size))
    step = 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            started = time.perf_counter()
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2:
                continue
            img = F.normalize(x[idx] @ w_img, dim=-1)
            txt = F.normalize(t[idx] @ w_txt, dim=-1)
            loss = clip_loss(img, txt, log_scale.clamp(0, math.log(100)).exp())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if on_step is not None:
                on_step(
                    TrainStep(
                        epoch,
                        step,
                        steps,
                        float(loss.detach()),
                        cfg.lr,
                        len(idx) / (time.perf_counter() - started),
                    )
                )
            step += 1
    # (v - mu) / sd @ W == (v - mu) @ (diag(1 / sd) @ W): the scaling folds into the weight.
    return FeatureMap(
        (w_img.detach().numpy() / sd_img[:, None]).astype(np.float32),
        (w_txt.detach().numpy() / sd_txt[:, None]).astype(np.float32),
        mu_img,
        mu_txt,
    )


def _moments(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vectors, dtype=np.float32)
    mean = v.mean(axis=0)
    spread = v.std(axis=0)
    return mean.astype(np.float32), np.maximum(spread, 1e-6 * max(float(spread.max()), 1e-12))


# --- subspace alignment (unsupervised) ---------------------------------------------------------
@dataclass(frozen=True)
class SubspaceConfig:
    dims: int = 32  # size of the aligned subspaces

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:k].T.astype(np.float32)


def fit_subspace_alignment(
    image_vectors: np.ndarray, text_vectors: np.ndarray, cfg: SubspaceConfig
) -> FeatureMap:
    """Subspace alignment (Fernando et al., ICCV 2013) between the modalities, from unpaired
    images and texts of the target domain: the image PCA basis Xs is aligned onto the text
    basis Xt by M = Xs^T Xt; images map to (x - mu_s) Xs M, texts to (t - mu_t) Xt. Both are
    expressed back in the d-dimensional space (times Xt^T), which keeps inner products."""
    k = min(cfg.dims, image_vectors.shape[1], len(image_vectors) - 1, len(text_vectors) - 1)
    if k < 1:
        raise ValueError("subspace alignment needs at least two images and two texts")
    mu_s, xs = _pca(np.asarray(image_vectors, dtype=np.float32), k)
    mu_t, xt = _pca(np.asarray(text_vectors, dtype=np.float32), k)
    m = xs.T @ xt
    return FeatureMap(xs @ m @ xt.T, xt @ xt.T, mu_s, mu_t)
