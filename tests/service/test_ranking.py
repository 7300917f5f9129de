"""How deep a ranking searches: once when the page is plainly complete, again only while
the hits might continue in a tie."""

from __future__ import annotations

from app.service.search.ranking import SearchSpec, rank
from index import Hit, Modality


def hits(scores: list[float]) -> list[Hit]:
    return [Hit(f"i{n}", s, Modality.TEXT, {}, None, label=n) for n, s in enumerate(scores)]


def test_a_page_of_distinct_scores_takes_one_search() -> None:
    scores = [1 - i / 100 for i in range(100)]
    depths: list[int] = []

    def fetch(depth: int) -> list[Hit]:
        depths.append(depth)
        return hits(scores[:depth])

    page = rank(fetch, SearchSpec(k=10), max_depth=1000)
    assert [h.id for h in page.hits] == [f"i{n}" for n in range(10)] and page.next_offset == 10
    assert depths == [12]  # the page, one more for next_offset, one more to see it ends


def test_a_tie_at_the_end_of_the_page_searches_deeper_until_it_ends() -> None:
    scores = [1.0] * 5 + [0.5] * 30 + [0.1] * 10
    depths: list[int] = []

    def fetch(depth: int) -> list[Hit]:
        depths.append(depth)
        return hits(scores[:depth])

    page = rank(fetch, SearchSpec(k=10), max_depth=1000)
    assert len(page.hits) == 10 and depths == [12, 24, 48]
    assert [h.score for h in page.hits] == [1.0] * 5 + [0.5] * 5
