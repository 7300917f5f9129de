"""Image files to the model's pixels, one file at a time, without torch.

What a batch job's decoding threads (and a Ray job's decoding tasks) run: read a file
within the size limit, hash it, stop there if the item already holds those bytes, decode
it (JPEGs at a reduced scale straight from the DCT, down to the smallest that still covers
the model's side) and resize and crop it to uint8 pixels. PIL lets go of the GIL while it
decodes and resamples, so threads run this in parallel. A bad file gives an error for its
own record only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from models.errors import ImageDecodeError, ImageTooLarge
from models.images import decode_image
from models.import_root import reason
from models.pixels import PixelSpec
from models.sources import FileRef

if TYPE_CHECKING:
    import torch


class BlobSink(Protocol):
    """Where decoded files' bytes are kept: written at once, made durable per chunk."""

    def put(self, data: bytes, digest: str | None = None, durable: bool = True) -> str: ...

    def make_durable(self, digests: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class DecodeTask:
    ref: FileRef
    expect_sha256: str | None = None  # the item exists with these bytes: skip if unchanged


@dataclass
class Decoded:
    sha256: str | None = None
    media_type: str | None = None
    # (side, side, 3) uint8 from PIL, or a (3, side, side) tensor from the device decoder
    pixels: np.ndarray | torch.Tensor | None = None
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
    except OSError as exc:  # its reason, not the server's path of the file
        return Decoded(error=f"cannot read: {reason(exc)}")
    except ValueError as exc:
        return Decoded(error=f"cannot read: {exc}")
    digest = hashlib.sha256(data).hexdigest()
    if task.expect_sha256 == digest:
        return Decoded(sha256=digest, unchanged=True)
    return Decoded(sha256=digest, raw=data)


def pixels_of(data: bytes, spec: PixelSpec, max_pixels: int) -> tuple[np.ndarray, str]:
    """An image file's bytes as the model's uint8 pixels, with the file's media type. The
    one way every path (requests, jobs, training) turns bytes into pixels, so the same
    file gives the same vector wherever it came in."""
    decoded = decode_image(data, max_pixels, draft_size=spec.draft_side)
    try:
        return spec.fit(decoded.image), decoded.media_type
    except Exception as exc:  # a preprocessing that cannot take this image: the file's fault
        raise ImageDecodeError(f"cannot be prepared for the model: {exc}") from exc


def decode_file(
    task: DecodeTask,
    spec: PixelSpec,
    max_bytes: int,
    max_pixels: int,
    sink: BlobSink | None = None,
) -> Decoded:
    """Read, hash, decode and resize one file; its bytes go to ``sink`` (not yet durable:
    the caller makes a chunk's files durable at once)."""
    read = read_and_hash(task, max_bytes)
    if read.raw is None or read.sha256 is None:
        return read
    data, digest = read.raw, read.sha256
    try:
        pixels, media_type = pixels_of(data, spec, max_pixels)
    except (ImageDecodeError, ImageTooLarge) as exc:
        return Decoded(sha256=digest, error=str(exc))
    except Exception as exc:  # a decoder bug on one file must not sink the others
        return Decoded(sha256=digest, error=f"cannot decode: {exc}")
    if sink is not None:
        sink.put(data, digest, durable=False)
    return Decoded(digest, media_type, pixels)


def decode_files(
    tasks: Sequence[DecodeTask],
    spec: PixelSpec,
    max_bytes: int,
    max_pixels: int,
    sink: BlobSink | None = None,
) -> list[Decoded]:
    """``decode_file`` for each task, the kept files made durable before returning."""
    out = [decode_file(t, spec, max_bytes, max_pixels, sink) for t in tasks]
    if sink is not None:
        sink.make_durable([d.sha256 for d in out if d.pixels is not None and d.sha256])
    return out
