"""Adversarial alignment of the modalities (as in ACMR, Wang et al., ACM MM 2017): beside
the two linear projection heads trained with the CLIP loss (``models.adapt.linear``), a
small discriminator learns to tell which modality a projected embedding came from, and a
gradient-reversal layer (Ganin and Lempitsky, ICML 2015) hands the heads the opposite of
its gradient, so the heads learn projections whose modality it cannot tell. Pairs stay
close through the CLIP loss; the two clouds of embeddings are pulled onto each other."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models.adapt.linear import Project, fit_linear
from models.adapt.methods import AdversarialConfig, LinearConfig, StepCallback
from models.feature_map import FeatureMap


class _Reverse(torch.autograd.Function):
    """Identity forward; the gradient times ``-weight`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    out: torch.Tensor = _Reverse.apply(x, weight)
    return out


class Adversary:
    """The discriminators and their loss, for ``fit_linear``: one telling the modalities
    apart, and with unpaired images and texts of a target domain, one telling the paired
    (source) embeddings from the target's."""

    def __init__(
        self,
        d: int,
        cfg: AdversarialConfig,
        target_images: np.ndarray | None = None,
        target_texts: np.ndarray | None = None,
    ) -> None:
        self.cfg = cfg
        self.modality = self._net(d)
        self.domain = self._net(d) if target_images is not None else None
        self.targets = {
            m: torch.from_numpy(np.asarray(v, dtype=np.float32))
            for m, v in (("image", target_images), ("text", target_texts))
            if v is not None and len(v)
        }
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.accuracy = float("nan")  # modality, last batch: 0.5 is a discriminator fooled

    def _net(self, d: int) -> torch.nn.Module:
        hidden = self.cfg.hidden
        return torch.nn.Sequential(
            torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        yield from self.modality.parameters()
        if self.domain is not None:
            yield from self.domain.parameters()

    def weight(self, progress: float) -> float:
        """The reversal weight: from 0 up to ``adversary_weight`` over the warm-up (the
        schedule of Ganin and Lempitsky), so the heads first learn the pairs."""
        warm = self.cfg.warmup_fraction
        p = 1.0 if warm <= 0 else min(1.0, progress / warm)
        return self.cfg.adversary_weight * (2 / (1 + math.exp(-10 * p)) - 1)

    def loss(
        self, img: torch.Tensor, txt: torch.Tensor, progress: float, project: Project
    ) -> torch.Tensor:
        weight = self.weight(progress)
        images, texts = [img], [txt]
        for m, pool in self.targets.items():
            pick = torch.randint(len(pool), (len(img),), generator=self.generator)
            (images if m == "image" else texts).append(project(pool[pick], m))
        z = reverse_gradient(torch.cat([*images, *texts]), weight)
        n_img, n_txt = sum(len(x) for x in images), sum(len(x) for x in texts)
        labels = torch.cat([torch.ones(n_img), torch.zeros(n_txt)])
        logits = self.modality(z).squeeze(-1)
        self.accuracy = float(((logits > 0).float() == labels).float().mean())
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        if self.domain is not None:
            source = torch.cat([img, txt])
            target = torch.cat([*images[1:], *texts[1:]])
            z = reverse_gradient(torch.cat([source, target]), weight)
            labels = torch.cat([torch.ones(len(source)), torch.zeros(len(target))])
            loss = loss + F.binary_cross_entropy_with_logits(self.domain(z).squeeze(-1), labels)
        return loss


def fit_adversarial(
    image_vectors: np.ndarray,
    text_vectors: np.ndarray,
    cfg: AdversarialConfig,
    on_step: StepCallback | None = None,
    target_images: np.ndarray | None = None,
    target_texts: np.ndarray | None = None,
) -> tuple[FeatureMap, float]:
    """The two projection heads (a ``FeatureMap``) and the modality discriminator's accuracy
    on the last batch. ``target_images`` and ``target_texts``: base embeddings of unpaired
    items of a target domain, for the domain discriminator."""
    torch.manual_seed(cfg.seed)
    d = np.asarray(image_vectors).shape[1]
    adversary = Adversary(d, cfg, target_images, target_texts)
    linear = LinearConfig(
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    fmap = fit_linear(image_vectors, text_vectors, linear, on_step, adversary=adversary)
    return fmap, adversary.accuracy
