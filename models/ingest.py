"""The batch-ingest pipeline: image files to pixels ready for the model, in parallel.

Image files are read, hashed, decoded and resized in threads of this process (PIL lets go
of the GIL while it decodes and resamples, and threads start at once, where worker
processes took seconds each to start and to import their libraries), or on CUDA decoded
by nvJPEG on the model's device, while the previous chunk is being encoded, so decoding
and the model overlap. ``start`` hands a chunk's images to the decoders (at prefetch
time), ``finish`` collects them and makes the chunk's image files durable at once, and
``encode_pixels`` stacks and normalises a batch on the device and encodes it. Files that
hold the bytes an item already has come back ``unchanged`` without being decoded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.decoding import BlobSink, Decoded, DecodeTask, decode_file, read_and_hash
from models.encoder import Encoder
from models.pixels import PixelSpec
from models.preprocess import decode_jpegs_on_device, normalise
from models.sources import SourceRecord
from models.stored import encode_pixels

ModelRunner = Callable[..., Any]  # run_model(fn, *args) -> fn(*args), on the model thread
_TASK_SIZE = 8  # files per decoding task


@dataclass
class PendingChunk:
    """A chunk's images on their way through the decoders."""

    images: list[SourceRecord]
    decodes: list[tuple[list[SourceRecord], Future[list[Decoded]]]] = field(default_factory=list)
    reads: list[tuple[SourceRecord, Future[Decoded]]] = field(default_factory=list)


@dataclass(frozen=True)
class IngestLimits:
    max_bytes: int
    max_pixels: int
    workers: int | None = None  # decoding threads (None: one per core)


class IngestPipeline:
    def __init__(
        self,
        pixels: PixelSpec,
        device: torch.device,
        limits: IngestLimits,
        run_model: ModelRunner,
        device_decode: bool | None = None,
        sink: BlobSink | None = None,
    ) -> None:
        self.pixels = pixels
        self.device = device
        self.limits = limits
        self.run_model = run_model
        if device_decode is None:
            # nvJPEG's resize reproduces a plain resize-and-crop only
            device_decode = device.type == "cuda" and pixels.custom is None
        self.device_decode = device_decode
        self.sink = sink  # where decoded files' bytes are kept (None: nowhere)
        self._pool: ThreadPoolExecutor | None = None
        self._io_pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._io_pool is not None:
            self._io_pool.shutdown(wait=True, cancel_futures=True)
            self._io_pool = None

    # --- a chunk --------------------------------------------------------------------------------
    def start(self, images: list[SourceRecord], expected: dict[str, str]) -> PendingChunk:
        """Send ``images`` to the decoders; ``expected`` maps a record id to the digest its
        item holds already (that file comes back unchanged)."""
        chunk = PendingChunk(images)
        if self.device_decode:
            # Read and hash now, on I/O threads; decoded on the model's device when the
            # chunk's turn comes.
            for r in images:
                if r.image is not None:
                    task = DecodeTask(r.image, expected.get(r.id))
                    read = self._io().submit(read_and_hash, task, self.limits.max_bytes)
                    chunk.reads.append((r, read))
            return chunk
        chunk.decodes = self._decode([r for r in images if r.image is not None], expected)
        return chunk

    def finish(self, chunk: PendingChunk) -> list[tuple[SourceRecord, Decoded]]:
        """Each image with its pixels, its error, or ``unchanged``; the image files kept
        are durable when this returns, before the chunk commits."""
        out = self._device_decode(chunk) if self.device_decode else self._collect(chunk.decodes)
        if self.sink is not None:
            self.sink.make_durable([d.sha256 for _, d in out if d.pixels is not None and d.sha256])
        return out

    def encode_pixels(
        self, encoder: Encoder, pixels: list[np.ndarray | torch.Tensor | None]
    ) -> np.ndarray:
        """A decoded batch encoded (``models.stored.encode_pixels``: the one road)."""
        batch = [p for p in pixels if p is not None]
        if len(batch) != len(pixels):
            raise ValueError("a batch to encode holds an image that was not decoded")
        return encode_pixels(encoder, batch)

    # --- device decoding ------------------------------------------------------------------------
    def _device_decode(self, chunk: PendingChunk) -> list[tuple[SourceRecord, Decoded]]:
        """Decode the JPEGs the I/O threads read (at prefetch) on the model's device and
        send what it cannot decode (other formats, odd JPEGs) through the PIL path."""
        out: list[tuple[SourceRecord, Decoded]] = []
        jpegs: list[tuple[SourceRecord, Decoded]] = []
        for r, future in chunk.reads:
            read = future.result()
            if read.raw is None:  # failed, or unchanged
                out.append((r, read))
            else:
                jpegs.append((r, read))
        blobs = [read.raw for _, read in jpegs if read.raw is not None]
        decoded = (
            self.run_model(
                decode_jpegs_on_device,
                blobs,
                self.pixels,
                self.device,
                self.limits.max_pixels,
            )
            if blobs
            else []
        )
        writes: list[Future[Any]] = []
        fallback: list[SourceRecord] = []
        for (r, read), pixels in zip(jpegs, decoded, strict=True):
            if pixels is None:
                fallback.append(r)
                continue
            if self.sink is not None and read.raw is not None and read.sha256 is not None:
                writes.append(self._io().submit(self.sink.put, read.raw, read.sha256, False))
            out.append((r, Decoded(read.sha256, "image/jpeg", pixels)))
        out += self._collect(self._decode(fallback, {}))
        for w in writes:
            w.result()  # every image file is written before its item commits
        return out

    def _decode(
        self, records: list[SourceRecord], expected: dict[str, str]
    ) -> list[tuple[list[SourceRecord], Future[list[Decoded]]]]:
        """Read, hash, decode and resize ``records``' files on the decoding threads, a few
        files per task (one future per file costs more than hashing an unchanged one)."""
        with_files = [r for r in records if r.image is not None]
        return [
            (part, self._decode_pool().submit(self._decode_part, part, expected))
            for part in (
                with_files[i : i + _TASK_SIZE] for i in range(0, len(with_files), _TASK_SIZE)
            )
        ]

    def _decode_part(self, records: list[SourceRecord], expected: dict[str, str]) -> list[Decoded]:
        lim = self.limits
        return [
            decode_file(
                DecodeTask(r.image, expected.get(r.id)),
                self.pixels,
                lim.max_bytes,
                lim.max_pixels,
                self.sink,
            )
            for r in records
            if r.image is not None
        ]

    @staticmethod
    def _collect(
        parts: list[tuple[list[SourceRecord], Future[list[Decoded]]]],
    ) -> list[tuple[SourceRecord, Decoded]]:
        return [
            pair for records, future in parts for pair in zip(records, future.result(), strict=True)
        ]

    # --- pools ----------------------------------------------------------------------------------
    def _io(self) -> ThreadPoolExecutor:
        if self._io_pool is None:
            self._io_pool = ThreadPoolExecutor(
                max(4, 2 * (os.cpu_count() or 1)), thread_name_prefix="xmodal-import-io"
            )
        return self._io_pool

    def _decode_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            workers = self.limits.workers or os.cpu_count() or 1
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="xmodal-import-decode")
        return self._pool


def encode_uint8(encoder: Encoder, batch: np.ndarray) -> np.ndarray:
    """A batch of (n, H, W, 3) uint8 pixels from the PIL stage, normalised on the
    encoder's device and encoded (a Ray actor's work)."""
    return encoder.encode_image_tensors(
        normalise(encoder.pixels, np.ascontiguousarray(batch), encoder.device)
    )
