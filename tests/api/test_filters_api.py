"""Operator filters through the API, on both vector backends: JSON searches, batches, the
image form, clear 400s for bad filters, and ``xmodal search --filter`` against a server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.helpers import AppServer, image_bytes, xmodal

# The same answers with the catalogue on PostgreSQL (issue 37): run against both.
pytestmark = pytest.mark.both_catalogues

YEARS = {f"p{i}": 2015 + i for i in range(10)}  # p0 2015 ... p9 2024


def items() -> list[dict[str, Any]]:
    out = []
    for i, (item_id, year) in enumerate(YEARS.items()):
        meta: dict[str, Any] = {"year": year, "tag": "abc"[i % 3], "ok": i % 2 == 0}
        if i == 4:
            meta["tag"] = None
        if i == 5:
            del meta["tag"]
        out.append({"id": item_id, "text": f"a photo from {year}", "metadata": meta})
    return out


def ids(r: httpx.Response) -> set[str]:
    assert r.status_code == 200, r.text
    return {h["id"] for h in r.json()["results"]}


@pytest.mark.both_backends
def test_operator_filters_in_every_search_form(
    client: httpx.Client, collection: str, server: AppServer, tmp_path: Any
) -> None:
    r = client.post(f"/v1/collections/{collection}/texts", json={"items": items()})
    assert r.status_code == 200, r.text
    url = f"/v1/collections/{collection}/search"
    cases = [
        ({"year": {"$gte": 2020, "$lt": 2023}}, {"p5", "p6", "p7"}),
        ({"tag": {"$in": ["a", "c"]}, "ok": True}, {"p0", "p6", "p2", "p8"} - {"p4"}),
        ({"tag": {"$nin": ["a"]}}, {"p1", "p2", "p4", "p5", "p7", "p8"}),
        ({"tag": {"$exists": False}}, {"p5"}),
        ({"tag": None}, {"p4"}),
        ({"$or": [{"year": {"$lt": 2016}}, {"year": {"$gt": 2023}}]}, {"p0", "p9"}),
        ({"$and": [{"ok": {"$ne": True}}, {"year": {"$lte": 2018}}]}, {"p1", "p3"}),
        ({"year": 2019.0}, {"p4"}),
        ({"ok": 1}, set()),  # a boolean is not a number
    ]
    for where, expected in cases:
        body = {"text": "a photo", "target": "text", "k": 50, "filter": where}
        assert ids(client.post(url, json=body)) == expected, where
    # A batch: each query its own filter.
    queries = [{"text": "a photo", "target": "text", "k": 50, "filter": w} for w, _ in cases[:3]]
    r = client.post(f"{url}/batch", json={"queries": queries})
    assert r.status_code == 200, r.text
    assert [{h["id"] for h in q["results"]} for q in r.json()["answers"]] == [
        e for _, e in cases[:3]
    ]
    # The image form: the filter as a JSON string.
    r = client.post(
        f"{url}/image",
        files={"file": ("q.png", image_bytes((200, 30, 30)), "image/png")},
        data={"target": "text", "k": "50", "filter": json.dumps(cases[0][0])},
    )
    assert ids(r) == cases[0][1]
    # Bad filters: 400 naming the part, in JSON and in the form.
    bad = [
        ({"year": {"$gt": 2020, "$lt": "2024"}}, "'year'"),
        ({"year": {"$regex": "^20"}}, "$regex"),
        ({"$or": [{"year": {"$in": 5}}]}, "filter.$or[0]['year'].$in"),
    ]
    for where, named in bad:
        r = client.post(url, json={"text": "x", "target": "text", "filter": where})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_filter", r.text
        assert named in r.json()["error"]["message"], r.text
    r = client.post(
        f"{url}/image",
        files={"file": ("q.png", image_bytes((200, 30, 30)), "image/png")},
        data={"filter": json.dumps(bad[0][0])},
    )
    assert r.status_code == 400 and "'year'" in r.json()["error"]["message"]
    # The CLI: the same filter as JSON, against the server.
    run = xmodal(
        "search",
        collection,
        "a photo",
        "--target",
        "text",
        "-k",
        "50",
        "--filter",
        json.dumps(cases[0][0]),
        "--json",
        "--server",
        server.url,
        data_dir=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert {h["id"] for h in json.loads(run.stdout)["results"]} == cases[0][1]
    table = xmodal(
        "search",
        collection,
        "a photo",
        "--target",
        "text",
        "--filter",
        '{"year": 2016}',
        "--server",
        server.url,
        data_dir=tmp_path,
    )
    assert table.returncode == 0 and "p1" in table.stdout and "a photo from 2016" in table.stdout
    words = xmodal(
        "search",
        collection,
        "2016",
        "--mode",
        "lexical",
        "--server",
        server.url,
        data_dir=tmp_path,
    )
    assert words.returncode == 0 and words.stdout.split()[1] == "p1", words.stdout
    wrong = xmodal(
        "search",
        collection,
        "x",
        "--filter",
        "{year: 1}",
        "--server",
        server.url,
        data_dir=tmp_path,
    )
    assert wrong.returncode == 2 and "--filter is not valid JSON" in wrong.stderr
    refused = xmodal(
        "search",
        collection,
        "x",
        "--filter",
        json.dumps(bad[1][0]),
        "--server",
        server.url,
        data_dir=tmp_path,
    )
    assert refused.returncode == 1 and "400 invalid_filter" in refused.stderr
