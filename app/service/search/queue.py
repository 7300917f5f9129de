"""Searches that arrive together are searched together.

Each request's embedded queries wait here for a search worker. A worker takes every search
waiting at that moment, groups them by collection and model version, and ranks each group
in one call on a worker thread (``Retrieval._rank_all``: one FAISS matrix search per target
and filter, one SQLite read of the hits). An idle server searches a lone query at once; a
busy one gathers the queries that came in while it was searching, so the thread hops, the
FAISS calls and the SQLite reads are paid per batch instead of per request. A failure
(the collection deleted, its version switched) fails only the searches of its group.

Fair order: a worker takes the cheapest waiting search (in hits, ``ranking.cost``) and,
with it, the waiting searches of the same collection and version that cost at most a few
times as much, up to ``BATCH_HITS`` together, so a lone ``k: 1`` search does not wait
behind a client's batches of deep ones, on its collection or another. Searches over
``SMALL`` hits are heavy, and heavy ones run on one worker at a time: the others stay
free for the light ones. A search that has waited longer than ``AGE_S`` goes first
whatever it costs, so deep searches are not starved either; each is bounded by the
request's hit budget (``Limits.check_search_hits``) and deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from app.service.search.ranking import Page, SearchSpec, cost
from app.service.threads import run_in_threadpool

Rank = Callable[[str, str, Sequence[np.ndarray], Sequence[SearchSpec]], list[Page]]


@dataclass
class _Search:
    name: str
    version: str
    vectors: Sequence[np.ndarray]
    specs: Sequence[SearchSpec]
    future: asyncio.Future[list[Page]]
    cost: int = field(init=False)  # in hits, from the specs (``ranking.cost``)
    since: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.cost = sum(cost(spec) for spec in self.specs)


AGE_S = 1.0  # a search waiting this long goes next, whatever it costs
BATCH_SPREAD = 4  # searches batched with the cheapest cost at most this many times more
SMALL = 1024  # ... or at most this many hits; searches costing more are heavy
BATCH_HITS = 16_384  # a batch stops growing here (a first search costing more goes alone)


class SearchQueue:
    def __init__(
        self, rank: Rank, workers: int = 2, observe: Callable[[int], None] | None = None
    ) -> None:
        self._rank = rank
        self._observe = observe  # the size of each batch
        self._workers = workers  # batches searched at once (searches are CPU work)
        self._pending: list[_Search] = []
        self._running = 0
        self._heavy = False  # a worker is ranking heavy searches
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def search(
        self, name: str, version: str, vectors: Sequence[np.ndarray], specs: Sequence[SearchSpec]
    ) -> list[Page]:
        future: asyncio.Future[list[Page]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Search(name, version, vectors, specs, future))
        if self._running < self._workers:
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while batch := self._next():
                live = [s for s in batch if not s.future.done()]  # not given up meanwhile
                if not live:
                    continue
                if self._observe is not None:
                    self._observe(len(live))
                heavy = any(s.cost > SMALL for s in live)
                self._heavy |= heavy
                try:
                    outcomes = await run_in_threadpool(self._run, live)
                finally:
                    if heavy:
                        self._heavy = False
                for s, outcome in zip(live, outcomes, strict=True):
                    if s.future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        s.future.set_exception(outcome)
                    else:
                        s.future.set_result(outcome)
        except BaseException as exc:  # never leave a caller waiting on a dead worker
            for s in self._pending:
                if not s.future.done():
                    s.future.set_exception(exc)
            self._pending = []
            raise
        finally:
            self._running -= 1

    def _next(self) -> list[_Search]:
        """Takes the next batch off the waiting searches (see the module's fair order):
        empty when nothing waits that this worker may take."""
        self._pending = [s for s in self._pending if not s.future.done()]
        eligible = [s for s in self._pending if not (self._heavy and s.cost > SMALL)]
        if not eligible:
            return []
        oldest = min(eligible, key=lambda s: s.since)
        if time.monotonic() - oldest.since > AGE_S:
            first = oldest
        else:
            first = min(eligible, key=lambda s: s.cost)
        ceiling = max(first.cost * BATCH_SPREAD, SMALL)
        batch, total = [first], first.cost
        for s in eligible:
            if s is first or (s.name, s.version) != (first.name, first.version):
                continue
            if s.cost <= ceiling and total + s.cost <= BATCH_HITS:
                batch.append(s)
                total += s.cost
        taken = {id(s) for s in batch}
        self._pending = [s for s in self._pending if id(s) not in taken]
        return batch

    def _run(self, batch: list[_Search]) -> list[list[Page] | BaseException]:
        """Each search's pages (or the error of its group), one ranking per group."""
        groups: dict[tuple[str, str], list[int]] = {}
        for i, s in enumerate(batch):
            groups.setdefault((s.name, s.version), []).append(i)
        out: list[list[Page] | BaseException] = [[] for _ in batch]
        for (name, version), members in groups.items():
            vectors = [v for i in members for v in batch[i].vectors]
            specs = [spec for i in members for spec in batch[i].specs]
            try:
                pages = self._rank(name, version, vectors, specs)
            except Exception as exc:  # noqa: BLE001 - handed to the group's callers
                for i in members:
                    out[i] = exc
                continue
            start = 0
            for i in members:
                n = len(batch[i].specs)
                out[i] = pages[start : start + n]
                start += n
        return out
