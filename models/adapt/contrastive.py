"""Contrastive fine-tuning of both towers: the CLIP loss with the model's learnable
temperature, AdamW with linear warm-up and cosine decay, mixed precision on CUDA, and
gradient accumulation that really enlarges the contrastive batch: the features of all
micro-batches are computed first without gradients, then each micro-batch is recomputed
with gradients and its rows replaced, so every sample is contrasted with the whole
effective batch. The image tower can be locked (LiT) and the first N blocks of either
tower frozen.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from models.adapt.methods import (
    ContrastiveConfig,
    StepCallback,
    StopCheck,
    TrainingStopped,
    TrainStep,
    finite_loss,
)
from models.encoder import ClipEncoder


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


def warmup_cosine(step: int, total: int, warmup: int) -> float:
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
        # One kernel over all parameters instead of a loop per tensor: about 18% more
        # samples/s on two CPU cores with xmodal-tiny (BENCHMARKS.md).
        fused=device.type in ("cpu", "cuda"),
    )
    effective = cfg.batch_size * cfg.accumulate
    steps_per_epoch = max(1, len(images) // effective)
    total_steps = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: warmup_cosine(s, total_steps, cfg.warmup_steps)
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
        # Channels-last, as the encoder lays out a convolutional tower (the same for a ViT).
        batch = torch.stack(out).to(device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last)

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
            finite_loss(float(loss.detach()), step, lr)
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
