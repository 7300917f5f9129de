from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import pytest

from models.batching import DynamicBatcher
from models.errors import DeadlineExceeded, QueueFull

T = TypeVar("T")


def _encode(items: list[int]) -> np.ndarray:
    time.sleep(0.002)  # long enough for requests to pile up behind a batch
    return np.array([[x, 2 * x] for x in items], dtype=np.float32)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_each_request_gets_its_own_rows_under_concurrency(executor: ThreadPoolExecutor) -> None:
    sizes: list[int] = []

    def encode(items: list[int]) -> np.ndarray:
        sizes.append(len(items))
        return _encode(items)

    async def main() -> None:
        batcher = DynamicBatcher(
            encode, executor=executor, max_batch_size=16, max_wait_ms=5, max_queue=10_000
        )
        batcher.start()
        rng = random.Random(0)
        requests = [
            [rng.randrange(1_000_000) for _ in range(rng.randint(1, 7))] for _ in range(300)
        ]

        async def one(items: list[int]) -> None:
            await asyncio.sleep(rng.random() * 0.01)
            out = await batcher.submit(items, timeout=30)
            np.testing.assert_array_equal(
                out, np.array([[x, 2 * x] for x in items], dtype=np.float32)
            )

        await asyncio.gather(*(one(r) for r in requests))
        await batcher.stop()
        assert sum(sizes) == sum(len(r) for r in requests)

    run(main())
    assert max(sizes) <= 16, "a batch exceeded max_batch_size"
    assert max(sizes) > 1, "concurrent requests were never batched together"


def test_a_request_after_a_quiet_spell_goes_at_once_and_one_close_behind_waits(
    executor: ThreadPoolExecutor,
) -> None:
    """Alone after a quiet spell, a request has nobody to wait for (max_wait is 10 s here,
    and it is answered long before); a request arriving within max_wait of another waits
    for companions up to max_wait (50 ms), then goes alone."""

    async def main() -> tuple[float, float]:
        batcher = DynamicBatcher(
            _encode, executor=executor, max_batch_size=1000, max_wait_ms=10_000
        )
        batcher.start()
        started = time.monotonic()
        await batcher.submit([1], timeout=30)
        quiet = time.monotonic() - started
        await batcher.stop()
        batcher = DynamicBatcher(_encode, executor=executor, max_batch_size=1000, max_wait_ms=50)
        batcher.start()
        await batcher.submit([1], timeout=5)
        started = time.monotonic()
        await batcher.submit([2], timeout=5)  # right behind the first
        behind = time.monotonic() - started
        await batcher.stop()
        return quiet, behind

    quiet, behind = run(main())
    assert quiet < 5.0
    assert 0.04 <= behind < 2.0


def test_a_full_batch_does_not_wait(executor: ThreadPoolExecutor) -> None:
    sizes: list[int] = []

    def encode(items: list[int]) -> np.ndarray:
        sizes.append(len(items))
        return _encode(items)

    async def main() -> None:
        batcher = DynamicBatcher(encode, executor=executor, max_batch_size=4, max_wait_ms=1000)
        batcher.start()
        started = time.monotonic()
        await batcher.submit([1, 2, 3, 4], timeout=5)
        assert time.monotonic() - started < 0.9  # well under max_wait (1 s)
        await batcher.stop()

    run(main())
    assert sizes == [4]


def test_full_queue_refuses_with_queue_full(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()

    def blocked(items: list[int]) -> np.ndarray:
        gate.wait(10)
        return _encode(items)

    async def main() -> None:
        batcher = DynamicBatcher(
            blocked, executor=executor, max_batch_size=2, max_wait_ms=0, max_queue=4
        )
        batcher.start()
        first = asyncio.create_task(batcher.submit([1, 2], timeout=10))  # taken by the worker
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(batcher.submit([3, 4, 5, 6], timeout=10))  # fills the queue
        await asyncio.sleep(0.05)
        assert batcher.queue_depth == 4
        with pytest.raises(QueueFull):
            await batcher.submit([7], timeout=10)
        gate.set()
        assert (await first).shape == (2, 2)
        assert (await queued)[:, 0].tolist() == [3, 4, 5, 6]
        await batcher.stop()

    run(main())


def test_request_past_its_deadline_gets_deadline_exceeded(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    seen: list[list[int]] = []

    def blocked(items: list[int]) -> np.ndarray:
        seen.append(items)
        gate.wait(10)
        return _encode(items)

    async def main() -> None:
        batcher = DynamicBatcher(blocked, executor=executor, max_batch_size=1, max_wait_ms=0)
        batcher.start()
        busy = asyncio.create_task(batcher.submit([1], timeout=10))
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit([2], timeout=0.1)
        gate.set()
        await busy
        # The expired request is dropped, not computed: the next one is served next.
        assert (await batcher.submit([3], timeout=5))[0, 0] == 3
        await batcher.stop()

    run(main())
    assert [2] not in seen


def test_a_failing_batch_fails_its_requests_and_the_worker_survives(
    executor: ThreadPoolExecutor,
) -> None:
    def flaky(items: list[int]) -> np.ndarray:
        if 13 in items:
            raise RuntimeError("boom")
        return _encode(items)

    async def main() -> None:
        batcher = DynamicBatcher(flaky, executor=executor, max_batch_size=8, max_wait_ms=0)
        batcher.start()
        with pytest.raises(RuntimeError, match="boom"):
            await batcher.submit([13], timeout=5)
        assert (await batcher.submit([5], timeout=5))[0, 1] == 10
        await batcher.stop()

    run(main())


def test_wrong_number_of_outputs_is_an_error_not_a_mixup(executor: ThreadPoolExecutor) -> None:
    async def main() -> None:
        batcher = DynamicBatcher(
            lambda items: _encode(items)[:-1], executor=executor, max_wait_ms=0
        )
        batcher.start()
        with pytest.raises(RuntimeError, match="for 2 inputs"):
            await batcher.submit([1, 2], timeout=5)
        await batcher.stop()

    run(main())
