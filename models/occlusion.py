"""The picture copies an occlusion map is made of (``app.service.explain``): the model's
normalised pixels with one cell of a grid hidden (set to the mean colour, 0) per copy."""

from __future__ import annotations

import numpy as np
import torch


def cells(side: int, grid: int) -> list[tuple[int, int]]:
    """The [start, end) of each of ``grid`` bands across ``side`` pixels."""
    edges = np.linspace(0, side, grid + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def occluded(pixels: torch.Tensor, grid: int) -> torch.Tensor:
    """The normalised picture (3, H, W) and its ``grid ** 2`` copies, each with one cell
    (row by row, top to bottom) set to 0: (grid ** 2 + 1, 3, H, W)."""
    _, height, width = pixels.shape
    batch = pixels.unsqueeze(0).repeat(grid * grid + 1, 1, 1, 1)
    n = 1
    for y0, y1 in cells(height, grid):
        for x0, x1 in cells(width, grid):
            batch[n, :, y0:y1, x0:x1] = 0
            n += 1
    return batch
