"""The encoding side of the service: image decoding in a worker pool, then two dynamic
batchers (images, texts) feeding one model thread, so model calls never overlap and
never run on the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from app.config import Settings
from app.metrics import Metrics
from models import ClipEncoder, DynamicBatcher, decode_image
from models.errors import ImageDecodeError, ImageTooLarge

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PreparedImage:
    pixels: torch.Tensor
    media_type: str


class Engine:
    def __init__(self, encoder: ClipEncoder, settings: Settings, metrics: Metrics) -> None:
        self.encoder = encoder
        self.settings = settings
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="xmodal-model")
        self._decode_pool = ThreadPoolExecutor(
            settings.decode_workers, thread_name_prefix="xmodal-decode"
        )
        size = getattr(encoder.model.visual, "image_size", 224)
        self._draft_size = 2 * int(size[0] if isinstance(size, (tuple, list)) else size)
        self.images: DynamicBatcher[torch.Tensor] = self._batcher(
            encoder.encode_image_tensors, "image", metrics
        )
        self.texts: DynamicBatcher[str] = self._batcher(encoder.encode_texts, "text", metrics)

    def _batcher(
        self, fn: Callable[[list[T]], np.ndarray], modality: str, metrics: Metrics
    ) -> DynamicBatcher[T]:
        return DynamicBatcher(
            fn,
            executor=self._model_thread,
            max_batch_size=self.settings.max_batch_size,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=self.settings.max_queue,
            name=f"{modality}-encoder",
            observe=metrics.batch_observer(modality),
        )

    @property
    def version(self) -> str:
        return self.encoder.version

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def start(self) -> None:
        self.images.start()
        self.texts.start()

    async def stop(self) -> None:
        await self.images.stop()
        await self.texts.stop()
        self._model_thread.shutdown(wait=True)
        self._decode_pool.shutdown(wait=True)

    def run_model(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn`` on the model thread from a plain thread (batch jobs), in turn with the
        request batches, and wait for it."""
        return self._model_thread.submit(fn, *args).result()

    # --- entry points -------------------------------------------------------------------------
    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return await self.texts.submit(list(texts), self.settings.request_timeout_s)

    async def prepare_images(
        self, blobs: Sequence[bytes], names: Sequence[str] | None = None
    ) -> list[PreparedImage]:
        """Decode and preprocess every image in parallel; the first bad one fails them all
        (with its name in the message) so a request is stored whole or not at all."""
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(self._decode_pool, self._prepare, b) for b in blobs]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for i, r in enumerate(results):
            if isinstance(r, (ImageDecodeError, ImageTooLarge)):
                label = names[i] if names and names[i] else f"file {i}"
                raise type(r)(f"{label}: {r}") from r
            if isinstance(r, BaseException):
                raise r
        return [r for r in results if isinstance(r, PreparedImage)]

    async def embed_prepared(self, images: Sequence[PreparedImage]) -> np.ndarray:
        return await self.images.submit(
            [im.pixels for im in images], self.settings.request_timeout_s
        )

    def _prepare(self, data: bytes) -> PreparedImage:
        decoded = decode_image(data, self.settings.max_image_pixels, draft_size=self._draft_size)
        return PreparedImage(self.encoder.preprocess_image(decoded.image), decoded.media_type)
