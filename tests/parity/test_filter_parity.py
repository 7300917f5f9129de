"""Operator filters: the same generated filters over the same generated metadata give the
same items on FAISS with SQLite and on Milvus Lite, and both agree with the reference
(``index.filter_tree.matches``). Metadata and filters are drawn to hit the edges: odd keys
(quotes, backslashes, unicode, spaces), large integers, floats beside integers, booleans
beside 0 and 1, nulls beside missing keys, strings that look like numbers, and lists (a
condition holds for a list when it holds for one of its values)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import index.search
from bench.postgres import PgCluster
from index import CollectionStore, FaissBackends, MilvusBackends, Modality, NewItem
from index.catalogue.filters import filter_labels
from index.errors import InvalidFilter
from index.filter_tree import Node, matches, parse
from index.search import holds_lists
from tests.stores import D, V, normalised

N = 240
KEYS = ["year", "tag", 'q"uote', "back\\slash", "ünï cödé", "flag", "n", "line\nbreak"]
STRINGS = ["", "a", "b", "B", "5", "é", "ünï", 'say "hi"', "x\\y", "a b", "zz", "\u200b"]
# Long strings that share their first thousand bytes (what PostgreSQL's index holds of a
# string): the rest decides, and a character straddles the cut.
STRINGS += ["L" * 1500 + "a", "L" * 1500 + "b", "L" * 999 + "é" + "z" * 3000]
NUMBERS = [0, 1, -1, 2, 5, 5.0, 1.5, -0.5, 2020, 2023, 2024, 2**53 + 1, 2**62, -(2**63), 1e-9]


LISTED = ("tag", "ünï cödé")  # keys that may hold lists (and objects)


def value(rng: random.Random, key: str = "") -> Any:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(NUMBERS)
    if roll < 0.7:
        return rng.choice(STRINGS)
    if roll < 0.85:
        return rng.choice([True, False])
    if roll < 0.9 or key not in LISTED:
        return None
    # Lists hold when one of their values does: numbers, strings, booleans beside 0 and 1,
    # a float beside its integer and its string, a null, an empty list, a list in a list.
    return rng.choice(
        [[1, 2], ["a", "b"], [True, 0], [5.0, "5"], [None, "é"], [], [[1], "zz"], {"x": 1}]
    )


def metadata(rng: random.Random) -> dict[str, Any]:
    return {k: value(rng, k) for k in KEYS if rng.random() < 0.7}


def scalar(rng: random.Random) -> Any:
    v = value(rng)
    return v if not isinstance(v, (list, dict)) else rng.choice(NUMBERS)


def condition(rng: random.Random) -> dict[str, Any]:
    key = rng.choice(KEYS)
    roll = rng.random()
    if roll < 0.2:
        return {key: scalar(rng)}
    if roll < 0.55:
        numbers = rng.random() < 0.6
        pool = [x for x in NUMBERS if x < 2**53] if numbers else STRINGS
        ops = rng.sample(["$gt", "$gte", "$lt", "$lte"], rng.choice([1, 2]))
        return {key: {op: rng.choice(pool) for op in ops}}
    if roll < 0.75:
        op = rng.choice(["$in", "$nin"])
        return {key: {op: [scalar(rng) for _ in range(rng.randint(1, 5))]}}
    if roll < 0.88:
        return {key: {rng.choice(["$eq", "$ne"]): scalar(rng)}}
    return {key: {"$exists": rng.random() < 0.5}}


def a_filter(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    roll = rng.random()
    if depth < 3 and roll < 0.3:
        op = rng.choice(["$and", "$or"])
        return {op: [a_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    out: dict[str, Any] = {}
    for _ in range(rng.randint(1, 2)):
        out.update(condition(rng))
    return out


def parsed_filters(seed: int, n: int) -> Iterator[tuple[dict[str, Any], Node]]:
    """``n`` generated filters with their trees, less those refused (one key compared with
    numbers and strings: refused alike, tested below)."""
    rng = random.Random(seed)
    for _ in range(n):
        where = a_filter(rng)
        try:
            yield where, parse(where)
        except InvalidFilter:
            continue


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, pg: PgCluster) -> Iterator[dict[str, Any]]:
    rng = random.Random(7)
    metas = [metadata(rng) for _ in range(N)]
    texts = [NewItem(f"t-{i}", Modality.TEXT, m, text=f"text {i}") for i, m in enumerate(metas)]
    root = tmp_path_factory.mktemp("filters")
    opened = {
        "faiss": CollectionStore(root / "f", backends=FaissBackends(use_gpu=False)),
        "milvus": CollectionStore(root / "m", backends=MilvusBackends(str(root / "lite.db"))),
        # The catalogue on PostgreSQL: its filters must give SQLite's answers.
        "postgres": CollectionStore(
            root / "p", backends=FaissBackends(use_gpu=False), database_url=pg.database()
        ),
        "milvus-postgres": CollectionStore(
            root / "mp",
            backends=MilvusBackends(str(root / "lite-pg.db")),
            database_url=pg.database(),
        ),
    }
    for store in opened.values():
        store.create_collection("c", D, V)
        store.upsert("c", texts, normalised(N, 1), V)
    try:
        yield {"metas": metas, **opened}
    finally:
        for store in opened.values():
            store.close()


def ids(store: CollectionStore, where: dict[str, Any]) -> set[str]:
    (hits,) = store.search("c", Modality.TEXT, normalised(1, 9), N, model_version=V, where=where)
    return {h.id for h in hits}


def test_generated_filters_give_the_same_items_on_both_backends_and_catalogues(
    stores: dict[str, Any],
) -> None:
    nonempty = natively = 0
    for where, node in parsed_filters(11, 160):
        expected = {f"t-{i}" for i, m in enumerate(stores["metas"]) if matches(node, m)}
        assert ids(stores["faiss"], where) == expected, where
        assert ids(stores["milvus"], where) == expected, where  # as labels found in SQLite
        assert ids(stores["postgres"], where) == expected, where
        assert ids(stores["milvus-postgres"], where) == expected, where
        nonempty += bool(expected) and len(expected) < N
        # Milvus's own evaluation, used for filters that keep many items, agrees too,
        # where the filter's keys hold no list (the store checks those itself).
        milvus = stores["milvus"]
        if holds_lists(milvus.get("c"), milvus.db, node, Modality.TEXT):
            continue
        (native,) = (
            milvus.get("c").sides[Modality.TEXT].index.search(normalised(1, 9), N, where=node)
        )
        listed = filter_labels(milvus.db, milvus.db.reader(), "c", [Modality.TEXT], node)[
            Modality.TEXT
        ]
        assert sorted(native.labels.tolist()) == sorted(listed.tolist()), where
        natively += 1
    assert nonempty > 60  # the filters cut: neither everything nor nothing
    assert natively > 40  # and Milvus's expressions were tried on many


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ({"year": {"$gt": 2020, "$lt": "2024"}}, "'year'"),
        ({"year": {"$gt": True}}, "$gt"),
        ({"year": {"$in": []}}, "$in"),
        ({"year": {"$in": list(range(513))}}, "at most 512"),
        ({"$or": [{f"k{i}": {"$in": list(range(512))}} for i in range(9)]}, "4096 values"),
        ({"year": {"$regex": "x"}}, "$regex"),
        ({"$nor": [{"year": 1}]}, "$nor"),
        ({"$or": []}, "$or"),
        ({"year": {"$exists": 1}}, "$exists"),
        ({"year": {}}, "empty object"),
        ({"year": [1, 2]}, "$in"),
        ({"year": {"$eq": float("nan")}}, "finite"),
        ({"year": {"$eq": 2**64}}, "64 bits"),
        ({"tag": {"$eq": "a\x00b"}}, "NUL"),
        (
            {
                "$and": [
                    {
                        "$and": [
                            {
                                "$or": [
                                    {
                                        "$and": [
                                            {
                                                "$or": [
                                                    {
                                                        "$and": [
                                                            {
                                                                "$or": [
                                                                    {"$and": [{"$or": [{"a": 1}]}]}
                                                                ]
                                                            }
                                                        ]
                                                    }
                                                ]
                                            }
                                        ]
                                    }
                                ]
                            }
                        ]
                    }
                ]
            },
            "deep",
        ),
    ],
)
def test_bad_filters_are_refused_by_both_naming_the_part(
    stores: dict[str, Any], where: dict[str, Any], names: str
) -> None:
    for backend in ("faiss", "milvus"):
        with pytest.raises(InvalidFilter, match=names.replace("$", r"\$")):
            ids(stores[backend], where)


def test_an_old_milvus_collection_answers_operator_filters_through_sqlite(
    tmp_path: Path,
) -> None:
    """A Milvus collection made before bool_keys existed still filters exactly."""
    store = CollectionStore(tmp_path / "d", backends=MilvusBackends(str(tmp_path / "lite.db")))
    try:
        store.create_collection("c", D, V)
        metas = [{"flag": True}, {"flag": 1}, {"flag": False}, {}]
        items = [NewItem(f"t-{i}", Modality.TEXT, m, text="x") for i, m in enumerate(metas)]
        store.upsert("c", items, normalised(4, 1), V)
        index = store.get("c").sides[Modality.TEXT].index
        index.native_filters = False  # as load() sets it for such a collection
        index.max_allowed = 0  # (and whatever the number of labels)
        assert ids(store, {"flag": True}) == {"t-0"}
        assert ids(store, {"flag": {"$ne": 1}}) == {"t-0", "t-2", "t-3"}
    finally:
        store.close()


@pytest.mark.parametrize("name", ["faiss", "milvus", "postgres", "milvus-postgres"])
def test_broad_filters_read_the_ranking_and_give_the_exact_top_k(
    stores: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every filter treated as broad (no labels read out: FAISS checks each candidate
    as the ranking comes, deeper until k pass; Milvus evaluates the filter itself), the
    top k of vector and lexical searches are those of the exact ranking of the items that
    pass, for generated filters and several k."""
    monkeypatch.setattr(index.search, "BROAD_MIN", 0)
    monkeypatch.setattr(index.search, "BROAD_SHARE", 0.0)
    store: CollectionStore = stores[name]
    xb, xq = normalised(N, 1), normalised(3, 5)
    checked = 0
    for where, node in parsed_filters(23, 60):
        passing = [i for i, m in enumerate(stores["metas"]) if matches(node, m)]
        if not passing:
            continue
        for k in (1, 7, 40):
            hits = store.search("c", Modality.TEXT, xq, k, model_version=V, where=where)
            for q, row in zip(xq, hits, strict=True):
                scores = xb[passing] @ q
                order = sorted(range(len(passing)), key=lambda j: (-scores[j], passing[j]))
                assert [h.id for h in row] == [f"t-{passing[j]}" for j in order[:k]], where
            words = store.lexical("c", "text", k, where)
            assert {h.id for h in words} <= {f"t-{i}" for i in passing}
            assert len(words) == min(k, len(passing))
        checked += 1
    assert checked > 30
