"""Batch preprocessing for corpus indexing.

OpenCLIP's preprocessing is split in two: the PIL part (resize, centre crop) runs in worker
processes next to the decoding and hands back small uint8 images; the tensor part (scale
to [0, 1], normalise) runs on whole batches on the model's device. On CUDA, JPEGs can
skip PIL entirely: nvJPEG decodes them on the GPU and the resize happens there too.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.errors import ImageDecodeError, ImageTooLarge
from models.images import decode_image
from models.sources import FileRef

BlobSink = Callable[[bytes, str], Any]  # (bytes, sha256 hex) -> stored
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class PixelPipeline:
    pil_stage: Callable[[Image.Image], Image.Image]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int  # square output side

    @classmethod
    def from_preprocess(cls, preprocess: Any) -> PixelPipeline:
        """Split an OpenCLIP ``Compose`` at its to-tensor step."""
        from torchvision.transforms import CenterCrop, Compose, Normalize

        steps = list(preprocess.transforms)
        cut = next(i for i, t in enumerate(steps) if "ToTensor" in type(t).__name__)
        normalise = next(t for t in steps[cut:] if isinstance(t, Normalize))
        crop = next(t for t in steps[:cut] if isinstance(t, CenterCrop))
        h, w = crop.size if isinstance(crop.size, (tuple, list)) else (crop.size, crop.size)
        if h != w:
            raise ValueError(f"expected a square crop, got {h}x{w}")
        mean, std = [float(x) for x in normalise.mean], [float(x) for x in normalise.std]
        return cls(
            Compose(steps[:cut]), (mean[0], mean[1], mean[2]), (std[0], std[1], std[2]), int(h)
        )

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        """The PIL stage: an RGB image to (size, size, 3) uint8."""
        out = np.array(self.pil_stage(image), dtype=np.uint8)
        if out.shape != (self.size, self.size, 3):
            raise ValueError(f"preprocessing gave shape {out.shape}")
        return out

    def normalise(
        self, pixels: np.ndarray | torch.Tensor, device: torch.device | str
    ) -> torch.Tensor:
        """The tensor stage on a batch: (n, H, W, 3) or (n, 3, H, W) uint8 to normalised
        float (n, 3, H, W) on ``device``, as ``ToTensor`` and ``Normalize`` would give."""
        batch = torch.as_tensor(pixels).to(device, non_blocking=True)
        if batch.shape[-1] == 3 and batch.shape[1] != 3:
            batch = batch.permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.float().div_(255.0) - mean) / std


@dataclass(frozen=True)
class DecodeTask:
    ref: FileRef
    expect_sha256: str | None = None  # the item exists with these bytes: skip if unchanged


@dataclass
class Decoded:
    sha256: str | None = None
    media_type: str | None = None
    pixels: np.ndarray | torch.Tensor | None = None  # HWC array (PIL) or CHW tensor (device)
    unchanged: bool = False
    error: str | None = None
    raw: bytes | None = None  # the file's bytes, from read_and_hash only


def read_and_hash(task: DecodeTask, max_bytes: int) -> Decoded:
    """Read a file within the size limit and hash it; ``unchanged`` when it holds the bytes
    the item already has."""
    try:
        data = task.ref.read(max_bytes)
    except FileNotFoundError:
        return Decoded(error="file not found")
    except (OSError, ValueError) as exc:
        return Decoded(error=f"cannot read: {exc}")
    digest = hashlib.sha256(data).hexdigest()
    if task.expect_sha256 == digest:
        return Decoded(sha256=digest, unchanged=True)
    return Decoded(sha256=digest, raw=data)


def decode_files(
    tasks: Sequence[DecodeTask],
    pipeline: PixelPipeline,
    max_bytes: int,
    max_pixels: int,
    sink: BlobSink | None = None,
) -> list[Decoded]:
    """Read, hash, decode and resize each file; runs in a worker process. A bad file gives
    an error for its own task only."""
    out = []
    for task in tasks:
        read = read_and_hash(task, max_bytes)
        if read.raw is None or read.sha256 is None:
            out.append(read)
            continue
        data, digest = read.raw, read.sha256
        try:
            decoded = decode_image(data, max_pixels, draft_size=2 * pipeline.size)
            pixels = pipeline.to_uint8(decoded.image)
        except (ImageDecodeError, ImageTooLarge) as exc:
            out.append(Decoded(sha256=digest, error=str(exc)))
            continue
        except Exception as exc:  # a decoder bug on one file must not sink the batch
            out.append(Decoded(sha256=digest, error=f"cannot decode: {exc}"))
            continue
        if sink is not None:
            sink(data, digest)
        out.append(Decoded(digest, decoded.media_type, pixels))
    return out


def init_worker(parent: int | None = None) -> None:
    """Worker processes decode one file at a time: keep torch from spawning thread pools.
    They also exit on their own when ``parent``, the server that started them, dies (a
    kill -9 gives it no chance to stop them), instead of lingering with their memory.
    ``parent`` comes from the server: read here, it could already be init's if the server
    died while this worker was starting."""
    torch.set_num_threads(1)
    # Ctrl-C at a terminal reaches every process of the group: the server stops the pool
    # itself, so a worker taking it would only print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="xmodal-parent-watch", daemon=True).start()


def decode_jpegs_on_device(
    blobs: Sequence[bytes], pipeline: PixelPipeline, device: torch.device | str, max_pixels: int
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
        img = TF.resize(
            img, [pipeline.size], interpolation=InterpolationMode.BICUBIC, antialias=True
        )
        out[i] = TF.center_crop(img, [pipeline.size, pipeline.size])
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
