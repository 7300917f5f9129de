"""Duplicates jobs: groups of near-duplicate items over a whole collection, against the
groups numpy finds by comparing every pair (the job compares each item with its nearest
neighbours only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bench.serving import tiny_env
from tests.calls import submit_and_wait
from tests.helpers import run_cli

WORDS = ["apple", "river", "stone", "cloud", "forest", "engine", "violin", "harbor"]


def add(client: httpx.Client, name: str, texts: dict[str, str]) -> None:
    items = [{"id": i, "text": t} for i, t in texts.items()]
    for start in range(0, len(items), 16):
        r = client.post(f"/v1/collections/{name}/texts", json={"items": items[start : start + 16]})
        assert r.status_code == 200, r.text


def vectors(client: httpx.Client, texts: list[str]) -> np.ndarray:
    out = []
    for start in range(0, len(texts), 16):
        r = client.post("/v1/embed", json={"texts": texts[start : start + 16]})
        out.append(np.array(r.json()["vectors"], dtype=np.float32))
    return np.concatenate(out)


def all_pairs_groups(ids: list[str], x: np.ndarray, threshold: float) -> set[frozenset[str]]:
    parent = list(range(len(ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    sims = x @ x.T
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if sims[i, j] >= threshold:
                parent[max(root(i), root(j))] = min(root(i), root(j))
    groups: dict[int, set[str]] = {}
    for i, item in enumerate(ids):
        groups.setdefault(root(i), set()).add(item)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def run_job(client: httpx.Client, name: str, **body: Any) -> dict[str, Any]:
    return submit_and_wait(client, f"/v1/collections/{name}/jobs/duplicates", body)


@pytest.fixture
def corpus(client: httpx.Client, collection: str) -> dict[str, str]:
    """Captions, some written again in capitals (the same vector) or with a full stop
    (a close one), and one written 40 times: a group larger than the neighbours a job
    looks at per item."""
    texts = {f"x{i}": f"{WORDS[i % 8]} near the {WORDS[(i * 3 + 1) % 8]} {i}" for i in range(24)}
    for i in range(0, 24, 3):
        texts[f"x{i}-caps"] = texts[f"x{i}"].upper()
        texts[f"x{i}-dot"] = texts[f"x{i}"] + "."
    for i in range(40):
        texts[f"same{i}"] = "one caption written forty times"
    add(client, collection, texts)
    return texts


@pytest.mark.parametrize("threshold", [0.999, 0.95])
def test_groups_are_the_all_pairs_groups(
    client: httpx.Client, collection: str, corpus: dict[str, str], threshold: float
) -> None:
    job = run_job(client, collection, threshold=threshold, modality="text")
    assert job["state"] == "succeeded", job
    assert job["total"] == job["done"] == len(corpus)
    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("application/json")
    body = result.json()
    assert (body["collection"], body["modality"], body["threshold"]) == (
        collection,
        "text",
        threshold,
    )
    got = {frozenset(g["ids"]) for g in body["groups"]}
    ids = list(corpus)
    expected = all_pairs_groups(ids, vectors(client, list(corpus.values())), threshold)
    assert got == expected
    assert frozenset(f"same{i}" for i in range(40)) <= max(got, key=len)
    assert all(
        frozenset({f"x{i}", f"x{i}-caps"}) <= g
        for i in range(0, 24, 3)
        for g in got
        if f"x{i}" in g
    )
    sizes = [len(g["ids"]) for g in body["groups"]]
    assert sizes == sorted(sizes, reverse=True)  # largest first
    assert job["detail"]["groups"] == len(got)
    assert job["detail"]["items_in_groups"] == sum(sizes)


def test_refusals_and_missing_results(client: httpx.Client, collection: str) -> None:
    for body in ({"threshold": 0}, {"threshold": 1.5}, {"modality": "audio"}):
        r = client.post(f"/v1/collections/{collection}/jobs/duplicates", json=body)
        assert r.status_code == 422, body
    r = client.post("/v1/collections/missing-one/jobs/duplicates", json={})
    assert r.status_code == 404
    add(client, collection, {"a": "one text"})
    job = run_job(client, collection, modality="image")  # no images: nothing to group
    assert job["state"] == "succeeded" and job["detail"]["groups"] == 0
    assert client.get(f"/v1/jobs/{job['id']}/result").json()["groups"] == []
    other = client.post(
        f"/v1/collections/{collection}/jobs/index", json={"source": "nowhere.jsonl"}
    )
    assert other.status_code == 400
    assert client.get("/v1/jobs/not-a-job/result").status_code == 404


def test_the_cli_prints_the_groups_remote_and_in_process(
    client: httpx.Client, collection: str, corpus: dict[str, str], server: Any, tmp_path: Path
) -> None:
    """``xmodal duplicates``: against a server, and in this process on a data dir of its
    own (filled by ``xmodal index build``); the same groups either way."""
    out = tmp_path / "groups.json"
    remote = run_cli(
        [
            "duplicates",
            collection,
            "--modality",
            "text",
            "--threshold",
            "0.999",
            "--server",
            server.url,
            "--out",
            str(out),
        ],
        tiny_env(data_dir=server.data_dir),
    )
    assert remote.returncode == 0, remote.stderr
    lines = {frozenset(line.split("\t")) for line in remote.stdout.splitlines()}
    assert lines == {frozenset(g["ids"]) for g in json.loads(out.read_text())["groups"]}
    assert frozenset(f"same{i}" for i in range(40)) in lines
    assert "groups of near-duplicates" in remote.stderr
    data = tmp_path / "data"
    (data / "import").mkdir(parents=True)
    rows = [{"id": i, "text": t} for i, t in corpus.items()]
    (data / "import" / "texts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    env = tiny_env(data_dir=data)
    built = run_cli(["index", "build", "texts.jsonl", "--collection", "local", "--create"], env)
    assert built.returncode == 0, built.stderr
    local = run_cli(["duplicates", "local", "--modality", "text", "--threshold", "0.999"], env)
    assert local.returncode == 0, local.stderr
    assert {frozenset(line.split("\t")) for line in local.stdout.splitlines()} == lines
    missing = run_cli(["duplicates", "nope", "--server", server.url], env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
