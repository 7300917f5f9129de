"""Batch indexing jobs end to end through the HTTP API of a real server."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.calls import run_job
from tests.corpus import Corpus, write_csv, write_folder, write_jsonl, write_parquet, write_shards
from tests.helpers import AppServer

# The same answers with the catalogue on PostgreSQL (issue 37): run against both.
pytestmark = pytest.mark.both_catalogues


def assert_all_searchable(client: httpx.Client, collection: str, corpus: Corpus) -> None:
    for item_id, data in corpus.images.items():
        r = client.post(
            f"/v1/collections/{collection}/search",
            json={"image_base64": base64.b64encode(data).decode(), "target": "image", "k": 1},
        )
        top = r.json()["results"][0]
        # The job and the request turn a file into the same pixels: the same vector.
        assert top["id"] == item_id and top["score"] == pytest.approx(1.0, abs=1e-4), top
        assert client.get(f"/v1/collections/{collection}/items/{item_id}/image").content == data
    for item_id, text in corpus.texts.items():
        r = client.post(
            f"/v1/collections/{collection}/search", json={"text": text, "target": "text", "k": 1}
        )
        assert r.json()["results"][0]["id"] == item_id
    counts = client.get(f"/v1/collections/{collection}").json()["counts"]
    assert counts == {"image": len(corpus.images), "text": len(corpus.texts)}


WRITERS: dict[str, Callable[[Path, str], Corpus]] = {
    "folder": write_folder,
    "jsonl": write_jsonl,
    "csv": write_csv,
    "parquet": write_parquet,
    "webdataset": write_shards,
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_each_source_format_indexes_good_items_and_counts_bad_ones(
    fmt: str, server: AppServer, client: httpx.Client, collection: str
) -> None:
    root = server.data_dir / "import"
    root.mkdir(exist_ok=True)
    corpus = WRITERS[fmt](root, f"src-{fmt}")
    job = run_job(client, collection, corpus.source)
    assert job["state"] == "succeeded", job
    assert job["kind"] == "index" and job["collection"] == collection
    assert (job["total"], job["done"], job["failed"]) == (
        corpus.total,
        corpus.done,
        len(corpus.failed),
    )
    assert {e["item"] for e in job["errors"]} == corpus.failed
    assert all(e["reason"] for e in job["errors"])
    assert job["items_per_second"] > 0 and job["eta_seconds"] == 0
    assert_all_searchable(client, collection, corpus)
    listed = client.get("/v1/jobs").json()["jobs"]
    assert job["id"] in [j["id"] for j in listed]

    # Re-running the finished source adds nothing twice (and re-encodes nothing).
    again = run_job(client, collection, corpus.source, fmt)
    assert (again["done"], again["failed"]) == (corpus.done, len(corpus.failed))
    counts = client.get(f"/v1/collections/{collection}").json()["counts"]
    assert counts == {"image": len(corpus.images), "text": len(corpus.texts)}


def test_failure_reasons_say_what_went_wrong(
    server: AppServer, client: httpx.Client, collection: str
) -> None:
    root = server.data_dir / "import"
    root.mkdir(exist_ok=True)
    corpus = write_folder(root, "reasons")
    job = run_job(client, collection, corpus.source)
    reasons = {e["item"]: e["reason"] for e in job["errors"]}
    assert "not a supported image" in reasons["bad/not-image.jpg"]
    assert "empty" in reasons["bad/empty.png"]
    assert "corrupt or truncated" in reasons["bad/truncated.jpg"]
    assert "limit" in reasons["bad/too-large.png"]
    assert "not found" in reasons["bad/missing.jpg"]
    assert "outside the import root" in reasons["bad/escape.png"]


def test_sources_outside_the_import_root_are_refused(
    server: AppServer, client: httpx.Client, collection: str
) -> None:
    root = server.data_dir / "import"
    root.mkdir(exist_ok=True)
    outside = server.data_dir.parent / "outside-corpus"
    outside.mkdir(exist_ok=True)
    (outside / "a.jpg").write_bytes(b"x")
    link = root / "sneaky-link"
    if not link.exists():
        os.symlink(outside, link)
    for source in (
        "../outside-corpus",
        "/etc",
        "sneaky-link",
        "sneaky-link/a.jpg",
        "ok/../../../etc",
    ):
        r = client.post(f"/v1/collections/{collection}/jobs/index", json={"source": source})
        assert r.status_code == 400, (source, r.text)
        assert r.json()["error"]["code"] == "invalid_source"
        assert "outside the import root" in r.json()["error"]["message"]


def test_bad_job_requests_get_clear_errors(
    server: AppServer, client: httpx.Client, collection: str
) -> None:
    root = server.data_dir / "import"
    root.mkdir(exist_ok=True)
    (root / "plain.txt").write_text("what format is this")
    cases = [
        ({"source": "does-not-exist.jsonl"}, 400, "does not exist"),
        ({"source": "plain.txt"}, 400, "cannot tell the format"),
        ({"source": "plain.txt", "format": "xml"}, 422, "jsonl"),  # the schema says which
        ({"source": ""}, 422, None),
        ({}, 422, None),
    ]
    for body, status, words in cases:
        r = client.post(f"/v1/collections/{collection}/jobs/index", json=body)
        assert r.status_code == status, (body, r.text)
        if words:
            assert words in r.json()["error"]["message"]
    r = client.post("/v1/collections/no-such-collection/jobs/index", json={"source": "x.jsonl"})
    assert r.status_code == 404
    assert client.get("/v1/jobs/nonexistent").status_code == 404
    assert client.delete("/v1/jobs/nonexistent").status_code == 404


def test_finished_jobs_cannot_be_cancelled(
    server: AppServer, client: httpx.Client, collection: str
) -> None:
    root = server.data_dir / "import"
    root.mkdir(exist_ok=True)
    (root / "one.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    job = run_job(client, collection, "one.jsonl")
    r = client.delete(f"/v1/jobs/{job['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
