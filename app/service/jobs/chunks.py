"""One chunk path for every index engine (in process, on Ray).

What an index job reports must not depend on where its vectors were computed, so
everything both engines have to agree on is written here once: which records fail before
any work (``check``), which stored images may come back unchanged (``expected``), when a
stop is a server stopping and when a cancel (``stopping``), and the accounting of a chunk
(failed, unchanged and new images and texts, captions whose image was refused, progress)
committed with the chunk's items in one transaction (``commit``). An engine supplies only
how a chunk's records become outcomes and vectors.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from app.service.config import Settings
from app.service.engine import Engine
from app.service.jobs.loop import shown
from app.service.limits import Limits
from app.service.search.retrieval import Retrieval
from index import CollectionStore, Job, JobStore, Modality, NewItem, Progress
from index.types import StoredVersion
from index.values import InvalidValue, check_item
from models.sources import SourceRecord, open_source


class ImageOutcome(Protocol):
    """What an engine learnt of one image record: refused, unchanged, or new."""

    @property
    def error(self) -> str | None: ...
    @property
    def unchanged(self) -> bool: ...
    @property
    def media_type(self) -> str | None: ...
    @property
    def sha256(self) -> str | None: ...


O = TypeVar("O", bound=ImageOutcome)


@dataclass
class SortedChunk(Generic[O]):
    """A chunk's records to store (texts, then images with their outcomes), in the order
    of ``items``, with the progress the chunk adds."""

    records: list[SourceRecord]
    texts: list[SourceRecord]
    images: list[tuple[SourceRecord, O]]
    progress: Progress

    @property
    def items(self) -> list[NewItem]:
        items = [NewItem(r.id, Modality.TEXT, r.metadata, text=r.text) for r in self.texts]
        items += [
            NewItem(
                r.id, Modality.IMAGE, r.metadata, media_type=o.media_type, content_sha256=o.sha256
            )
            for r, o in self.images
        ]
        return items

    @property
    def seqs(self) -> list[int]:
        """The source position of each of ``items``."""
        return [r.seq for r in self.texts] + [r.seq for r, _ in self.images]


def source_root(settings: Settings, collection: str | None, scoped: Any) -> Path:
    """Where a job's sources lie: the import root, or for a key that opens only some
    collections (``scoped``), the collection's own folder in it, ``<import root>/<name>/``:
    such a key never reads what another collection's sources hold."""
    root = settings.import_root_dir
    return root / str(collection) if scoped else root


IMPORT_BATCH = 256  # images per encoder call in batch jobs


@dataclass(frozen=True)
class IngestParts:
    """What both index engines (in process and on Ray) work with: each is built from these,
    neither from the other."""

    settings: Settings
    store: CollectionStore
    jobs: JobStore
    engine: Engine
    retrieval: Retrieval

    def book(self, job: Job) -> ChunkBook:
        """The job's chunk accounting."""
        return ChunkBook(job, self.store, self.jobs, self.retrieval, self.retrieval.limits)

    def records(self, book: ChunkBook) -> Iterator[SourceRecord]:
        """The job's records from its last committed one, under the root its key may read."""
        job = book.job
        return book.records(source_root(self.settings, job.collection, job.params.get("scoped")))


class ChunkBook:
    """One index job's chunk accounting, whichever engine computes its vectors."""

    def __init__(
        self,
        job: Job,
        store: CollectionStore,
        jobs: JobStore,
        retrieval: Retrieval,
        limits: Limits,
    ) -> None:
        assert job.collection is not None
        self.job = job
        self.collection = job.collection
        self.store = store
        self.jobs = jobs
        self.retrieval = retrieval
        self.limits = limits
        # Image ids the previous chunk refused: their captions may follow in this one.
        self._refused: set[str] = set()

    def records(self, import_root: Path) -> Iterator[SourceRecord]:
        """The job's source from its last committed record on (the total set once)."""
        params = self.job.params
        source = open_source(import_root, params["source"], params.get("format"))
        self.store.serving(self.collection)
        if self.job.total is None:
            self.jobs.set_total(self.job.id, source.count())
        return itertools.islice(source.records(), self.job.cursor, None)

    def check(self, records: Sequence[SourceRecord]) -> list[SourceRecord]:
        """A record the store would refuse is a failed record, not a failed job."""
        return [self._check(r) for r in records]

    def _check(self, record: SourceRecord) -> SourceRecord:
        if record.error is not None:
            return record
        try:
            check_item(record.id, record.text, record.metadata)
        except InvalidValue as exc:
            return replace(record, error=str(exc))
        if record.text is not None and (why := self.limits.text_error(record.text)):
            return replace(record, error=why)
        return record

    def existing(self, records: Sequence[SourceRecord]) -> dict[str, StoredVersion]:
        return self.store.existing(self.collection, [r.id for r in records if r.error is None])

    @staticmethod
    def expected(
        records: Sequence[SourceRecord], existing: Mapping[str, StoredVersion], version: str
    ) -> dict[str, str]:
        """The digest each image record's item holds already under ``version``: a file
        with those bytes comes back unchanged, without being decoded."""
        return {
            r.id: known.content_sha256
            for r in records
            if (known := existing.get(r.id)) is not None
            and known.modality is Modality.IMAGE
            and known.model_version == version
            and known.content_sha256 is not None
        }

    def sort(
        self,
        records: Sequence[SourceRecord],
        outcomes: Mapping[int, O],
        existing: Mapping[str, StoredVersion],
        version: str,
        seconds: float,
    ) -> SortedChunk[O]:
        """The chunk's accounting. ``outcomes`` holds, by source position, what became of
        each image record that passed ``check``. A caption whose image was refused (here or
        at the end of the chunk before) fails with it."""
        failed = 0
        errors: list[dict[str, Any]] = []
        counts: collections.Counter[str] = collections.Counter()
        refused: set[str] = set()

        def fail(record: SourceRecord, reason: str) -> None:
            nonlocal failed
            failed += 1
            counts[f"{_plural(record.kind)}_failed"] += 1
            if record.kind == "image":
                refused.add(record.id)
            errors.append({"item": shown(record.id), "seq": record.seq, "reason": shown(reason)})

        images: list[tuple[SourceRecord, O]] = []
        for r in records:
            if r.error is not None:
                fail(r, r.error)
            elif r.kind == "image":
                outcome = outcomes.get(r.seq)
                if outcome is None:
                    fail(r, "the record names no image file")
                elif outcome.error is not None:
                    fail(r, outcome.error)
                elif outcome.unchanged:
                    counts["images_unchanged"] += 1
                else:
                    images.append((r, outcome))
        texts: list[SourceRecord] = []
        for r in records:
            if r.error is not None or r.kind != "text":
                continue
            image_id = r.metadata.get("image_id")
            if isinstance(image_id, str) and image_id in refused | self._refused:
                fail(r, f"its image {image_id!r} was refused")
                continue
            known = existing.get(r.id)
            if known and known.text == r.text and known.model_version == version:
                counts["texts_unchanged"] += 1
            else:
                texts.append(r)
        counts["images_new"] += len(images)
        counts["texts_new"] += len(texts)
        self._refused = refused
        errors.sort(key=lambda e: int(e["seq"]))
        unchanged = counts["images_unchanged"] + counts["texts_unchanged"]
        progress = Progress(
            records[-1].seq + 1,
            unchanged + len(texts) + len(images),
            failed,
            errors,
            seconds,
            dict(counts),
        )
        return SortedChunk(list(records), texts, images, progress)

    def commit(
        self, chunk: SortedChunk[O], vectors: Callable[[SortedChunk[O], str], np.ndarray]
    ) -> None:
        """Store the chunk's items with the job's progress in one transaction.
        ``vectors(chunk, version)`` gives the vectors of ``chunk.items`` under a model
        version: the one the collection holds, again if an activation switched it."""
        items = chunk.items
        if not items:
            self.jobs.advance(self.job.id, chunk.progress)
            return
        self.retrieval.add_blocking(
            self.collection,
            lambda version: (items, vectors(chunk, version)),
            extra=self.jobs.recorder(self.job.id, chunk.progress),
            uid=self.job.params.get("collection_uid"),
        )


def _plural(kind: str) -> str:
    return "images" if kind == "image" else "texts"
