"""The encoding side of the service: image decoding in a worker pool, then two dynamic
batchers (images, texts) feeding one model thread, so model calls never overlap and
never run on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from app.service.config import MAX_QUEUE, MAX_WAIT_MS, Settings
from app.service.metrics import Metrics
from index import ModelMismatch
from models.batching import DynamicBatcher
from models.decoding import pixels_of
from models.encoder import Encoder
from models.errors import ImageDecodeError, ImageTooLarge, QueueFull
from models.preprocess import normalise

log = logging.getLogger(__name__)
T = TypeVar("T")
SMALL_BATCH = 32  # inputs below which an encoder call counts as a few queries
SMALL_BATCH_THREADS = 1  # torch's CPU threads for such a call (see _threads_for)
R = TypeVar("R")


@dataclass(frozen=True)
class PreparedImage:
    pixels: torch.Tensor
    media_type: str


class Engine:
    def __init__(self, encoder: Encoder, settings: Settings, metrics: Metrics) -> None:
        self.encoder: Encoder = encoder  # the active version: new items are embedded with it
        # Every loaded version, the active one included. During an activation the old and
        # the new version are both here, and each query is embedded with the version of
        # the collection it searches. All versions share the architecture (fine-tuning
        # keeps it), so one preprocessing serves them all.
        self.encoders: dict[str, Encoder] = {encoder.version: encoder}
        self.configured_version = encoder.version  # stays loaded: rollbacks land on it
        self.settings = settings
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="xmodal-model")
        self._decode_pool = ThreadPoolExecutor(
            settings.decode_workers, thread_name_prefix="xmodal-decode"
        )
        self._decoding = 0  # images handed to the decoding pool and not back yet
        self._default_threads = torch.get_num_threads()
        # Training images are kept at twice the model's input side at most: room for
        # augmentation, and no 12 MP bitmaps held in memory.
        self.image_side = 2 * encoder.pixels.size
        # Batch items are (encoding function, input): one model call per function present,
        # so two versions, or a version's queries and its stored texts, share a batch.
        self.images: DynamicBatcher[tuple[Callable[..., np.ndarray], torch.Tensor]] = self._batcher(
            self._encode_mixed, "image", metrics
        )
        self.texts: DynamicBatcher[tuple[Callable[..., np.ndarray], str]] = self._batcher(
            self._encode_mixed, "text", metrics
        )

    def _encode_mixed(self, items: list[tuple[Callable[..., np.ndarray], Any]]) -> np.ndarray:
        out = np.empty((len(items), self.dim), dtype=np.float32)
        groups: dict[Callable[..., np.ndarray], list[int]] = {}
        for i, (fn, _) in enumerate(items):
            groups.setdefault(fn, []).append(i)
        with self._threads_for(len(items)):
            for fn, rows in groups.items():
                out[rows] = fn([items[i][1] for i in rows])
        return out

    @contextlib.contextmanager
    def _threads_for(self, inputs: int) -> Iterator[None]:
        """Torch's CPU threads during an encoder call of ``inputs``: few for a few queries,
        whose tiny operations gain nothing from splitting and lose much when one of the
        threads is descheduled (measured: a batch of 8 texts took 12.5 ms under load with
        two threads, 6.3 with one). The setting is process-wide, so it is put back at
        once: training, which runs outside the model thread, keeps torch's default."""
        if inputs >= SMALL_BATCH or self.encoder.device.type != "cpu":
            yield
            return
        torch.set_num_threads(SMALL_BATCH_THREADS)
        try:
            yield
        finally:
            torch.set_num_threads(self._default_threads)

    def encoder_of(self, space: str) -> Encoder:
        """The encoder for vectors of ``space`` (a collection's model version): the active
        one if it writes them (a distilled version writes its teacher's), else the version
        of that name."""
        if self.encoder.space == space:
            return self.encoder
        encoder = self.encoders.get(space)
        if encoder is None:
            raise ModelMismatch(f"model {space!r} is not loaded; this server runs {self.version!r}")
        return encoder

    def add_version(self, encoder: Encoder) -> None:
        self.encoders[encoder.version] = encoder

    def activate(self, version: str) -> None:
        """Serve ``version`` from now on (it must be loaded): new items, and the queries of
        the collections in its space, are embedded with it."""
        encoder = self.encoders.get(version)
        if encoder is None:
            raise ModelMismatch(f"model {version!r} is not loaded")
        self.encoder = encoder

    def drop_version(self, version: str) -> None:
        """Unload ``version`` unless it serves or is the configured model."""
        if version not in (self.encoder.version, self.configured_version):
            self.encoders.pop(version, None)

    def _batcher(
        self, fn: Callable[[list[T]], np.ndarray], modality: str, metrics: Metrics
    ) -> DynamicBatcher[T]:
        return DynamicBatcher(
            fn,
            executor=self._model_thread,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=MAX_WAIT_MS,
            max_queue=MAX_QUEUE,
            name=f"{modality}-encoder",
            observe=metrics.batch_observer(modality),
        )

    @property
    def version(self) -> str:
        """The active version (what ``/v1/models`` marks active)."""
        return self.encoder.version

    @property
    def space(self) -> str:
        """The embedding space of the active version: what new items and collections get."""
        return self.encoder.space

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def start(self) -> None:
        self.images.start()
        self.texts.start()

    async def stop(self) -> None:
        await self.images.stop()
        await self.texts.stop()
        self.shutdown()

    def shutdown(self) -> None:
        """Release the model thread and the decoding pool (the batchers stopped, or never
        started, as in the CLI)."""
        self._model_thread.shutdown(wait=True)
        self._decode_pool.shutdown(wait=True)

    def run_model(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn`` on the model thread from a plain thread (batch jobs), in turn with the
        request batches, and wait for it."""
        return self._model_thread.submit(fn, *args).result()

    # --- entry points -------------------------------------------------------------------------
    async def embed_texts(
        self, texts: Sequence[str], space: str | None = None, query: bool = False
    ) -> np.ndarray:
        """Texts as stored items (or, ``query``, as a search's query) in ``space`` (default:
        the active version's)."""
        encoder = self.encoder_of(space or self.space)
        fn = encoder.encode_queries if query else encoder.encode_texts
        return await self.texts.submit([(fn, t) for t in texts], self.settings.request_timeout_s)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the serving version's text tower reads for ``texts`` (tokenizer work:
        run it off the event loop)."""
        return self.encoders[self.version].count_tokens(texts)

    async def prepare_images(
        self, blobs: Sequence[bytes], names: Sequence[str] | None = None
    ) -> list[PreparedImage]:
        """Decode and preprocess every image in parallel; the first bad one fails them all
        (with its name in the message) so a request is stored whole or not at all."""
        limit = MAX_QUEUE
        if self._decoding + len(blobs) > limit:
            raise QueueFull(
                f"image decoding queue is full ({self._decoding} of {limit} waiting); retry"
            )
        loop = asyncio.get_running_loop()
        self._decoding += len(blobs)  # one event loop: no lock needed
        try:
            jobs = [loop.run_in_executor(self._decode_pool, self._prepare, b) for b in blobs]
            results = await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            self._decoding -= len(blobs)
        for i, r in enumerate(results):
            if isinstance(r, (ImageDecodeError, ImageTooLarge)):
                label = names[i] if names and names[i] else f"file {i}"
                raise type(r)(f"{label}: {r}") from r
            if isinstance(r, BaseException):
                raise r
        return [r for r in results if isinstance(r, PreparedImage)]

    async def embed_prepared(
        self, images: Sequence[PreparedImage], space: str | None = None
    ) -> np.ndarray:
        fn = self.encoder_of(space or self.space).encode_image_tensors
        return await self.images.submit(
            [(fn, im.pixels) for im in images], self.settings.request_timeout_s
        )

    def _prepare(self, data: bytes) -> PreparedImage:
        """The pixels a batch job would give the same file (``models.decoding``), so an
        uploaded copy of an indexed image finds it with the same vector."""
        spec = self.encoder.pixels
        pixels, media_type = pixels_of(data, spec, self.settings.max_image_pixels)
        return PreparedImage(normalise(spec, pixels[None], "cpu")[0], media_type)
