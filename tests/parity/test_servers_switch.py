"""One model switch for every server of a service: two servers over one PostgreSQL
catalogue and one shared dir, each with its own FAISS indexes. An activation submitted to
either switches both, searches keep answering on both from one version at a time, a
server started later serves the new version, and a version one server cannot load
switches nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bench.postgres import PgCluster
from models.synthetic import write_dataset
from tests.calls import wait_for_job
from tests.helpers import AppServer
from tests.parity.test_activation import BASE, activate, answers, finetune


@pytest.fixture
def pair(tmp_path: Path, pg: PgCluster) -> Iterator[tuple[list[AppServer], str, Path]]:
    shared = tmp_path / "shared"
    write_dataset(shared / "import", "train", 400, seed=0, side=32)
    write_dataset(shared / "import", "gallery", 80, seed=9, side=32)
    url = pg.database()
    servers = [
        AppServer(tmp_path / n, database_url=url, shared_dir=shared).start() for n in ("a", "b")
    ]
    try:
        yield servers, url, shared
    finally:
        for s in servers:
            s.stop()


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except AssertionError:  # not there yet (a collection the follower has not opened)
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_an_activation_switches_every_server_and_one_started_later(
    pair: tuple[list[AppServer], str, Path], tmp_path: Path
) -> None:
    servers, url, shared = pair
    a, b = (httpx.Client(base_url=s.url, timeout=60) for s in servers)
    assert a.post("/v1/collections", json={"name": "gallery"}).status_code == 201
    r = a.post("/v1/collections/gallery/jobs/index", json={"source": "gallery.jsonl"})
    assert wait_for_job(a, r.json()["id"])["done"] == 160
    wait_for(lambda: answers(b, "gallery") == answers(a, "gallery"), "b follows a's index job")
    before = answers(a, "gallery")
    linear = finetune(a, "linear", epochs=30)  # written to the shared dir's registry

    # Searches on both servers all through the switch: every answer is one version's.
    seen: list[list[list[tuple[str, float]]]] = []
    failures: list[str] = []
    stop = threading.Event()

    def search(c: httpx.Client) -> None:
        while not stop.is_set():
            try:
                seen.append(answers(c, "gallery"))
            except AssertionError as exc:
                failures.append(str(exc))

    readers = [threading.Thread(target=search, args=(c,)) for c in (a, b)]
    for t in readers:
        t.start()
    try:
        job = activate(b, linear)  # submitted to the other server
    finally:
        time.sleep(1.0)  # both servers level with the switch meanwhile
        stop.set()
        for t in readers:
            t.join()
    assert job["state"] == "succeeded", job
    assert not failures, failures[:3]
    after = answers(a, "gallery")
    assert after != before
    assert answers(b, "gallery") == after
    # Each search (one request per query) answers from one version, never a mix.
    for answer in seen:
        for i, ranking in enumerate(answer):
            assert ranking in (before[i], after[i]), (i, ranking)
    assert any(answer == before for answer in seen) and any(answer == after for answer in seen)
    for c in (a, b):
        assert c.get("/readyz").json()["model"] == linear
        active = [m["version"] for m in c.get("/v1/models").json()["models"] if m["active"]]
        assert active == [linear]
    # New items are embedded with the new version on the server that did not switch itself.
    r = a.post("/v1/collections/gallery/texts", json={"items": [{"id": "n", "text": "red"}]})
    assert r.status_code == 200
    assert b.get("/v1/collections/gallery/items/n").json()["model"] == linear

    late = AppServer(tmp_path / "c", database_url=url, shared_dir=shared).start()
    try:
        with httpx.Client(base_url=late.url, timeout=60) as c:
            assert c.get("/readyz").json()["model"] == linear
            wait_for(lambda: answers(c, "gallery") == answers(a, "gallery"), "c serves")
    finally:
        late.stop()

    r = a.post(f"/v1/models/{linear}/rollback")
    assert wait_for_job(a, r.json()["id"])["state"] == "succeeded"
    wait_for(lambda: b.get("/readyz").json()["model"] == BASE, "b rolls back too")
    assert answers(a, "gallery") == answers(b, "gallery") == before
    a.close()
    b.close()


def test_a_version_one_server_cannot_load_switches_nothing(
    pair: tuple[list[AppServer], str, Path], tmp_path: Path
) -> None:
    """A third server whose shared dir is not the others' (a volume mounted wrong) cannot
    find the version: the activation fails naming it and why, and every server, and
    every collection, stays on the version it had."""
    servers, url, _ = pair
    a = httpx.Client(base_url=servers[0].url, timeout=60)
    assert a.post("/v1/collections", json={"name": "gallery"}).status_code == 201
    r = a.post("/v1/collections/gallery/jobs/index", json={"source": "gallery.jsonl"})
    assert wait_for_job(a, r.json()["id"])["done"] == 160
    before = answers(a, "gallery")
    linear = finetune(a, "linear", epochs=30)
    lost = AppServer(tmp_path / "lost", database_url=url, shared_dir=tmp_path / "elsewhere")
    lost.start()
    try:
        job = activate(a, linear)
        assert job["state"] == "failed", job
        assert "cannot load" in job["message"] and linear in job["message"], job["message"]
        assert "does not exist" in job["message"], job["message"]
        for s in (*servers, lost):
            with httpx.Client(base_url=s.url, timeout=60) as c:
                assert c.get("/readyz").json()["model"] == BASE
                assert c.get("/v1/collections/gallery").json()["model"] == BASE
        assert answers(a, "gallery") == before
    finally:
        lost.stop()
    # Without the server that could not load it, the same activation goes through.
    time.sleep(0.1)
    job = activate(a, linear, force=True)
    assert job["state"] == "succeeded", job
    a.close()
