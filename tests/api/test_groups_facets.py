"""Groups of a search (``group_by``): the best hits of each value of a metadata key, on
both vector backends, recomputed here from the plain ranking the API gives; values group
as filters compare them; pages of groups; what grouping cannot ask is a 400."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.both_backends


def fill(client: httpx.Client, collection: str) -> list[dict[str, Any]]:
    products: list[Any] = ["shoe", "boot", 7, 7.0, 3, True, 1, None, ["a"], "lamp", "bag", "cup"]
    items = []
    for i in range(60):
        metadata: dict[str, Any] = {"n": i}
        product = products[i % len(products)]
        if i % 13 != 0:  # some have no product at all
            metadata["product"] = product
        items.append({"id": f"t{i:02d}", "text": f"photo {i} of a thing", "metadata": metadata})
    for start in range(0, len(items), 16):
        r = client.post(
            f"/v1/collections/{collection}/texts", json={"items": items[start : start + 16]}
        )
        assert r.status_code == 200, r.text
    return items


def search(client: httpx.Client, collection: str, **body: Any) -> dict[str, Any]:
    r = client.post(
        f"/v1/collections/{collection}/search", json={"text": "a thing", "target": "text", **body}
    )
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def expected_groups(ranking: list[dict[str, Any]], size: int) -> list[tuple[Any, list[str]]]:
    """Groups by hand: numbers by value (7 and 7.0 together), booleans apart from numbers
    (True is not 1), no group for a missing value, null or a list."""
    groups: dict[tuple[str, Any], tuple[Any, list[str]]] = {}
    for hit in ranking:
        if "product" not in hit["metadata"]:
            continue
        value = hit["metadata"]["product"]
        if isinstance(value, bool):
            key: tuple[str, Any] = ("b", value)
        elif isinstance(value, (int, float)):
            key = ("n", float(value))
        elif isinstance(value, str):
            key = ("s", value)
        else:
            continue
        group = groups.setdefault(key, (value, []))
        if len(group[1]) < size:
            group[1].append(hit["id"])
    return list(groups.values())


def test_groups_are_the_best_hits_of_each_value(client: httpx.Client, collection: str) -> None:
    fill(client, collection)
    ranking = search(client, collection, k=60)["results"]
    want = expected_groups(ranking, 2)
    assert len(want) == 9  # shoe boot 7 3 True 1 lamp bag cup
    answer = search(client, collection, k=4, group_by="product", group_size=2)
    got = [(g["value"], [h["id"] for h in g["results"]]) for g in answer["groups"]]
    assert [ids for _, ids in got] == [ids for _, ids in want[:4]]
    assert [h["id"] for h in answer["results"]] == [i for _, ids in got for i in ids]
    assert answer["next_offset"] == 4
    # Pages of groups: the next two pages are the rest, then none.
    second = search(client, collection, k=4, offset=4, group_by="product", group_size=2)
    third = search(client, collection, k=4, offset=8, group_by="product", group_size=2)
    rest = [[h["id"] for h in g["results"]] for g in second["groups"] + third["groups"]]
    assert rest == [ids for _, ids in want[4:]]
    assert second["next_offset"] == 8 and third["next_offset"] is None
    # One result per product, the product's best; a filter applies before grouping.
    one = search(client, collection, k=10, group_by="product")
    assert [g["results"][0]["id"] for g in one["groups"]] == [ids[0] for _, ids in want]
    cheap = search(client, collection, k=10, group_by="product", filter={"n": {"$lt": 20}})
    kept = [h for h in ranking if h["metadata"]["n"] < 20]
    assert [[h["id"] for h in g["results"]] for g in cheap["groups"]] == [
        ids for _, ids in expected_groups(kept, 1)
    ]
    # 7 and 7.0 are one group; True is not 1.
    values = [g["value"] for g in one["groups"]]
    assert sum(v == 7 and not isinstance(v, bool) for v in values) == 1
    assert True in values and 1 in [v for v in values if not isinstance(v, bool)]
    # Without group_by, no groups.
    assert search(client, collection, k=3)["groups"] is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"group_by": "product", "mode": "lexical"}, 400),
        ({"group_by": "product", "group_size": 0}, 422),
        ({"group_by": "product", "group_size": 101}, 422),
        ({"group_by": "product", "group_size": 100, "k": 100}, 400),  # 10,000 hits
        ({"group_by": ""}, 422),
        ({"group_by": "x" * 300}, 422),
    ],
)
def test_what_grouping_cannot_ask_is_refused(
    client: httpx.Client, collection: str, body: dict[str, Any], status: int
) -> None:
    r = client.post(f"/v1/collections/{collection}/search", json={"text": "x", **body})
    assert r.status_code == status, r.text
