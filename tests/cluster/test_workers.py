"""``xmodal serve --workers 2``: two server processes on one port over one SQLite
catalogue in the data dir. Connections land on either; what one writes the other finds
at once; a worker killed with SIGKILL is started again and catches up; SIGTERM stops them
all, with status 0."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.helpers import ServerProcess, children


def server_ids(url: str, tries: int = 60) -> set[str]:
    """The servers answering on ``url``, one new connection per request."""
    seen: set[str] = set()
    for _ in range(tries):
        with httpx.Client(timeout=10) as c:
            r = c.get(url + "/readyz")
        if r.status_code == 200:
            seen.add(r.json()["server"])
    return seen


def test_two_workers_share_one_port_and_one_catalogue(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, args=("--workers", "2")).start(timeout=120)
    assert server.proc is not None
    try:
        deadline = time.monotonic() + 60
        while len(ids := server_ids(server.url, 20)) < 2:
            assert time.monotonic() < deadline, ids
        assert {p.name for p in (data / "workers").iterdir()} == {"0", "1"}
        assert (data / "xmodal.sqlite3").exists()  # the one catalogue, in the shared dir
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/v1/collections", json={"name": "w"}).status_code == 201
        # Each request on a new connection, so on either worker: every write is found
        # through both within a moment (the other worker polls the catalogue's data
        # version every 20 ms).
        for i in range(5):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                item = {"id": f"t{i}", "text": f"note {i}", "metadata": {"i": i}}
                r = c.post("/v1/collections/w/texts", json={"items": [item]})
                assert r.status_code == 200, r.text
            written, found = time.monotonic(), 0
            while found < 4:  # four searches in a row find it, on whichever worker
                with httpx.Client(base_url=server.url, timeout=30) as c:
                    r = c.post(
                        "/v1/collections/w/search",
                        json={"text": "note", "target": "text", "k": 1, "filter": {"i": i}},
                    )
                hit = [h["id"] for h in r.json()["results"]] == [f"t{i}"]
                found = found + 1 if hit else 0
                assert time.monotonic() - written < 2, f"t{i} not found through both workers"
        # A worker killed is started again, catches up, and serves.
        workers = children(server.proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            now = children(server.proc.pid)
            if len(now) == 2 and workers[0] not in now and len(server_ids(server.url, 20)) == 2:
                break
            assert time.monotonic() < deadline, now
            time.sleep(0.2)
        for _ in range(4):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                r = c.post(
                    "/v1/collections/w/search", json={"text": "x", "target": "text", "k": 20}
                )
                assert len(r.json()["results"]) == 5, r.text
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        assert children(server.proc.pid) == []
    finally:
        server.stop()
