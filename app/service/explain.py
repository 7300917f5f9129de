"""Why a picture came back for a query: an occlusion map.

The picture's pixels (as the model sees them, normalised) are copied once per cell of a
``grid x grid`` partition, the cell set to the mean colour (0 once normalised), and the
copies encoded in one batch with the original. A cell's value is how much the picture's
cosine to the query drops when that cell is hidden: high where the region carries the
match, near 0 where it does not matter, negative where hiding it helps. It needs nothing
of the model but its image tower, so it works for every version the service can load.
Cost: ``grid ** 2 + 1`` image encodings (50 for the default 7 x 7).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from app.service.errors import Invalid
from models.images import decode_image
from models.occlusion import occluded

__all__ = ["check_grid", "occluded", "occlusion_map", "overlay_png"]

DEFAULT_GRID = 7
MAX_GRID = 12  # 145 encodings at most
OVERLAY_SIDE = 512  # the PNG overlay's longest side at most


def check_grid(grid: int) -> None:
    if not 2 <= grid <= MAX_GRID:
        raise Invalid(f"grid must be between 2 and {MAX_GRID}, got {grid}", code="invalid_query")


def occlusion_map(vectors: np.ndarray, query: np.ndarray, grid: int) -> np.ndarray:
    """From the encodings of ``occluded``'s batch: each cell's drop in cosine to ``query``
    when it is hidden, (grid, grid), rows top to bottom."""
    scores = vectors @ query.astype(np.float32)
    return np.asarray((scores[0] - scores[1:]).reshape(grid, grid), dtype=np.float64)


def overlay_png(picture: bytes, grid_map: np.ndarray, max_pixels: int) -> bytes:
    """The picture with the map over it in red (the strongest cell opaque at 60%, cells
    where hiding helps left clear), as a PNG no larger than ``OVERLAY_SIDE``."""
    base = decode_image(picture, max_pixels, draft_size=OVERLAY_SIDE).image.convert("RGB")
    base.thumbnail((OVERLAY_SIDE, OVERLAY_SIDE))
    top = float(grid_map.max())
    heat = np.clip(grid_map / top, 0.0, 1.0) if top > 0 else np.zeros_like(grid_map)
    alpha = Image.fromarray((heat * 153).astype(np.uint8), "L").resize(
        base.size, Image.Resampling.BILINEAR
    )
    red = Image.new("RGB", base.size, (230, 20, 20))
    out = Image.composite(red, base, alpha)
    buffer = io.BytesIO()
    out.save(buffer, "PNG")
    return buffer.getvalue()
