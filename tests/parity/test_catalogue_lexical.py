"""Lexical search on both catalogues: SQLite's FTS5 (BM25) and PostgreSQL's full-text
search find the same texts for the same words (their order may differ: BM25 weighs rare
words and length, ``ts_rank`` does not), with accents and case folded, punctuation cut,
codes matched whole, and filters applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.postgres import PgCluster
from index import CollectionStore, FaissBackends, Modality, NewItem
from tests.stores import D, V, normalised

TEXTS = [
    "A red running shoe, product code XR-4417",
    "the blue hiking boot XR-4418 for rough trails",
    "Café crème on a sunny terrace",
    "cafe CREME, two cups",
    "photo.jpg of the harbour at dawn",
    "über-light tent (2 persons)",
    "naïve art: a painting of Zürich",
    "snake_case and CamelCase words",
    "e-mail me at someone@example.com",
    "version 1.2.3 released; pi is 3.14159",
    "日本語のテキスト と 漢字",
    "Ελληνικά κείμενα και λέξεις",
    "emoji 🚀 rocket launch",
    "the the the repeated words the",
    "an empty-ish one",
    "",
]
QUERIES = [
    "XR-4417",
    "xr 4418",
    "cafe",
    "CAFÉ crème",
    "photo",
    "jpg harbour",
    "uber light",
    "zurich naive",
    "snake_case",
    "camelcase",
    "someone example com",
    "1 2 3",
    "3.14159",
    "日本語のテキスト",
    "λέξεις",
    "rocket",
    "the",
    "tent persons",
    "nothing here qqq",
    "a",
    "x'); DROP TABLE items; -- café",  # bound, never pasted: an odd query, nothing more
    "%s ? $1 :name \\ \" '",
]


def store_on(root: Path, url: str | None) -> CollectionStore:
    store = CollectionStore(root, backends=FaissBackends(use_gpu=False), database_url=url)
    store.create_collection("c", D, V)
    items = [
        NewItem(f"t{i}", Modality.TEXT, {"i": i, "even": i % 2 == 0}, text=text)
        for i, text in enumerate(TEXTS)
    ]
    store.upsert("c", items, normalised(len(items), 3), V)
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, pg: PgCluster) -> Any:
    root = tmp_path_factory.mktemp("lexical")
    sqlite, postgres = store_on(root / "s", None), store_on(root / "p", pg.database())
    yield sqlite, postgres
    sqlite.close()
    postgres.close()


def found(store: CollectionStore, text: str, where: dict[str, Any] | None = None) -> set[str]:
    return {h.id for h in store.lexical("c", text, 100, where)}


def test_the_same_words_find_the_same_texts_on_both_catalogues(stores: Any) -> None:
    sqlite, postgres = stores
    matched = 0
    for query in QUERIES:
        expected = found(sqlite, query)
        assert found(postgres, query) == expected, query
        assert found(postgres, query, {"even": True}) == found(sqlite, query, {"even": True})
        matched += bool(expected)
    assert matched >= 15  # most queries find something: the comparison means something
    assert found(postgres, "café") == {"t2", "t3"}  # the odd queries changed nothing
    assert found(sqlite, "cafe") == {"t2", "t3"}  # accents and case folded
    # A code's parts are words: either part finds a text, both together rank it first.
    assert found(sqlite, "XR-4417") == {"t0", "t1"}
    for store in stores:
        assert store.lexical("c", "XR-4417", 5)[0].id == "t0"


def test_both_rank_the_text_with_every_word_first(stores: Any) -> None:
    for store in stores:
        hits = store.lexical("c", "blue hiking boot XR-4418", 5)
        assert hits[0].id == "t1" and all(h.score > 0 for h in hits)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
