"""Losing a server under load loses nothing: two ``xmodal serve`` processes behind nginx
over one PostgreSQL catalogue and one shared dir, with per-server FAISS indexes or one
Milvus (``milvus-lite server``) for both. Clients search, upload, delete and run an index
job through nginx; the server running the job is killed with SIGKILL. Searches go on
through the other, the job resumes there, no acknowledged write is lost, no delete comes
back, and the killed server, started again, catches up and answers the same."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bench.nginx import Nginx
from bench.postgres import PgCluster
from tests.calls import wait_for_job
from tests.corpus import write_many
from tests.helpers import MilvusLiteServer, ServerProcess, image_bytes

CORPUS = 800  # images for the batch job: it still runs when its server is killed
LOAD_S = 2.0  # clients run this long before the kill, and after it


@dataclass
class Load:
    """What the clients did, through nginx."""

    written: dict[str, str] = field(default_factory=dict)  # id -> modality, acknowledged
    deleted: set[str] = field(default_factory=set)  # acknowledged
    uncertain: set[str] = field(default_factory=set)  # sent when the server died
    searches: int = 0
    failed: list[str] = field(default_factory=list)  # requests that got no good answer


def writer(url: str, load: Load, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=30) as c:
        n = 0
        while not stop.is_set():
            n += 1
            item_id = f"w{seed}-{n}"
            live = [i for i in load.written if i not in load.deleted | load.uncertain]
            try:
                if live and rng.random() < 0.25:
                    victim = rng.choice(live)
                    load.uncertain.add(victim)
                    r = c.delete(f"/v1/collections/live/items/{victim}")
                    if r.status_code in (204, 404):  # 404: a retried delete found it gone
                        load.deleted.add(victim)
                        load.uncertain.discard(victim)
                    else:
                        load.failed.append(f"delete {r.status_code}")
                elif rng.random() < 0.5:
                    r = c.post(
                        "/v1/collections/live/texts",
                        json={"items": [{"id": item_id, "text": f"note {n}"}]},
                    )
                    if r.status_code == 200:
                        load.written[item_id] = "text"
                    else:
                        load.failed.append(f"text {r.status_code}")
                else:
                    png = image_bytes((n % 256, seed * 40 % 256, 90), seed=seed * 1000 + n)
                    r = c.post(
                        "/v1/collections/live/images",
                        files=[("files", ("a.png", png))],
                        data={"ids": [item_id]},
                    )
                    if r.status_code == 200:
                        load.written[item_id] = "image"
                    else:
                        load.failed.append(f"image {r.status_code}")
            except httpx.HTTPError as exc:
                load.failed.append(f"write {type(exc).__name__}")


def searcher(url: str, load: Load, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            try:
                r = c.post("/v1/collections/live/search", json={"text": "note", "k": 5})
                if r.status_code == 200:
                    load.searches += 1
                else:
                    load.failed.append(f"search {r.status_code}")
            except httpx.HTTPError as exc:
                load.failed.append(f"search {type(exc).__name__}")


def check(url: str, load: Load) -> None:
    """Every acknowledged write is there, every acknowledged delete gone, on this server."""
    with httpx.Client(base_url=url, timeout=30) as c:
        for item_id in load.written:
            if item_id in load.uncertain:
                continue
            r = c.get(f"/v1/collections/live/items/{item_id}")
            expected = 404 if item_id in load.deleted else 200
            assert r.status_code == expected, (url, item_id, r.text)
        counts = c.get("/v1/collections/live").json()["counts"]
        kept = [i for i in load.written if i not in load.deleted]
        uncertain = len(load.uncertain & set(kept))
        # Searches find exactly what was kept; the indexes hold nothing the catalogue
        # deleted.
        found: set[str] = set()
        for m in ("image", "text"):
            r = c.post("/v1/collections/live/search", json={"text": "note", "k": 1000, "target": m})
            found |= {h["id"] for h in r.json()["results"]}
        assert set(kept) - load.uncertain <= found <= set(kept), (url, found ^ set(kept))
        assert sum(counts.values()) - len(kept) in range(-uncertain, 1), (counts, len(kept))


@pytest.fixture(params=["faiss", "milvus"])
def vectors(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "faiss":
        yield {"vector_backend": "faiss"}
        return
    milvus = MilvusLiteServer(tmp_path / "milvus").start()
    try:
        yield {"vector_backend": "milvus", "milvus_uri": milvus.uri}
    finally:
        milvus.stop()


def test_losing_a_server_under_load_loses_nothing(
    tmp_path: Path, pg: PgCluster, vectors: dict[str, str]
) -> None:
    shared = tmp_path / "shared"
    write_many(shared / "import", "corpus", CORPUS)
    settings = {
        "database_url": pg.database(),
        "shared_dir": shared,
        "import_chunk_size": 16,
        "index_dump_interval_s": 1.0,
        **vectors,
    }
    servers = {n: ServerProcess(tmp_path / n, **settings) for n in ("a", "b")}
    for s in servers.values():
        s.start(wait=False)
    for s in servers.values():
        s.wait_ready(120)
    proxy = Nginx(tmp_path / "nginx", [f"127.0.0.1:{s.port}" for s in servers.values()])
    proxy.start()
    load = Load()
    stop = threading.Event()
    try:
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            for name in ("live", "corpus"):
                r = c.post("/v1/collections", json={"name": name})
                assert r.status_code == 201, r.text
            r = c.post("/v1/collections/corpus/jobs/index", json={"source": "corpus"})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            wait_until(lambda: c.get(f"/v1/jobs/{job_id}").json()["done"] > 0, "job started")
            owner = c.get(f"/v1/jobs/{job_id}").json()["server"]
        victim = next(n for n, s in servers.items() if server_id(s) == owner)
        survivor = next(n for n in servers if n != victim)
        clients = [
            threading.Thread(target=writer, args=(proxy.url, load, stop, i)) for i in range(3)
        ]
        clients += [
            threading.Thread(target=searcher, args=(proxy.url, load, stop)) for _ in range(2)
        ]
        for t in clients:
            t.start()
        time.sleep(LOAD_S)
        before = load.searches
        with httpx.Client(base_url=proxy.url, timeout=30) as c:
            assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "running"
        servers[victim].kill()
        killed_at = time.monotonic()
        time.sleep(LOAD_S)
        assert load.searches > before + 10, "searches stopped with the server"
        stop.set()
        for t in clients:
            t.join(60)
        # Only what was in flight on the killed server may fail: one request a client.
        assert len(load.failed) <= len(clients), load.failed
        assert len(load.written) > 30 and len(load.deleted) > 5, (load.written, load.deleted)
        check(servers[survivor].url, load)

        # The job moves to the survivor once its lease runs out, and ends with every
        # image once.
        with httpx.Client(base_url=servers[survivor].url, timeout=30) as c:
            job = wait_for_job(c, job_id, timeout=180)
            assert job["state"] == "succeeded", job
            assert job["server"] == server_id(servers[survivor])
            assert job["done"] == CORPUS and job["failed"] == 0, job
            assert c.get("/v1/collections/corpus").json()["counts"]["image"] == CORPUS
            took_over = time.monotonic() - killed_at

        # The killed server comes back on its port, catches up and answers the same.
        back = ServerProcess(tmp_path / victim, port=servers[victim].port, **settings)
        servers[victim] = back.start(timeout=120)
        check(back.url, load)
        query = {"text": "note", "k": 10, "target": "text"}
        with httpx.Client(timeout=30) as c:
            answers = [
                c.post(f"{s.url}/v1/collections/live/search", json=query) for s in servers.values()
            ]
            assert answers[0].json()["results"] == answers[1].json()["results"]
            assert c.get(f"{back.url}/v1/collections/corpus").json()["counts"]["image"] == CORPUS
        print(
            f"\n{vectors['vector_backend']}: {load.searches} searches, {len(load.written)} writes,"
            f" {len(load.deleted)} deletes; failed: {len(load.failed)} {load.failed};"
            f" job done on the survivor {took_over:.1f} s after the kill"
        )
    finally:
        stop.set()
        proxy.stop()
        for s in servers.values():
            s.stop()


def server_id(server: ServerProcess) -> str:
    return (server.data_dir / "server-id").read_text().strip()


def wait_until(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
