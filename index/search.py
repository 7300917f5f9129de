"""Searching a collection, and reading the stored vector of an item.

An exact (``Flat``) index answers with true cosine scores. An approximate one (HNSW, IVF,
PQ, SQ) is asked for more candidates than wanted, which are then scored again against
their stored vectors: the scores are exact and the order among the candidates is the
exact order. Hits are ordered best first with ties broken by label, so that one ranking
asked for at two depths agrees on its common prefix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.catalogue.base import Catalogue
from index.catalogue.filters import filter_labels
from index.catalogue.rows import ITEM_COLUMNS, SQL_CHUNK, hit_rows, item_from_row
from index.errors import CollectionMoved, ModelMismatch, UnknownItem
from index.filter_tree import Filter, Node, as_tree, keys_of, matches
from index.live import LiveCollection
from index.types import Hit, Item, Modality
from index.vectors.faiss_specs import DEFAULT_SPEC
from index.vectors.milvus_specs import EXACT_TYPES

# An approximate index is asked for this many times the hits wanted, and at least this
# many more: graphs and inverted lists over full vectors (HNSW, IVF-Flat, SQfp16) rank
# nearly exactly and need few; compressed codes (PQ, 4 to 8-bit SQ) reorder more.
RERANK = {"exact-codes": (2, 32), "compressed": (8, 256)}


def candidates(spec: str, k: int) -> int:
    """How deep to search an index built from ``spec`` (a FAISS or a Milvus spec) for ``k``
    hits ranked exactly."""
    if spec == DEFAULT_SPEC or spec in EXACT_TYPES:
        return k
    compressed = "PQ" in spec or "_SQ" in spec or any(f"SQ{b}" in spec for b in (4, 6, 8))
    factor, extra = RERANK["compressed" if compressed else "exact-codes"]
    return max(k * factor, k + extra)


# A filter that keeps more than this share of a collection's items (and more than
# BROAD_MIN of them) is broad: its labels are not read out. The ranking is read as it comes
# instead, each candidate kept if its metadata passes (``filter_tree.matches``, the
# reference the SQL is tested against): a filter keeping 10% of 100,000 items then costs
# about what the search does, not the 10,000 rows it would otherwise read.
BROAD_SHARE = 0.02
BROAD_MIN = 2000
POST_FILTER_GROWTH = 4  # how much deeper each read of a post-filtered ranking goes
POST_FILTER_READ = 64  # candidates whose rows are read at a time


@dataclass(frozen=True, eq=False)
class Allowed:
    """What a filter keeps of one incarnation of a collection: per modality, the sorted
    labels of the items that pass it, or None for a broad filter (the rankings check each
    candidate instead). Read from the catalogue once per search, it serves each of the
    search's rankings (vector and lexical, and the deeper reads of either)."""

    collection: LiveCollection
    where: Node
    labels: dict[Modality, np.ndarray] | None

    def of(self, c: LiveCollection, modality: Modality) -> np.ndarray | None:
        if c is not self.collection:
            # Swapped for a re-embedded copy since the filter was read: its labels are
            # another incarnation's. The caller embeds and searches again.
            raise ModelMismatch(f"collection {c.name!r} moved to another model version")
        return None if self.labels is None else self.labels[modality]


def tree_of(where: Filter | Allowed | None) -> Node | Allowed | None:
    """A filter as a search takes it: read once already (``Allowed``), or parsed."""
    return where if isinstance(where, Allowed) else as_tree(where)


def allowed_labels(
    c: LiveCollection,
    db: Catalogue,
    where: Node,
    modalities: Sequence[Modality],
    deadline: float | None = None,
) -> Allowed:
    """The labels of ``c``'s items of ``modalities`` that pass ``where`` (read until
    ``deadline`` at the latest), or a broad filter's None."""
    kinds = sorted(set(modalities))
    size = sum(int(c.sides[m].index.ntotal) for m in kinds)
    conn = db.reader()
    with db.deadline(conn, deadline):
        cap = max(BROAD_MIN, int(size * BROAD_SHARE))
        labels = filter_labels(db, conn, c.name, kinds, where, cap)
    return Allowed(c, where, labels)


def holds_lists(c: LiveCollection, db: Catalogue, tree: Node, modality: Modality) -> bool:
    """Whether any item of ``c``'s ``modality`` holds a list (or an object) under a key
    ``tree`` tests: one indexed read."""
    keys = sorted(keys_of(tree))
    marks = ", ".join("?" * len(keys))
    row = (
        db.reader()
        .execute(
            "SELECT 1 FROM item_fields WHERE collection = ? AND modality = ?"
            f" AND key IN ({marks}) AND kind = 'a' LIMIT 1",
            (c.name, modality.value, *keys),
        )
        .fetchone()
    )
    return row is not None


def _scope(
    c: LiveCollection,
    db: Catalogue,
    where: Node | Allowed | None,
    modality: Modality,
    deadline: float | None,
) -> tuple[np.ndarray | None, Node | None]:
    """The labels ``where`` keeps of ``modality`` and its tree: (None, None) without a
    filter, (None, tree) for a broad one."""
    if where is None:
        return None, None
    if not isinstance(where, Allowed):
        where = allowed_labels(c, db, where, [modality], deadline)
    return where.of(c, modality), where.where


def search_collection(
    c: LiveCollection,
    db: Catalogue,
    is_current: Callable[[LiveCollection], bool],
    target: Modality,
    xq: np.ndarray,
    k: int,
    *,
    model_version: str,
    where: Node | Allowed | None = None,
    with_vectors: bool = False,
    deadline: float | None = None,
    still_stored: Callable[[LiveCollection], bool] | None = None,
) -> list[list[Hit]]:
    """Best ``k`` items of modality ``target`` for each query row, best first;
    ``where`` keeps only the items that pass a filter (read once beforehand: ``Allowed``);
    ``with_vectors`` puts each hit's stored vector on it. ``is_current`` tells whether
    ``c`` still serves under its name (not swapped for a re-embedded copy).
    ``still_stored`` (a shared catalogue) tells whether the catalogue still holds ``c``
    under its name: asked when hits' rows were gone, since another server may have
    swapped a copy in before this one followed (``CollectionMoved``: follow, retry)."""
    name = c.name
    check_model(c, model_version)
    index = c.sides[target].index
    allowed, tree = _scope(c, db, where, target, deadline)
    broad = tree is not None and allowed is None
    many = allowed is not None and len(allowed) > index.max_allowed
    native = index.native_filters and (broad or many)  # the backend evaluates the filter
    if native and tree is not None and holds_lists(c, db, tree, target):
        # Milvus's expressions cannot say "one of the list's values": checked here.
        native, allowed, broad = False, None, True
    post = broad and not native  # each candidate checked here
    queries = np.ascontiguousarray(xq, dtype=np.float32)
    want = max(8 * k, 200) if post else k
    while True:
        depth = candidates(c.spec, want)
        exact = depth == want
        with c.searching():
            if not is_current(c):
                # Swapped for a re-embedded copy since we looked it up: the caller embeds
                # the query again for the version now there.
                raise ModelMismatch(f"collection {name!r} moved to another model version")
            results = index.search(
                xq, depth, allowed=None if native else allowed, where=tree if native else None
            )
            # Rows are read under the lock too, so a swap cannot delete them in between.
            asked: set[int] = set()
            if post and exact and tree is not None:
                # Candidates in score order, their rows read a few at a time until k pass.
                rows: dict[int, tuple[Any, ...]] = {}
                hits = [
                    _passing(r, k, rows, db, with_vectors, tree, asked)
                    for q, r in zip(queries, results, strict=True)
                ]
            else:
                wanted = sorted({int(x) for r in results for x in r.labels})
                asked.update(wanted)
                rows = hit_rows(db.reader(), wanted, vectors=with_vectors or not exact)
                hits = [
                    _hits(r, q, rows, exact, with_vectors, tree if post else None)
                    for q, r in zip(queries, results, strict=True)
                ]
            if still_stored is not None and len(rows) < len(asked) and not still_stored(c):
                raise CollectionMoved(f"collection {name!r} was replaced by another server")
        # A post-filtered ranking goes deeper until each query has its k, or the index
        # has nothing more to give.
        if not post or all(len(h) >= k for h in hits) or depth >= index.ntotal:
            return [h[:k] for h in hits]
        want *= POST_FILTER_GROWTH


def _passing(
    r: Any,
    k: int,
    rows: dict[int, tuple[Any, ...]],
    db: Catalogue,
    with_vectors: bool,
    tree: Node,
    asked: set[int],
) -> list[Hit]:
    """The first ``k`` candidates of an exact ranking whose metadata passes ``tree`` (and
    any tied with the k-th), reading their rows ``POST_FILTER_READ`` at a time: a broad
    filter keeps one candidate in ten or more, so about ``10 k`` rows are read, not the
    whole depth."""
    labels = [int(x) for x in r.labels]
    found: list[Hit] = []
    for start in range(0, len(labels), POST_FILTER_READ):
        chunk = labels[start : start + POST_FILTER_READ]
        missing = [x for x in chunk if x not in rows]
        asked.update(missing)
        if missing:
            rows.update(hit_rows(db.reader(), missing, vectors=with_vectors))
        scores = r.scores[start : start + POST_FILTER_READ]
        for label, score in zip(chunk, scores, strict=True):
            if len(found) >= k and float(score) < found[k - 1].score:
                found.sort(key=lambda h: (-h.score, h.label))
                return found
            hit = _hit(rows.get(label), label, float(score), None, with_vectors, tree)
            if hit is not None:
                found.append(hit)
                found.sort(key=lambda h: (-h.score, h.label))
    return found


def _hit(
    row: tuple[Any, ...] | None,
    label: int,
    score: float,
    q: np.ndarray | None,
    with_vectors: bool,
    tree: Node | None,
) -> Hit | None:
    """A hit from its row (None: deleted meanwhile, or its metadata does not pass
    ``tree``); with ``q``, scored exactly against its stored vector."""
    if row is None:
        return None
    metadata = json.loads(row[3])
    if tree is not None and not matches(tree, metadata):
        return None
    vector = np.frombuffer(row[5], np.float32) if len(row) > 5 else None
    if q is not None and vector is not None:
        score = float(vector @ q)
    return Hit(
        row[1],
        score,
        Modality(row[2]),
        metadata,
        row[4],
        label=label,
        vector=vector if with_vectors else None,
    )


def _hits(
    r: Any,
    q: np.ndarray,
    rows: dict[int, tuple[Any, ...]],
    exact: bool,
    with_vectors: bool,
    tree: Node | None,
) -> list[Hit]:
    """One query's hits from its index result and the rows read, best first (ties by
    label); with ``tree``, only those whose metadata passes it."""
    found = []
    for label, score in zip(r.labels, r.scores, strict=True):
        hit = _hit(
            rows.get(int(label)), int(label), float(score), None if exact else q, with_vectors, tree
        )
        if hit is not None:
            found.append(hit)
    found.sort(key=lambda h: (-h.score, h.label))
    return found


def item_vector(
    c: LiveCollection, db: Catalogue, item_id: str, model_version: str
) -> tuple[Modality, np.ndarray]:
    """The modality and stored vector of one item (the one its index holds)."""
    name = c.name
    check_model(c, model_version)
    row = (
        db.reader()
        .execute(
            "SELECT modality, embedding, model_version FROM items WHERE collection = ? AND id = ?",
            (name, item_id),
        )
        .fetchone()
    )
    if row is None:
        raise UnknownItem(f"item {item_id!r} does not exist in collection {name!r}")
    if row[2] != c.model_version:  # a swap in between: the caller tries again
        raise ModelMismatch(f"collection {name!r} moved to another model version")
    return Modality(row[0]), np.frombuffer(row[1], np.float32).copy()


def items_by_label(db: Catalogue, name: str, labels: Sequence[int]) -> dict[int, Item]:
    """The items of collection ``name`` stored under each of ``labels`` that exists."""
    out: dict[int, Item] = {}
    unique = list(dict.fromkeys(labels))
    for start in range(0, len(unique), SQL_CHUNK):
        chunk = unique[start : start + SQL_CHUNK]
        marks = ",".join("?" * len(chunk))
        for row in db.reader().execute(
            f"SELECT label, {ITEM_COLUMNS} FROM items WHERE collection = ? AND label IN ({marks})",
            [name, *chunk],
        ):
            out[int(row[0])] = item_from_row(row[1:])
    return out


def vectors_after(
    c: LiveCollection, db: Catalogue, modality: Modality, after: int, limit: int
) -> tuple[list[int], list[str], np.ndarray]:
    """Up to ``limit`` stored vectors of one modality with labels above ``after``, in label
    order: their labels, ids and vectors (for walking a whole collection)."""
    name = c.name
    rows = (
        db.reader()
        .execute(
            "SELECT label, id, embedding FROM items WHERE collection = ? AND modality = ?"
            " AND label > ? ORDER BY label LIMIT ?",
            (name, modality.value, after, limit),
        )
        .fetchall()
    )
    if not rows:
        return [], [], np.zeros((0, c.dim), np.float32)
    vectors = np.frombuffer(b"".join(r[2] for r in rows), np.float32).reshape(len(rows), -1)
    return [int(r[0]) for r in rows], [r[1] for r in rows], vectors


def check_model(c: LiveCollection, model_version: str) -> None:
    if model_version != c.model_version:
        raise ModelMismatch(
            f"collection {c.name!r} holds vectors of model {c.model_version!r}, but the server "
            f"runs {model_version!r}; serve that model or re-create the collection"
        )


def lexical_search(
    c: LiveCollection,
    db: Catalogue,
    text: str,
    depth: int,
    where: Node | Allowed | None,
    deadline: float | None = None,
) -> list[Hit]:
    """The best ``depth`` texts of the collection for the words of ``text`` by BM25
    (``index.catalogue.lexical``), best first, as hits scored by BM25 relevance."""
    conn = db.reader()
    allowed, tree = _scope(c, db, where, Modality.TEXT, deadline)
    post = tree is not None and allowed is None
    want = max(8 * depth, 200) if post else depth
    while True:
        with db.deadline(conn, deadline):
            ranked = db.lexical_labels(conn, c.name, text, want, allowed)
        rows = hit_rows(conn, [label for label, _ in ranked])
        hits = []
        for label, score in ranked:
            row = rows.get(label)
            if row is None:  # deleted between the two reads
                continue
            metadata = json.loads(row[3])
            if post and tree is not None and not matches(tree, metadata):
                continue
            hits.append(Hit(row[1], score, Modality(row[2]), metadata, row[4], label=label))
        if not post or len(hits) >= depth or len(ranked) < want:
            return hits[:depth]
        want *= POST_FILTER_GROWTH
