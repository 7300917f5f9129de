"""The one path every search and every write takes: check the collection, apply the input
limits, embed with the collection's model version, and retry once if an activation
switched the version in between. Routes, batch jobs and the CLI call it; routes only
parse and map."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from app.service.engine import Engine, PreparedImage
from app.service.errors import Invalid, ServiceError, TooLarge
from app.service.limits import Limits
from app.service.search import groups as grouping
from app.service.search import hybrid
from app.service.search.cost import facet_work, filter_work, word_work
from app.service.search.queue import SearchQueue
from app.service.search.ranking import Budget, Page, SearchSpec, combine, first_depth, rank
from app.service.tagging import Tagger
from app.service.threads import run_in_threadpool
from index import (
    CollectionInfo,
    CollectionStore,
    Hit,
    Modality,
    ModelMismatch,
    NewItem,
    UnknownItem,
)
from index.catalogue.base import Conn
from index.facets import facet_counts
from index.filter_tree import as_tree

Encode = Callable[[str], Awaitable[np.ndarray]]  # model version -> vectors
T = TypeVar("T")
FACET_VALUES = 20  # the most frequent values a facet lists


def _switched(current: Callable[[], str], tried: str) -> str | None:
    """After a ``ModelMismatch``, the version to try once more: the one now current, if an
    activation switched away from ``tried`` meanwhile; else None (the mismatch stands)."""
    now = current()
    return None if now == tried else now


async def retry_on_switch(current: Callable[[], str], work: Callable[[str], Awaitable[T]]) -> T:
    """``work`` with the current model version, and once more with the new one if an
    activation switched versions in between (every answer comes from one version)."""
    version = current()
    try:
        return await work(version)
    except ModelMismatch:
        if (now := _switched(current, version)) is None:
            raise
    return await work(now)


def retry_on_switch_blocking(current: Callable[[], str], work: Callable[[str], T]) -> T:
    """``retry_on_switch`` for a job's thread."""
    version = current()
    try:
        return work(version)
    except ModelMismatch:
        if (now := _switched(current, version)) is None:
            raise
    return work(now)


@dataclass(frozen=True)
class Query:
    """A query embedded on demand, with whichever version the searched collection holds."""

    modality: Modality
    encode: Encode


@dataclass(frozen=True)
class Part:
    """One part of a combined query: a text or an image (``query``) or a stored item
    (``item_id``: its vector, not encoded again), with its weight. An item is left out of
    the results unless ``exclude`` is false."""

    weight: float = 1.0
    query: Query | None = None
    item_id: str | None = None
    exclude: bool = True


class Retrieval:
    def __init__(
        self,
        limits: Limits,
        store: CollectionStore,
        engine: Engine,
        observe_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.limits = limits
        self.store = store
        self.engine = engine
        self.tagger = Tagger(store, engine)  # a collection's label set tags its pictures
        self.searches = SearchQueue(self._rank_all, observe=observe_batch)

    # --- checks -----------------------------------------------------------------------------
    async def collection(self, name: str) -> CollectionInfo:
        """The collection, or 404 before any heavy work."""
        return await run_in_threadpool(self.store.serving, name)

    def space_of(self, name: str) -> str:
        """The model version (embedding space) of the collection's vectors, or 404: no
        thread hop, no lock, so every search and upload asks it first."""
        return self.store.model_version_of(name)

    # --- queries ----------------------------------------------------------------------------
    def text_query(self, text: str | None) -> Query:
        text = (text or "").strip()
        if not text:
            raise Invalid(
                "the query is empty: give a non-blank text or an image", code="empty_query"
            )
        if len(text) > self.limits.max_text_chars:
            raise TooLarge(f"query text exceeds {self.limits.max_text_chars} characters")

        async def encode(version: str) -> np.ndarray:
            return await self.engine.embed_texts([text], version, query=True)

        return Query(Modality.TEXT, encode)

    async def image_query(self, data: bytes, label: str) -> Query:
        prepared = await self.engine.prepare_images([data], [label])

        async def encode(version: str) -> np.ndarray:
            return await self.engine.embed_prepared(prepared, version)

        return Query(Modality.IMAGE, encode)

    async def search(self, name: str, parts: Sequence[Part], spec: SearchSpec) -> Page:
        """A page of the ranking for the weighted sum of ``parts`` (see ``ranking``).
        During an activation a collection can switch version between embedding and
        searching; the search then runs once more, so every answer comes from one
        version."""
        pages = await self.search_many(name, [(parts, spec)])
        return pages[0]

    async def search_many(
        self, name: str, queries: Sequence[tuple[Sequence[Part], SearchSpec]]
    ) -> list[Page]:
        """Several searches of one collection: embedded together (the encoder batches
        them) and searched as one matrix per target and filter, as FAISS does fastest."""
        for _, spec in queries:
            self.check_page(spec)
        # Each filter is parsed here, once, and carried down as a tree (``index.filter_tree``).
        queries = [
            (parts, replace(hybrid.checked(spec), where=as_tree(spec.where)))
            for parts, spec in queries
        ]
        # A lexical or hybrid search reads its rankings fusion_depth deep; a filter and a
        # query's words count for the rows they read, a filter shared by queries once.
        filters = {spec.where: filter_work(self.store, name, spec) for _, spec in queries}
        words = [
            word_work(self.store, name, spec) + facet_work(self.store, name, spec)
            for _, spec in queries
        ]
        queries = [
            (parts, replace(spec, work=filters[spec.where] + w))
            for (parts, spec), w in zip(queries, words, strict=True)
        ]
        self.limits.check_search_hits(
            [
                (spec.offset + spec.k) * spec.group_size
                if spec.mode == "vector"
                else hybrid.fusion_depth(spec, self.limits.max_k)
                for _, spec in queries
            ]
            + words
            + list(filters.values())
        )
        # Deepening may fetch as much again as one query going to its deepest would.
        budget = Budget(8 * self.limits.max_k, self.limits.search_timeout_s)

        async def named(i: int, parts: Sequence[Part], version: str) -> Any:
            """A query's vector; what goes wrong names the query (``queries[i]: ...``)."""
            try:
                return await self._vector(name, parts, version)
            except ServiceError as exc:
                raise exc.prefixed(f"queries[{i}]: ") from exc
            except UnknownItem as exc:
                raise UnknownItem(f"queries[{i}]: {exc}") from exc

        async def once(version: str) -> list[Page]:
            vectors = await asyncio.gather(
                *(named(i, parts, version) for i, (parts, _) in enumerate(queries))
            )
            planned = [
                replace(
                    spec,
                    target=spec.target or default_target,
                    exclude=spec.exclude | own,
                    budget=budget,
                )
                for (_, spec), (_, default_target, own) in zip(queries, vectors, strict=True)
            ]
            rows = [v for v, _, _ in vectors]
            try:
                return await asyncio.wait_for(
                    self._search(name, version, rows, planned), max(budget.left_s(), 0)
                )
            except TimeoutError:
                raise budget.expired() from None

        return await retry_on_switch(lambda: self.space_of(name), once)

    async def _search(
        self, name: str, version: str, rows: list[np.ndarray], specs: list[SearchSpec]
    ) -> list[Page]:
        """Each query's page, through the fair search queue (``_rank_all``)."""
        return await self.searches.search(name, version, rows, specs)

    def check_page(self, spec: SearchSpec) -> None:
        self.limits.check_page(spec.k, spec.offset)
        grouping.check(spec, self.limits.max_k)

    async def _vector(
        self, name: str, parts: Sequence[Part], version: str
    ) -> tuple[np.ndarray, Modality, frozenset[str]]:
        """The query's vector, the modality searched by default, and the ids of the items
        it is made of. With a stored item among the parts: the first item's modality (more
        like this); else the other modality of its first text or image."""
        weighted: list[tuple[float, np.ndarray]] = []
        own: set[str] = set()
        default: Modality | None = None
        item_modality: Modality | None = None
        for part in parts:
            if part.item_id is not None:
                modality, vector = await run_in_threadpool(
                    self.store.item_vector, name, part.item_id, version
                )
                item_modality = item_modality or modality
                if part.exclude:
                    own.add(part.item_id)
            else:
                assert part.query is not None
                default = default or part.query.modality.other
                vector = (await part.query.encode(version))[0]
            weighted.append((part.weight, vector))
        combined = combine(weighted)
        if combined is None:
            raise Invalid(
                "the query's parts cancel out: their weighted sum is zero", code="empty_query"
            )
        target = item_modality or default
        assert target is not None
        return combined, target, frozenset(own)

    def _rank_all(
        self, name: str, version: str, vectors: Sequence[np.ndarray], specs: Sequence[SearchSpec]
    ) -> list[Page]:
        """Each query's page: the vector ranking, the lexical one from the catalogue, the
        two fused for ``hybrid`` (``hybrid``); queries that share a target and a filter are
        searched as one matrix at the deepest first depth among them. The catalogue's
        reads stop at the latest deadline of the requests in the batch."""
        deadlines = [s.budget.deadline for s in specs if s.budget is not None]
        deadline = max(deadlines) if deadlines else None
        depths = [hybrid.fusion_depth(s, self.limits.max_k) for s in specs]
        asked = [
            s if s.mode == "vector" else hybrid.vector_part(s, depths[i])
            for i, s in enumerate(specs)
        ]
        pages: list[Page] = [Page([], None)] * len(specs)
        # Each filter's rows are read once, for every ranking of every query that has it.
        needed: dict[Any, set[Modality]] = {}
        for spec, shown in zip(asked, specs, strict=True):
            if spec.where is not None:
                sides = needed.setdefault(spec.where, set())
                sides |= {Modality.TEXT} if shown.mode != "vector" else set()
                sides |= {spec.target} if shown.mode != "lexical" and spec.target else set()
        allowed = {
            where: self.store.allowed(name, where, sorted(sides), deadline)
            for where, sides in needed.items()
        }
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, spec in enumerate(asked):
            if specs[i].mode == "lexical":
                continue
            key = (spec.target, spec.where, spec.dedup is not None)
            groups.setdefault(key, []).append(i)
        max_depth = 4 * self.limits.max_k
        for members in groups.values():
            first = asked[members[0]]
            assert first.target is not None
            depth = max(first_depth(asked[i]) for i in members)

            def fetch(depth: int, rows: np.ndarray, spec: SearchSpec = first) -> list[list[Hit]]:
                assert spec.target is not None
                return self.store.search(
                    name,
                    spec.target,
                    rows,
                    depth,
                    model_version=version,
                    where=allowed.get(spec.where),
                    with_vectors=spec.dedup is not None,
                    deadline=deadline,
                )

            matrix = np.stack([vectors[i] for i in members])
            hits = fetch(depth, matrix)
            for i, found in zip(members, hits, strict=True):
                spec, row = asked[i], vectors[i][None, :]
                one = found[: first_depth(spec)]  # as deep as this query alone would ask

                def deeper(depth: int, row: np.ndarray = row) -> list[Hit]:
                    return fetch(depth, row)[0]

                if spec.group_by is not None:
                    pages[i] = grouping.rank_groups(deeper, spec, max_depth, one)
                else:
                    pages[i] = rank(deeper, spec, max_depth, one)
        for i, spec in enumerate(specs):
            if spec.mode == "vector":
                continue
            words = self.store.lexical(
                name, spec.lexical_text or "", depths[i], allowed.get(spec.where), deadline
            )
            ranking = words if spec.mode == "lexical" else hybrid.fused(spec, pages[i].hits, words)
            pages[i] = hybrid.page_of(ranking, spec)
        for i, spec in enumerate(specs):
            if spec.facets:
                target = asked[i].target or Modality.TEXT
                counts = facet_counts(
                    self.store.get(name),
                    self.store.db,
                    target,
                    spec.facets,
                    as_tree(spec.where),
                    FACET_VALUES,
                    deadline,
                )
                pages[i] = replace(pages[i], facets=counts)
        return pages

    # --- writes -----------------------------------------------------------------------------
    async def add_texts(self, name: str, items: Sequence[NewItem]) -> list[str]:
        self.space_of(name)
        texts = [it.text or "" for it in items]
        self.limits.check_texts(texts, [it.id for it in items])

        async def encode(version: str) -> np.ndarray:
            return await self.engine.embed_texts(texts, version)

        return await self._add(name, items, encode)

    async def add_images(
        self, name: str, items: Sequence[NewItem], prepared: Sequence[PreparedImage]
    ) -> list[str]:
        async def encode(version: str) -> np.ndarray:
            return await self.engine.embed_prepared(prepared, version)

        return await self._add(name, items, encode)

    async def _add(self, name: str, items: Sequence[NewItem], encode: Encode) -> list[str]:
        """Embed with the collection's version and store; if an activation (here or on
        another server) switched the collection between the two steps, embed again with
        the version it holds now."""

        async def once(version: str) -> list[str]:
            vectors = await encode(version)
            tagged = await run_in_threadpool(self.tagger.tagged, name, version, items, vectors)
            return await run_in_threadpool(self.store.upsert, name, tagged, vectors, version)

        return await retry_on_switch(lambda: self.space_of(name), once)

    def add_blocking(
        self,
        name: str,
        embed: Callable[[str], tuple[list[NewItem], np.ndarray]],
        extra: Callable[[Conn], None] | None = None,
        uid: str | None = None,
    ) -> None:
        """``_add`` for a batch job's thread: ``embed`` gives the items and their vectors
        for a model version (on the model thread), committed with ``extra``."""

        def once(version: str) -> None:
            items, vectors = embed(version)
            items = self.tagger.tagged(name, version, items, vectors)
            self.store.upsert(name, items, vectors, version, extra=extra, uid=uid)

        retry_on_switch_blocking(lambda: self.space_of(name), once)
