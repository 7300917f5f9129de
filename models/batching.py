"""Cross-request dynamic batching for model calls.

Each request puts its items on a bounded queue with one future per item. A single worker
task gathers items into batches of at most ``max_batch_size``, waiting at most
``max_wait_ms`` after the first item for more to arrive (not at all for a request that
came after a quiet spell of ``max_wait_ms`` and is still alone), and runs the model
function in an executor so the event loop never blocks. A full queue refuses the request at once
(``QueueFull``); a request still unanswered at its deadline gets ``DeadlineExceeded``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from models.errors import DeadlineExceeded, QueueFull

log = logging.getLogger(__name__)

T = TypeVar("T")
BatchObserver = Callable[[int, Sequence[float]], None]


@dataclass
class _Entry(Generic[T]):
    item: T
    future: asyncio.Future[np.ndarray]
    enqueued: float
    deadline: float
    alone: bool = False  # no other request arrived within max_wait before it


class DynamicBatcher(Generic[T]):
    """Gathers concurrent requests' items into model batches."""

    def __init__(
        self,
        fn: Callable[[list[T]], np.ndarray],
        *,
        executor: Executor,
        max_batch_size: int = 64,
        max_wait_ms: float = 5.0,
        max_queue: int = 1024,
        name: str = "batcher",
        observe: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self._fn = fn
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.name = name
        self._observe = observe
        self._pending: collections.deque[_Entry[T]] = collections.deque()
        self._last_arrival = float("-inf")
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(DeadlineExceeded(f"{self.name} stopped"))

    async def submit(self, items: Sequence[T], timeout: float) -> np.ndarray:
        """Encode ``items`` as part of whatever batches form; rows come back in order."""
        if not items:
            raise ValueError("submit needs at least one item")
        if self._worker is None:
            raise RuntimeError(f"{self.name} is not started")
        if len(self._pending) + len(items) > self.max_queue:
            raise QueueFull(
                f"{self.name} queue is full ({len(self._pending)} of {self.max_queue} waiting); "
                "retry later"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        alone = now - self._last_arrival > self.max_wait
        self._last_arrival = now
        entries = [_Entry(item, loop.create_future(), now, now + timeout, alone) for item in items]
        self._pending.extend(entries)
        self._arrived.set()
        try:
            rows = await asyncio.wait_for(asyncio.gather(*(e.future for e in entries)), timeout)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"{self.name}: no result within {timeout:.1f} s") from exc
        return np.stack(rows)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            started = time.monotonic()
            try:
                out = await loop.run_in_executor(self._executor, self._fn, [e.item for e in batch])
                if not isinstance(out, np.ndarray) or out.ndim != 2 or out.shape[0] != len(batch):
                    shape = getattr(out, "shape", type(out).__name__)
                    raise RuntimeError(
                        f"{self.name}: model returned {shape} for {len(batch)} inputs"
                    )
            except Exception as exc:  # one failed batch fails its requests, not the worker
                log.exception("%s batch of %d failed", self.name, len(batch))
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(exc)
                continue
            self._record(len(batch), [started - e.enqueued for e in batch])
            for row, e in zip(out, batch, strict=True):
                if not e.future.done():
                    e.future.set_result(row)

    async def _next_batch(self) -> list[_Entry[T]]:
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        # Give concurrent requests up to max_wait (from the oldest arrival) to join; unless
        # the oldest came after a quiet spell and is still the only request waiting: then
        # nobody is likely to join, and waiting would only add max_wait to its latency.
        first = self._pending[0]
        quiet = first.alone and self._pending[-1].enqueued == first.enqueued
        while not quiet and len(self._pending) < self.max_batch_size:
            remaining = self._pending[0].enqueued + self.max_wait - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
            if not self._pending:
                return []
        batch: list[_Entry[T]] = []
        now = time.monotonic()
        while self._pending and len(batch) < self.max_batch_size:
            e = self._pending.popleft()
            if e.future.done():  # its request gave up (deadline) or was cancelled
                continue
            if e.deadline <= now:
                e.future.set_exception(DeadlineExceeded(f"{self.name}: deadline passed in queue"))
                continue
            batch.append(e)
        return batch

    def _record(self, size: int, waits: Sequence[float]) -> None:
        if self._observe is not None:
            self._observe(size, waits)
