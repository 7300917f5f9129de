"""Searches arriving together are ranked together; each gets its own pages or its own
group's error. And the engine's threads: few for a few queries, torch's default for jobs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from app.service.config import Settings
from app.service.engine import SMALL_BATCH, Engine
from app.service.metrics import Metrics
from app.service.search import queue as queue_module
from app.service.search.queue import SearchQueue
from app.service.search.ranking import Page, SearchSpec
from index import UnknownCollection
from models.encoder import ClipEncoder
from tests.helpers import TINY

Call = tuple[str, str, int]


class Ranker:
    """Ranks by returning, for each query, a page naming its collection and its vector's
    first value; records every call; the first call waits until released, so the searches
    submitted meanwhile pile up."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(
        self, name: str, version: str, vectors: Sequence[np.ndarray], specs: Sequence[SearchSpec]
    ) -> list[Page]:
        self.calls.append((name, version, len(vectors)))
        self.started.set()
        self.release.wait(10)
        if name == "gone":
            raise UnknownCollection("collection 'gone' does not exist")
        return [Page([], int(v[0])) for v in vectors]


def vec(i: float) -> np.ndarray:
    return np.array([i, 0.0], dtype=np.float32)


def test_searches_waiting_together_are_ranked_in_one_call_per_collection() -> None:
    asyncio.run(_together())


async def _together() -> None:
    ranker = Ranker()
    queue = SearchQueue(ranker, workers=1)
    first = asyncio.ensure_future(queue.search("a", "v1", [vec(0)], [SearchSpec()]))
    await asyncio.to_thread(ranker.started.wait, 10)
    # While the first is being ranked: three more on "a" (one of two queries), one on "b".
    later = [
        asyncio.ensure_future(queue.search("a", "v1", [vec(1)], [SearchSpec()])),
        asyncio.ensure_future(queue.search("b", "v1", [vec(2)], [SearchSpec()])),
        asyncio.ensure_future(
            queue.search("a", "v1", [vec(3), vec(4)], [SearchSpec(), SearchSpec(k=3)])
        ),
        asyncio.ensure_future(queue.search("a", "v2", [vec(5)], [SearchSpec()])),
    ]
    await asyncio.sleep(0.05)
    ranker.release.set()
    pages = await asyncio.gather(first, *later)
    assert [[p.next_offset for p in ps] for ps in pages] == [[0], [1], [2], [3, 4], [5]]
    # One call for the first, then one per (collection, version) for all that waited.
    assert ranker.calls[0] == ("a", "v1", 1)
    assert sorted(ranker.calls[1:]) == [("a", "v1", 3), ("a", "v2", 1), ("b", "v1", 1)]


def test_an_error_fails_only_its_groups_searches_and_a_caller_that_left_is_skipped() -> None:
    asyncio.run(_errors())


async def _errors() -> None:
    ranker = Ranker()
    queue = SearchQueue(ranker, workers=1)
    blocker = asyncio.ensure_future(queue.search("a", "v1", [vec(0)], [SearchSpec()]))
    await asyncio.to_thread(ranker.started.wait, 10)
    gone = asyncio.ensure_future(queue.search("gone", "v1", [vec(1)], [SearchSpec()]))
    left = asyncio.ensure_future(queue.search("a", "v1", [vec(2)], [SearchSpec()]))
    fine = asyncio.ensure_future(queue.search("a", "v1", [vec(3)], [SearchSpec()]))
    await asyncio.sleep(0.05)
    left.cancel()  # its client went away while it waited
    ranker.release.set()
    assert (await blocker)[0].next_offset == 0
    with pytest.raises(UnknownCollection):
        await gone
    assert (await fine)[0].next_offset == 3
    assert left.cancelled()
    assert ("a", "v1", 1) in ranker.calls[1:]  # the one that left was not ranked
    # The queue still works after all that.
    assert (await queue.search("b", "v1", [vec(7)], [SearchSpec()]))[0].next_offset == 7


class Busy(Ranker):
    """Takes 0.1 s a call after the first (which waits to be released), and records how
    many heavy calls ran at once and which calls overlapped a heavy one."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.heavy_now = 0
        self.most_heavy = 0
        self.beside_heavy: list[str] = []

    def __call__(
        self, name: str, version: str, vectors: Sequence[np.ndarray], specs: Sequence[SearchSpec]
    ) -> list[Page]:
        heavy = sum(s.k for s in specs) > 100
        with self.lock:
            if not heavy and self.heavy_now:
                self.beside_heavy.append(name)
            self.heavy_now += heavy
            self.most_heavy = max(self.most_heavy, self.heavy_now)
        try:
            if self.calls:
                self.calls.append((name, version, len(vectors)))
                threading.Event().wait(0.1)
                return [Page([], int(v[0])) for v in vectors]
            return super().__call__(name, version, vectors, specs)
        finally:
            with self.lock:
                self.heavy_now -= heavy


def test_light_searches_go_first_and_heavy_ones_take_one_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asyncio.run(_fair(workers=1))  # the order
    ranker = asyncio.run(_fair(workers=2))
    assert ranker.most_heavy == 1  # the other worker stayed free ...
    assert "light" in ranker.beside_heavy  # ... and served the light search meanwhile
    # A search that waited past AGE_S goes first whatever it costs.
    monkeypatch.setattr(queue_module, "AGE_S", 0.0)
    assert asyncio.run(_fair(workers=1)).calls[1][0] == "a"


async def _fair(workers: int) -> Busy:
    ranker = Busy()
    queue = SearchQueue(ranker, workers=workers)
    blocker = asyncio.ensure_future(queue.search("block", "v1", [vec(0)], [SearchSpec()]))
    await asyncio.to_thread(ranker.started.wait, 10)
    deep = [SearchSpec(k=1100)] * 8  # 8,816 hits: two do not fit in one batch
    heavy = [
        asyncio.ensure_future(queue.search(name, "v1", [vec(i)] * 8, deep))
        for i, name in enumerate("aabbc", 1)
    ]
    await asyncio.sleep(0.01)
    light = asyncio.ensure_future(queue.search("light", "v1", [vec(9)], [SearchSpec(k=1)]))
    await asyncio.sleep(0.01)
    ranker.release.set()
    await asyncio.gather(blocker, *heavy, light)
    names = [c[0] for c in ranker.calls]
    if workers == 1 and queue_module.AGE_S > 0:
        assert names[1] == "light", names  # before the heavy ones that came first
        assert names.count("a") == 2, names  # BATCH_HITS kept them apart
    return ranker


def test_a_few_queries_are_encoded_on_one_thread_and_jobs_on_torchs_default(
    tiny_encoder: ClipEncoder, tmp_path: Path
) -> None:
    asyncio.run(_threads(tiny_encoder, tmp_path))


async def _threads(tiny_encoder: ClipEncoder, tmp_path: Path) -> None:
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # more than small batches use, whatever the suite set
    default = torch.get_num_threads()
    engine = Engine(tiny_encoder, Settings(**{**TINY, "data_dir": tmp_path}), Metrics())
    engine.start()
    seen: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        seen.append(torch.get_num_threads())
        return tiny_encoder.encode_texts(texts)

    try:
        await engine.texts.submit([(encode, "a red circle")], 10)
        await engine.texts.submit([(encode, f"text {i}") for i in range(SMALL_BATCH)], 10)
        job_threads = await asyncio.to_thread(engine.run_model, torch.get_num_threads)
        await engine.texts.submit([(encode, "a blue square")], 10)
    finally:
        await engine.stop()
        after = torch.get_num_threads()
        torch.set_num_threads(saved)
    assert seen[0] == 1 and job_threads == default and seen[-1] == 1
    assert after == default  # put back after each small batch
    assert all(n == default for n in seen[1:-1])  # a batch of SMALL_BATCH or more
