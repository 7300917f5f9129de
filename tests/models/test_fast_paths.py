"""The GPU's faster ways compute the same encoders: checked here on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models.encoder import ClipEncoder
from models.fast_paths import PatchEmbedding, can_embed_as_matmul, patch_embedding_as_matmul


@pytest.mark.parametrize(("side", "patch"), [(64, 16), (224, 32), (70, 16)])
def test_patch_embedding_equals_the_convolution(side: int, patch: int) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 48, kernel_size=patch, stride=patch, bias=False)
    x = torch.randn(5, 3, side, side)
    fast = PatchEmbedding(conv)
    torch.testing.assert_close(fast(x), conv(x), atol=1e-4, rtol=1e-4)
    # The layout the ViT's next step reads without a copy.
    assert fast(x).reshape(5, 48, -1).shape == conv(x).reshape(5, 48, -1).shape
    # Channels-last input, and the gradient reaches the shared weight.
    fast(x.to(memory_format=torch.channels_last)).sum().backward()
    assert conv.weight.grad is not None and fast.weight is conv.weight


def test_only_a_non_overlapping_patch_convolution_qualifies() -> None:
    assert can_embed_as_matmul(nn.Conv2d(3, 8, 16, 16, bias=False))
    assert not can_embed_as_matmul(nn.Conv2d(3, 8, 16, 16, bias=True))
    assert not can_embed_as_matmul(nn.Conv2d(3, 8, 16, 8, bias=False))
    assert not can_embed_as_matmul(nn.Conv2d(3, 8, 16, 16, padding=1, bias=False))
    assert not can_embed_as_matmul(nn.Linear(3, 8))


def test_a_vit_with_the_matmul_patch_embedding_gives_the_same_features(
    tiny_encoder: ClipEncoder,
) -> None:
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    model = nn.Module()
    model.visual = VisionTransformer(
        image_size=64, patch_size=16, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16
    ).eval()
    reference = copy.deepcopy(model.visual)
    keys = set(model.state_dict())
    assert patch_embedding_as_matmul(model)
    assert not patch_embedding_as_matmul(model)  # once
    assert set(model.state_dict()) == keys  # checkpoints do not notice
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model.visual(x), reference(x), atol=1e-4, rtol=1e-4)
    # xmodal-tiny's tower is a ResNet: nothing to swap.
    assert not patch_embedding_as_matmul(copy.deepcopy(tiny_encoder.model))
