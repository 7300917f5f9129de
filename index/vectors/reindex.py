"""Re-indexing a collection without re-embedding: a new index of another spec is built
from the stored vectors while the old one serves, measured (``index.vectors.advice``), caught up
with what was written meanwhile, and swapped in under the collection's lock together
with the spec stored in SQLite, so a search sees one index or the other, never neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from index.catalogue.rows import load_vectors, max_tombstone
from index.errors import UnknownCollection
from index.live import Side
from index.types import Modality
from index.vectors.advice import IndexReport, check_trainable, faiss_only, measure
from index.vectors.backend import VectorBackend

if TYPE_CHECKING:
    from index.collections import CollectionStore

READ_BATCH = 65_536


@dataclass
class Built:
    index: VectorBackend
    labels: np.ndarray  # what the index was built from
    report: IndexReport


def stored_vectors(
    store: CollectionStore, name: str, modality: Modality
) -> tuple[np.ndarray, np.ndarray]:
    """Every stored vector of one modality, in label order."""
    labels: list[int] = []
    chunks = []
    after = 0
    while True:
        got, _, vectors = store.vectors_after(name, modality, after, READ_BATCH)
        if not got:
            break
        labels += got
        chunks.append(vectors)
        after = got[-1]
    d = store.get(name).dim
    xb = np.concatenate(chunks) if chunks else np.zeros((0, d), np.float32)
    return np.array(labels, dtype=np.int64), np.ascontiguousarray(xb, dtype=np.float32)


@dataclass(frozen=True)
class AdviceSample:
    """What index advice measures on: a sample of one modality's vectors, and the specs
    asked for (checked: each in the grammar and trainable on the sample)."""

    modality: Modality
    labels: np.ndarray
    vectors: np.ndarray
    specs: list[str] | None


def advice_sample(
    store: CollectionStore,
    name: str,
    modality: Modality | None = None,
    sample: int = 5000,
    specs: list[str] | None = None,
) -> AdviceSample:
    """A sample of a collection's vectors (of ``modality``, by default the one with
    more) for ``index.vectors.advice.advise``."""
    backends = faiss_only(store.backends)
    info = store.serving(name)
    modality = modality or max(Modality, key=lambda m: info.counts.get(m, 0))
    labels, xb = stored_vectors(store, name, modality)
    if len(labels) > sample:
        keep = np.sort(np.random.default_rng(0).choice(len(labels), sample, replace=False))
        labels, xb = labels[keep], xb[keep]
    checked = None
    if specs:
        checked = [check_trainable(backends, info.dim, s, len(labels)) for s in specs]
    return AdviceSample(modality, labels, xb, checked)


def build_new_index(
    store: CollectionStore,
    name: str,
    spec: str,
    on_built: Callable[[Modality, IndexReport], None] | None = None,
) -> dict[Modality, Built]:
    """The collection's vectors in an index of ``spec``, per modality, measured."""
    backends = faiss_only(store.backends)
    built: dict[Modality, Built] = {}
    for m in Modality:
        labels, xb = stored_vectors(store, name, m)
        index, report = measure(backends, spec, labels, xb)
        built[m] = Built(index, labels, report)
        if on_built is not None:
            on_built(m, report)
    return built


def switch_index(
    store: CollectionStore,
    name: str,
    uid: str,
    spec: str,
    built: dict[Modality, Built],
    report: dict[str, Any],
) -> None:
    """Catch the new indexes up and serve from them, with ``spec`` and ``report`` stored.
    The catch-up compares labels, not tombstones (a dump may have pruned those): what
    was deleted since the read leaves, what was added (newer labels) joins."""
    with store.db.write_lock:
        c = store.get(name)
        if c.uid != uid:
            raise UnknownCollection(f"collection {name!r} was deleted (and created again)")
        conn = store.db.reader()
        with c.lock.write():
            for m, b in built.items():
                now = np.array(
                    [
                        r[0]
                        for r in conn.execute(
                            "SELECT label FROM items WHERE collection = ? AND modality = ?",
                            (name, m.value),
                        )
                    ],
                    dtype=np.int64,
                )
                b.index.remove(np.setdiff1d(b.labels, now))
                mark = int(b.labels.max()) if len(b.labels) else 0
                labels, xb = load_vectors(conn, name, m, c.dim, min_label=mark)
                b.index.add(labels, xb)
                b.index.train()
                label_mark = max(mark, int(labels.max()) if len(labels) else 0)
                c.sides[m] = Side(b.index, label_mark, max_tombstone(conn), dirty=1)
            with store.db.locked_transaction() as conn:
                conn.execute("UPDATE collections SET index_spec = ? WHERE name = ?", (spec, name))
                conn.execute(
                    "INSERT INTO index_reports (uid, report) VALUES (?, ?)"
                    " ON CONFLICT (uid) DO UPDATE SET report = excluded.report",
                    (uid, json.dumps(report)),
                )
            c.spec = spec
            c.index_report = report
