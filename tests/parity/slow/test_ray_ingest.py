"""Index jobs on a local Ray cluster (started once in the test process, two CPUs, no
GPU): the collection a Ray job builds is the one an in-process job builds from the same
source: same ids, same vectors, same failures; a second run finds everything unchanged."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.service.jobs.ray_engine import connect
from index import MilvusBackends, Modality
from tests.calls import wait_for_job
from tests.corpus import write_folder, write_jsonl
from tests.helpers import BACKENDS, AppServer, run_cli


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    import ray

    connect(None, num_cpus=2)  # the server's own local cluster, on loopback
    yield
    ray.shutdown()  # its processes would take CPU from the files that run after this one


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    tmp_path_factory: pytest.TempPathFactory, cluster: None, request: pytest.FixtureRequest
) -> Iterator[AppServer]:
    server = AppServer(
        tmp_path_factory.mktemp("ray") / "data",
        max_upload_bytes=200_000,
        import_chunk_size=8,
        vector_backend=request.param,
    ).start()
    try:
        yield server
    finally:
        server.stop()


def index(client: httpx.Client, name: str, source: str, engine: str) -> dict[str, Any]:
    client.post("/v1/collections", json={"name": name})
    r = client.post(f"/v1/collections/{name}/jobs/index", json={"source": source, "engine": engine})
    assert r.status_code == 202, r.text
    return wait_for_job(client, r.json()["id"], timeout=300)


def stored(site: AppServer, name: str) -> dict[str, np.ndarray]:
    """Each item's vector as SQLite has it; on Milvus, also checked against what Milvus
    holds (the job wrote there too)."""
    store = site.app.state.services.store
    out = {}
    for modality in Modality:
        labels, ids, vectors = store.vectors_after(name, modality, 0, 100_000)
        out.update(zip(ids, vectors, strict=True))
        if isinstance(store.backends, MilvusBackends):
            index = store.get(name).sides[modality].index
            rows = store.backends.client.query(
                index.name, filter="label >= 0", output_fields=["item_id", "vector", "modality"]
            )
            assert sorted(r["item_id"] for r in rows) == sorted(ids)
            for r in rows:
                assert r["modality"] == modality.value
                np.testing.assert_allclose(r["vector"], out[r["item_id"]], atol=1e-6)
    return out


# One source format per backend: the formats differ in reading, the backends in storing.
WRITERS = {"faiss": write_jsonl, "milvus": write_folder}


def test_a_ray_job_builds_what_an_in_process_job_builds(site: AppServer) -> None:
    writer = WRITERS[site.settings["vector_backend"]]
    corpus = writer(site.data_dir / "import", f"src-{writer.__name__}")
    with httpx.Client(base_url=site.url, timeout=60) as client:
        local = index(client, f"local-{writer.__name__}", corpus.source, "local")
        remote = index(client, f"ray-{writer.__name__}", corpus.source, "ray")
        assert local["state"] == remote["state"] == "succeeded", remote
        for key in ("done", "failed", "total"):
            assert remote[key] == local[key], key
        assert remote["params"]["engine"] == "ray"
        assert [e["item"] for e in remote["errors"]] == [e["item"] for e in local["errors"]]
        assert remote["detail"]["counts"] == local["detail"]["counts"]
        a, b = stored(site, f"local-{writer.__name__}"), stored(site, f"ray-{writer.__name__}")
        assert set(a) == set(b) == set(corpus.images) | set(corpus.texts)
        for item_id in a:
            np.testing.assert_allclose(a[item_id], b[item_id], atol=1e-5)
        for item_id, data in corpus.images.items():
            got = client.get(f"/v1/collections/ray-{writer.__name__}/items/{item_id}/image")
            assert got.content == data
        again = index(client, f"ray-{writer.__name__}", corpus.source, "ray")
        counts = again["detail"]["counts"]
        assert counts.get("images_new", 0) == counts.get("texts_new", 0) == 0
        assert counts.get("images_unchanged", 0) == len(corpus.images)


def test_the_cli_runs_a_job_on_ray_in_process(tmp_path: Path, cluster: None) -> None:
    from bench.serving import tiny_env

    data = tmp_path / "data"
    (data / "import").mkdir(parents=True)
    corpus = write_jsonl(data / "import", "cli")
    env = tiny_env(data_dir=data, max_upload_bytes=200_000)
    run = run_cli(["index", "build", corpus.source, "--collection", "c", "--create", "--ray"], env)
    assert run.returncode == 0, run.stderr
    assert f"{corpus.done} done, {len(corpus.failed)} failed" in run.stdout


def test_an_unknown_engine_is_refused(site: AppServer) -> None:
    with httpx.Client(base_url=site.url, timeout=60) as client:
        client.post("/v1/collections", json={"name": "eng"})
        r = client.post("/v1/collections/eng/jobs/index", json={"source": "x", "engine": "spark"})
        assert r.status_code == 422


def test_a_ray_job_can_be_cancelled_and_keeps_what_it_committed(site: AppServer) -> None:
    root = site.data_dir / "import"
    texts = [{"id": f"t{i}", "text": f"sentence number {i} of many"} for i in range(640)]
    (root / "many.jsonl").write_text("\n".join(json.dumps(t) for t in texts) + "\n")
    with httpx.Client(base_url=site.url, timeout=60) as client:
        client.post("/v1/collections", json={"name": "cancelled"})
        r = client.post(
            "/v1/collections/cancelled/jobs/index",
            json={"source": "many.jsonl", "engine": "ray"},
        )
        job_id = r.json()["id"]
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job_id}").json()["done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
        job = wait_for_job(client, job_id, timeout=120)
        assert job["state"] == "cancelled"
        assert 0 < job["done"] < len(texts)  # stopped between chunks, not at the end
        # Every chunk it committed is there, and nothing after it.
        stored_texts = client.get("/v1/collections/cancelled").json()["counts"]["text"]
        assert stored_texts == job["done"]


def listening_sockets_of(names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(process name, local address) of every listening TCP socket held by a process whose
    name starts with one of ``names`` (read from /proc, as ``ss -ltnp`` does)."""
    inodes: dict[str, str] = {}  # socket inode -> local address
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes[fields[9]] = fields[1][:width]
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            name = (proc / "comm").read_text().strip()
            if not name.startswith(names):
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    found.append((name, inodes[target[8:-1]]))
        except OSError:
            continue  # a process that ended meanwhile
    return found


def test_the_local_cluster_listens_on_loopback_only(cluster: None) -> None:
    """The GCS, the raylet and the workers of the local cluster the server starts bind
    127.0.0.1 (in /proc's hex: 0100007F), never the machine's network address."""
    loopback = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")
    sockets = listening_sockets_of(("gcs_server", "raylet", "ray::"))
    assert any(name == "gcs_server" for name, _ in sockets), sockets
    assert [s for s in sockets if s[1] not in loopback] == []
