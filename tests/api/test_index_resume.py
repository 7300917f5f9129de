"""A batch job interrupted by kill -9 resumes and finishes with every item exactly once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from tests.calls import wait_for_job
from tests.corpus import write_many
from tests.helpers import AppServer, ServerProcess, children

CORPUS = 800  # images: chunks of 10, so a kill lands well inside the job


def test_job_killed_midway_resumes_without_duplicates_or_losses(tmp_path: Path) -> None:
    data = tmp_path / "data"
    corpus = write_many(data / "import", "many", CORPUS)
    server = ServerProcess(data, import_chunk_size=10).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/v1/collections", json={"name": "big"}).status_code == 201
            r = c.post("/v1/collections/big/jobs/index", json={"source": "many"})
            job_id = r.json()["id"]
            seen_running = False
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                job = c.get(f"/v1/jobs/{job_id}").json()
                # Searches keep answering while the job runs.
                assert (
                    c.post("/v1/collections/big/search", json={"text": "x", "k": 3}).status_code
                    == 200
                )
                if job["state"] == "running" and 100 <= job["done"] <= CORPUS - 200:
                    seen_running = True
                    assert job["total"] == CORPUS and job["items_per_second"] > 0
                    assert job["eta_seconds"] is not None and job["eta_seconds"] > 0
                    break
                time.sleep(0.02)
            assert seen_running, f"never caught the job midway: {job}"
        assert server.proc is not None
        # The job decodes on threads of the server: no process to start, none to orphan.
        assert children(server.proc.pid) == []
        server.kill()
        done_at_kill = job["done"]

        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            job = wait_for_job(c, job_id)
            assert job["state"] == "succeeded", job
            assert (job["done"], job["failed"], job["total"]) == (CORPUS, 0, CORPUS)
            assert c.get("/v1/collections/big").json()["counts"] == {"image": CORPUS, "text": 0}
            # Every stored image's file came through the kill whole: the chunk's files were
            # made durable before its commit, those of the chunk in flight were not counted.
            for item_id in sorted(corpus.images)[:: CORPUS // 40]:
                r = c.get(f"/v1/collections/big/items/{item_id}/image")
                assert r.status_code == 200 and r.content == corpus.images[item_id], item_id
        assert done_at_kill < CORPUS
    finally:
        server.stop()
    db = sqlite3.connect(data / "xmodal.sqlite3")
    ids = [row[0] for row in db.execute("SELECT id FROM items WHERE collection = 'big'")]
    db.close()
    assert sorted(ids) == sorted(corpus.images)  # each exactly once


def test_cancelled_job_stops_and_keeps_what_it_stored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_many(data / "import", "many", CORPUS)
    server = AppServer(data, import_chunk_size=10).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/v1/collections", json={"name": "big"}).status_code == 201
            job_id = c.post("/v1/collections/big/jobs/index", json={"source": "many"}).json()["id"]
            while c.get(f"/v1/jobs/{job_id}").json()["done"] < 50:
                time.sleep(0.02)
            r = c.delete(f"/v1/jobs/{job_id}")
            assert r.status_code == 200 and r.json()["state"] == "cancelled"
            time.sleep(1.0)
            job = c.get(f"/v1/jobs/{job_id}").json()
            assert job["state"] == "cancelled" and job["done"] < CORPUS
            count = c.get("/v1/collections/big").json()["counts"]["image"]
            assert count == job["done"]  # what is stored is exactly what the job counted
    finally:
        server.stop()
