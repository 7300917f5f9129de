"""Groups of a search (``group_by``): the best hits of each value of a metadata key, on
both vector backends, recomputed here from the plain ranking the API gives; values group
as filters compare them; pages of groups; what grouping cannot ask is a 400."""

from __future__ import annotations

import json
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


@pytest.mark.both_catalogues
def test_facets_count_every_item_the_filter_keeps(client: httpx.Client, collection: str) -> None:
    """Counted in the catalogue over all the items the filter keeps, not the page's; values
    as filters compare them (7 and 7.0 one value, True not 1, null not counted, a list's
    values each once: labels count as tags); the same on both vector backends and both
    catalogues."""
    items = fill(client, collection)

    def by_hand(kept: list[dict[str, Any]]) -> dict[Any, int]:
        counts: dict[Any, int] = {}
        for it in kept:
            value = it["metadata"].get("product")
            values = set(value) if isinstance(value, list) else {value}
            for v in values - {None}:
                key = ("b", v) if isinstance(v, bool) else (type(v) is str, v)
                counts[key] = counts.get(key, 0) + 1
        return counts

    def answered(facet: list[dict[str, Any]]) -> dict[Any, int]:
        out = {}
        for entry in facet:
            value = entry["value"]
            key = ("b", value) if isinstance(value, bool) else (type(value) is str, value)
            out[key] = entry["count"]
        return out

    answer = search(client, collection, k=3, facets=["product", "n", "absent"])
    assert len(answer["results"]) == 3
    facets = answer["facets"]
    assert answered(facets["product"]) == by_hand(items)
    counts = [e["count"] for e in facets["product"]]
    assert counts == sorted(counts, reverse=True)
    assert len(facets["n"]) == 20 and all(e["count"] == 1 for e in facets["n"])  # 20 of 60
    assert facets["absent"] == []
    assert sum(e["count"] for e in facets["product"] if e["value"] == 7) == sum(
        1
        for it in items
        if it["metadata"].get("product") in (7, 7.0)
        and not isinstance(it["metadata"].get("product"), bool)
    )
    # A filter narrows the counts to what it keeps, whatever the page shows.
    cheap = search(
        client, collection, k=1, facets=["product"], filter={"n": {"$lt": 30, "$gte": 6}}
    )
    kept = [it for it in items if 6 <= it["metadata"]["n"] < 30]
    assert answered(cheap["facets"]["product"]) == by_hand(kept)
    broad = search(client, collection, k=1, facets=["product"], filter={"n": {"$ne": 5}})
    assert answered(broad["facets"]["product"]) == by_hand(
        [it for it in items if it["metadata"]["n"] != 5]
    )
    assert search(client, collection, k=3)["facets"] is None


@pytest.mark.parametrize("facets", [["k"] * 9, [""], ["x" * 300], "product", [3]])
def test_what_facets_cannot_ask_is_a_422(
    client: httpx.Client, collection: str, facets: Any
) -> None:
    r = client.post(f"/v1/collections/{collection}/search", json={"text": "x", "facets": facets})
    assert r.status_code == 422, r.text


def test_the_cli_groups_and_counts(
    client: httpx.Client, collection: str, server: Any, tmp_path: Any
) -> None:
    """``xmodal search --group-by --facet`` prints the groups and the counts the API gives."""
    from tests.helpers import xmodal

    fill(client, collection)
    want = search(client, collection, k=3, group_by="product", facets=["product"])
    run = xmodal(
        "search",
        collection,
        "a thing",
        "--target",
        "text",
        "-k",
        "3",
        "--group-by",
        "product",
        "--facet",
        "product",
        "--server",
        server.url,
        data_dir=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for group in want["groups"]:
        assert f"product = {json.dumps(group['value'])}" in lines
        assert any(group["results"][0]["id"] in line for line in lines)
    counts = ", ".join(
        f"{json.dumps(c['value'])} ({c['count']})" for c in want["facets"]["product"]
    )
    assert f"product: {counts}" in lines
