"""The one path every search and every write takes: check the collection, apply the input
limits, embed with the collection's model version, and retry once if an activation
switched the version in between. Routes, batch jobs and the CLI call it; routes only
parse and map."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.engine import Engine, PreparedImage
from app.errors import ApiError, bad_request, too_large
from index import CollectionInfo, CollectionStore, Hit, Modality, ModelMismatch, NewItem

Encode = Callable[[str], Awaitable[np.ndarray]]  # model version -> vectors


@dataclass(frozen=True)
class Query:
    """A query embedded on demand, with whichever version the searched collection holds."""

    modality: Modality
    encode: Encode


class Retrieval:
    def __init__(self, settings: Settings, store: CollectionStore, engine: Engine) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine

    # --- checks -----------------------------------------------------------------------------
    async def collection(self, name: str) -> CollectionInfo:
        """The collection, or 404 before any heavy work."""
        return await run_in_threadpool(self.store.serving, name)

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.settings.max_k:
            raise bad_request(
                f"k must be between 1 and {self.settings.max_k}, got {k}", code="invalid_k"
            )

    def check_texts(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> None:
        limit = self.settings.max_texts_per_request
        if len(texts) > limit:
            raise too_large(f"{len(texts)} texts in one request; the limit is {limit}")
        chars = self.settings.max_text_chars
        for i, text in enumerate(texts):
            if len(text) > chars:
                what = f"text of {ids[i]!r}" if ids else "a text"
                raise too_large(f"{what} has {len(text)} characters; the limit is {chars}")

    def check_files(self, n: int) -> None:
        if n > self.settings.max_files_per_request:
            raise too_large(
                f"{n} files in one request; the limit is {self.settings.max_files_per_request}"
            )

    # --- queries ----------------------------------------------------------------------------
    def text_query(self, text: str | None) -> Query:
        text = (text or "").strip()
        if not text:
            raise bad_request(
                "the query is empty: give a non-blank text or an image", code="empty_query"
            )
        if len(text) > self.settings.max_text_chars:
            raise ApiError(
                413, "too_large", f"query text exceeds {self.settings.max_text_chars} characters"
            )

        async def encode(version: str) -> np.ndarray:
            return await self.engine.embed_texts([text], version)

        return Query(Modality.TEXT, encode)

    async def image_query(self, data: bytes, label: str) -> Query:
        prepared = await self.engine.prepare_images([data], [label])

        async def encode(version: str) -> np.ndarray:
            return await self.engine.embed_prepared(prepared, version)

        return Query(Modality.IMAGE, encode)

    async def search(
        self,
        name: str,
        query: Query,
        k: int,
        target: Modality | None = None,
        where: dict[str, Any] | None = None,
    ) -> list[Hit]:
        """The best ``k`` items of ``target`` (default: the other modality). During an
        activation a collection can switch version between embedding and searching; the
        search then runs once more, so every answer comes from one version."""
        self.check_k(k)
        for attempt in (1, 2):
            info = await self.collection(name)
            try:
                xq = await query.encode(info.model_version)  # may be unloaded meanwhile
                hits = await run_in_threadpool(
                    self.store.search,
                    name,
                    target or query.modality.other,
                    xq,
                    k,
                    model_version=info.model_version,
                    where=where,
                )
                return hits[0]
            except ModelMismatch:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # --- writes -----------------------------------------------------------------------------
    async def add_texts(self, name: str, items: Sequence[NewItem]) -> list[str]:
        await self.collection(name)
        texts = [it.text or "" for it in items]
        self.check_texts(texts, [it.id for it in items])

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
        """Embed with the active version and store. If an activation switched the
        collection between the two steps, embed again with the version now active."""
        for attempt in (1, 2):
            version = self.engine.version
            vectors = await encode(version)
            try:
                stored: list[str] = await run_in_threadpool(
                    self.store.upsert, name, items, vectors, version
                )
                return stored
            except ModelMismatch:
                if not self._retry(attempt, version):
                    raise
        raise AssertionError("unreachable")

    def add_blocking(
        self,
        name: str,
        embed: Callable[[str], tuple[list[NewItem], np.ndarray]],
        extra: Callable[[sqlite3.Connection], None] | None = None,
        uid: str | None = None,
    ) -> None:
        """``_add`` for a batch job's thread: ``embed`` gives the items and their vectors
        for a model version (on the model thread), committed with ``extra``."""
        for attempt in (1, 2):
            version = self.engine.version
            items, vectors = embed(version)
            try:
                self.store.upsert(name, items, vectors, version, extra=extra, uid=uid)
                return
            except ModelMismatch:
                if not self._retry(attempt, version):
                    raise

    def _retry(self, attempt: int, version: str) -> bool:
        """Whether a write refused for its model version is worth one more try: the first
        time, and only if the active version changed since it was embedded."""
        return attempt == 1 and self.engine.version != version
