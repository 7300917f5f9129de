"""The torch side of the model's pixels: normalising uint8 batches on the device, and
decoding JPEGs on the device.

The PIL side (decode, resize, centre crop to uint8) is ``models.pixels`` and
``models.decoding``, which do not import torch; what they hand over is normalised here on
whole batches, on the model's device. On CUDA, JPEGs can skip PIL entirely: nvJPEG decodes
them on the GPU and the resize happens there too.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from models.pixels import PixelSpec

_EXIF_ORIENTATION = 0x0112


def normalise(
    spec: PixelSpec, pixels: np.ndarray | torch.Tensor, device: torch.device | str
) -> torch.Tensor:
    """A batch of (n, H, W, 3) or (n, 3, H, W) uint8 pixels as normalised float
    (n, 3, H, W) on ``device``, as ``ToTensor`` and ``Normalize`` would give."""
    batch = torch.as_tensor(pixels).to(device, non_blocking=True)
    if batch.shape[-1] == 3 and batch.shape[1] != 3:
        batch = batch.permute(0, 3, 1, 2)
    mean = torch.tensor(spec.mean, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=batch.device).view(1, 3, 1, 1)
    return (batch.float().div_(255.0) - mean) / std


def decode_jpegs_on_device(
    blobs: Sequence[bytes], spec: PixelSpec, device: torch.device | str, max_pixels: int
) -> list[torch.Tensor | None]:
    """Decode baseline JPEGs with torchvision (nvJPEG on CUDA) and resize/crop them on
    ``device``. Entries that are not upright RGB/greyscale JPEGs, or fail, come back None
    for the PIL path to handle."""
    from torchvision.io import ImageReadMode
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    out: list[torch.Tensor | None] = [None] * len(blobs)
    usable = [i for i, b in enumerate(blobs) if _plain_jpeg(b, max_pixels)]
    if not usable:
        return out
    encoded = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in usable]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg

        images: list[torch.Tensor | None]
        try:
            images = list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            images = []
            for e in encoded:  # one corrupt file fails the batch call: isolate it
                try:
                    images.append(decode_jpeg(e, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    images.append(None)
    for i, img in zip(usable, images, strict=True):
        if img is None:
            continue
        side = spec.shorter_side or spec.size
        img = TF.resize(img, [side], interpolation=InterpolationMode.BICUBIC, antialias=True)
        out[i] = TF.center_crop(img, [spec.size, spec.size])
    return out


def _plain_jpeg(data: bytes, max_pixels: int) -> bool:
    """A JPEG the device decoder handles exactly like PIL: RGB or greyscale, within the
    pixel limit, and upright (nvJPEG ignores EXIF orientation)."""
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
            w, h = img.size
            upright = img.getexif().get(_EXIF_ORIENTATION, 1) == 1
            return img.mode in ("RGB", "L") and w * h <= max_pixels and upright
    except Exception:
        return False
