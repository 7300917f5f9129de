"""Linear maps on frozen embeddings: both towers stay as they are; one d x d map per
modality is learnt with the CLIP loss on cached, paired embeddings. Seconds, not minutes,
and applying it to stored vectors needs no re-encoding. With an ``Adversary`` (the
``adversarial`` method) a modality discriminator is trained beside the maps through a
gradient-reversal layer, so the two modalities' projections become indistinguishable."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from models.adapt.contrastive import clip_loss
from models.adapt.methods import LinearConfig, StepCallback, TrainStep, finite_loss
from models.feature_map import FeatureMap

Project = Callable[[torch.Tensor, str], torch.Tensor]  # embeddings of a modality -> mapped


class Adversary(Protocol):
    """A loss trained beside the maps (``models.adapt.adversarial``'s discriminators):
    its parameters join the optimiser, its loss the maps' loss."""

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def loss(
        self, img: torch.Tensor, txt: torch.Tensor, progress: float, project: Project
    ) -> torch.Tensor: ...


def fit_linear(
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    cfg: LinearConfig,
    on_step: StepCallback | None = None,
    adversary: Adversary | None = None,
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
    moments = {
        "image": (torch.from_numpy(mu_img), torch.from_numpy(sd_img), w_img),
        "text": (torch.from_numpy(mu_txt), torch.from_numpy(sd_txt), w_txt),
    }

    def project(vectors: torch.Tensor, modality: str) -> torch.Tensor:
        """Embeddings of the base through the current map (the adversary's other data)."""
        mu, sd, w = moments[modality]
        return F.normalize((vectors - mu) / sd @ w, dim=-1)

    params = [w_img, w_txt, log_scale]
    if adversary is not None:
        params += list(adversary.parameters())
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
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
            if adversary is not None:
                loss = loss + adversary.loss(img, txt, step / steps, project)
            finite_loss(float(loss.detach()), step, cfg.lr)
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
