"""The model's pixels from a decoded image, without torch.

OpenCLIP's preprocessing is a torchvision ``Compose``: resize the shorter side, centre
crop a square, convert to a tensor, normalise. The first two steps are plain PIL work and
run here, in the threads (or Ray tasks) that decode files, handing back (side, side, 3)
uint8 arrays; the last two run on whole batches on the model's device
(``models.preprocess.normalise``). Nothing here imports torch, so a process that only
decodes never pays for it.

The resize reads only the source region the crop keeps (``resize`` with a ``box``), so an
image 20,000 pixels wide and 2 high costs a 224x224 output, not a 2.2 million pixel wide
intermediate as resizing first would. The result equals torchvision's resize-then-crop
(the filter reads the same source pixels, neighbours outside the box included, in the
same order); ``tests/models/test_pixels.py`` compares them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# torchvision's InterpolationMode values to PIL's resampling filters.
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
# Steps before the tensor conversion that only make the image RGB, which
# ``models.images.decode_image`` has done already (OpenCLIP's names across versions).
_RGB_STEPS = {"MaybeConvertMode", "_convert_to_rgb", "convert_to_rgb"}


@dataclass(frozen=True)
class PixelSpec:
    """What the model takes: ``size`` x ``size`` RGB pixels resized with ``resample``,
    then normalised with ``mean`` and ``std`` (on the device)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: int = Image.Resampling.BICUBIC
    shorter_side: int | None = None  # what the resize makes the shorter side (None: size)
    # A preprocessing this module does not reproduce (not resize-shorter-side then centre
    # crop): its PIL steps, run as they are (they import torchvision where they run).
    custom: Callable[[Image.Image], Image.Image] | None = None

    @classmethod
    def from_preprocess(cls, preprocess: Any) -> PixelSpec:
        """Read an OpenCLIP ``Compose``: its steps up to the tensor conversion, and the
        normalisation after it."""
        from torchvision.transforms import CenterCrop, Compose, Normalize, Resize

        steps = list(preprocess.transforms)
        cut = next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)
        normalise = next(t for t in steps[cut:] if isinstance(t, Normalize))
        mean = tuple(float(x) for x in normalise.mean)
        std = tuple(float(x) for x in normalise.std)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"expected 3-channel normalisation, got {mean} and {std}")
        pil = [t for t in steps[:cut] if _name(t) not in _RGB_STEPS]
        crop = next((t for t in pil if isinstance(t, CenterCrop)), None)
        if crop is None:
            raise ValueError("expected a centre crop in the model's preprocessing")
        h, w = _pair(crop.size)
        if h != w:
            raise ValueError(f"expected a square crop, got {h}x{w}")
        mean3, std3 = (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])
        resize = pil[0] if len(pil) == 2 and isinstance(pil[0], Resize) else None
        side = _shorter_side(resize.size) if resize is not None else None
        how = str(getattr(getattr(resize, "interpolation", None), "value", ""))
        if (
            resize is None
            or pil[1] is not crop
            or side is None
            or side < h
            or resize.max_size is not None
            or how not in _RESAMPLE
        ):
            return cls(h, mean3, std3, custom=Compose(steps[:cut]))
        return cls(h, mean3, std3, _RESAMPLE[how], side)

    @property
    def draft_side(self) -> int:
        """The smallest shorter side a JPEG may be decoded at (its DCT scaling) without
        costing the model a pixel: what the resize makes it, twice the crop for a
        preprocessing of unknown steps."""
        if self.custom is not None:
            return 2 * self.size
        return self.shorter_side or self.size

    def fit(self, image: Image.Image) -> np.ndarray:
        """An RGB image as the model's (size, size, 3) uint8 pixels: the shorter side
        resized to ``size`` and the centre square kept, in one resampling."""
        if self.custom is not None:
            out = np.array(self.custom(image), dtype=np.uint8)
        else:
            out = np.array(self._resize_and_crop(image), dtype=np.uint8)
        if out.shape != (self.size, self.size, 3):
            raise ValueError(f"preprocessing gave shape {out.shape}")
        return out

    def _resize_and_crop(self, image: Image.Image) -> Image.Image:
        s, r = self.size, self.shorter_side or self.size
        w, h = image.size
        if w < 1 or h < 1:
            raise ValueError(f"an image of {w}x{h} pixels has nothing to resize")
        # torchvision's rule: the shorter side becomes r, the longer one is truncated.
        nw, nh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
        left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
        if (nw, nh) == (w, h):
            return image.crop((left, top, left + s, top + s))
        sx, sy = w / nw, h / nh
        x0, x1, y0, y1 = left * sx, (left + s) * sx, top * sy, (top + s) * sy
        # Only the source pixels the filter reads for the kept square: the box and the
        # filter's reach around it (3 taps for the widest, scaled when shrinking).
        mx, my = 3 * max(sx, 1.0) + 2, 3 * max(sy, 1.0) + 2
        cx0, cx1 = max(math.floor(x0 - mx), 0), min(math.ceil(x1 + mx), w)
        cy0, cy1 = max(math.floor(y0 - my), 0), min(math.ceil(y1 + my), h)
        part = image.crop((cx0, cy0, cx1, cy1))
        # Two passes, horizontal first as a whole-image resize does (Pillow given a box
        # and both axes to do may take the vertical one first: other roundings).
        wide = part.resize(
            (s, part.height), self.resample, box=(x0 - cx0, 0, x1 - cx0, part.height)
        )
        return wide.resize((s, s), self.resample, box=(0, y0 - cy0, s, y1 - cy0))


def _pair(size: Any) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size, size)
    return tuple(int(x) for x in size)


def _shorter_side(size: Any) -> int | None:
    """A torchvision ``Resize`` size that sets the shorter side (an int or one number)."""
    if isinstance(size, int):
        return size
    return int(size[0]) if len(size) == 1 else None


def _name(step: Any) -> str:
    return getattr(step, "__name__", None) or type(step).__name__
