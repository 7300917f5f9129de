"""Stored content encoded again: the one road from an item's stored bytes (or text) to its
vector, the road uploads and index jobs take, so an item encoded again by the version
that indexed it gets the vector indexing gave, and an evaluation measures the vectors a
search would find.

Image bytes become the model's pixels through ``models.decoding.pixels_of`` (decoded with
the same JPEG draft, resized and cropped without torch), then ``encode_pixels`` stacks,
normalises and encodes a batch on the model's device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from models.decoding import pixels_of
from models.encoder import Encoder
from models.preprocess import normalise

BATCH = 256  # images per encoder call
RunModel = Callable[..., np.ndarray]  # the caller's model thread, or a direct call


def _direct(fn: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
    return fn(*args)


def encode_pixels(encoder: Encoder, pixels: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
    """Stack a batch (HWC uint8 arrays from the PIL workers, CHW tensors already on the
    device from nvJPEG), normalise it on the device and encode it (on the model thread)."""
    device = encoder.device
    if all(isinstance(p, np.ndarray) for p in pixels):  # one copy to the device
        batch = torch.from_numpy(np.stack(list(pixels))).to(device, non_blocking=True)
    else:
        batch = torch.stack(
            [
                p.to(device)
                if isinstance(p, torch.Tensor)
                else torch.from_numpy(np.ascontiguousarray(p)).to(device).permute(2, 0, 1)
                for p in pixels
            ]
        )
    return encoder.encode_image_tensors(normalise(encoder.pixels, batch, device))


class Content(Protocol):
    """What encoding an item again reads of it."""

    @property
    def modality(self) -> str: ...  # "image" or "text"

    @property
    def text(self) -> str | None: ...


def encode_contents(
    items: Sequence[Content],
    encoder: Encoder,
    load_bytes: Callable[[Any], bytes],
    max_pixels: int,
    run_model: RunModel = _direct,
) -> np.ndarray:
    """The vectors of ``items`` under ``encoder``: texts encoded, images read back with
    ``load_bytes(item)`` (which raises saying why it cannot) and taken the one road."""
    out = np.empty((len(items), encoder.dim), dtype=np.float32)
    texts = [i for i, it in enumerate(items) if it.modality == "text"]
    images = [i for i, it in enumerate(items) if it.modality == "image"]
    if texts:
        out[texts] = run_model(encoder.encode_texts, [items[i].text or "" for i in texts])
    if images:
        files = [functools.partial(load_bytes, items[i]) for i in images]
        out[images] = encode_image_files(encoder, files, max_pixels, run_model)
    return out


def encode_image_files(
    encoder: Encoder,
    files: Sequence[Callable[[], bytes]],
    max_pixels: int,
    run_model: RunModel = _direct,
) -> np.ndarray:
    """The vectors of image files, each read by its loader (which raises saying why it
    cannot), decoded to pixels as uploads are and encoded in batches."""
    out = np.empty((len(files), encoder.dim), dtype=np.float32)
    for start in range(0, len(files), BATCH):
        batch = files[start : start + BATCH]
        pixels = [pixels_of(read(), encoder.pixels, max_pixels)[0] for read in batch]
        out[start : start + len(batch)] = run_model(encode_pixels, encoder, pixels)
    return out
