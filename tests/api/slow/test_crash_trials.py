"""Crash trials: clients write and delete while a batch job runs, and the server is killed
with SIGKILL at random moments, again and again. After each restart every acknowledged
write is readable and found by a filtered search, every acknowledged delete stays gone,
and the job carries on to the end without losing or repeating an item."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.calls import wait_for_job
from tests.corpus import write_many
from tests.helpers import ServerProcess, image_bytes

KILLS = 7  # each round is a server start, about 6 s of imports here
PG_KILLS = 3
CORPUS = 600  # images for the batch job: enough that it spans several kills


@dataclass
class Ledger:
    """What the server acknowledged, per client thread (each owns its ids)."""

    written: dict[str, str] = field(default_factory=dict)  # id -> modality
    deleted: set[str] = field(default_factory=set)
    checked: set[str] = field(default_factory=set)  # written and deleted ids checked so far
    # Deletes sent when the server died: they may or may not have happened.
    uncertain: set[str] = field(default_factory=set)


def client_loop(
    url: str, name: str, ledger: Ledger, stop: threading.Event, seed: int, round_: int
) -> None:
    rng = random.Random(seed * 100 + round_)
    n = 0
    with httpx.Client(base_url=url, timeout=10) as c:
        while not stop.is_set():
            n += 1
            item_id = f"r{round_}-c{seed}-{n}"
            live = [i for i in ledger.written if i not in ledger.deleted | ledger.uncertain]
            try:
                if live and rng.random() < 0.25:
                    victim = rng.choice(live)
                    ledger.uncertain.add(victim)
                    r = c.delete(f"/v1/collections/{name}/items/{victim}")
                    ledger.uncertain.discard(victim)
                    if r.status_code == 204:
                        ledger.deleted.add(victim)
                elif rng.random() < 0.5:
                    meta = {"tag": item_id}
                    r = c.post(
                        f"/v1/collections/{name}/texts",
                        json={"items": [{"id": item_id, "text": f"note {n}", "metadata": meta}]},
                    )
                    if r.status_code == 200:
                        ledger.written[item_id] = "text"
                else:
                    png = image_bytes((n % 256, seed * 40 % 256, 90), seed=seed * 1000 + n)
                    r = c.post(
                        f"/v1/collections/{name}/images",
                        files=[("files", ("a.png", png))],
                        data={"ids": [item_id], "metadata": [f'{{"tag": "{item_id}"}}']},
                    )
                    if r.status_code == 200:
                        ledger.written[item_id] = "image"
            except httpx.HTTPError:
                return  # the server is gone: whatever was in flight is not acknowledged


@pytest.mark.parametrize("catalogue", ["sqlite", "postgres"])
def test_acknowledged_writes_and_deletes_survive_repeated_kill_9(
    tmp_path: Path, catalogue: str, request: pytest.FixtureRequest
) -> None:
    """On either catalogue; on PostgreSQL the server process dies and PostgreSQL lives on
    (fewer rounds: the same code paths, the catalogue's own durability on top)."""
    data = tmp_path / "data"
    write_many(data / "import", "corpus", CORPUS)
    rng = random.Random(11)
    ledgers = [Ledger() for _ in range(3)]
    job_id = None
    # Dumps every half second: kills land between dumps and mid-dump alike.
    settings: dict[str, object] = {"import_chunk_size": 32, "index_dump_interval_s": 0.5}
    kills = KILLS
    if catalogue == "postgres":
        settings["database_url"] = request.getfixturevalue("pg").database()
        kills = PG_KILLS
    for round_ in range(kills + 1):
        server = ServerProcess(data, **settings).start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                if round_ == 0:
                    assert c.post("/v1/collections", json={"name": "crash"}).status_code == 201
                    r = c.post("/v1/collections/crash/jobs/index", json={"source": "corpus"})
                    job_id = r.json()["id"]
                else:  # what the last round acknowledged (everything at the end)
                    check(c, ledgers, everything=round_ == kills)
                if round_ == kills:
                    job = wait_for_job(c, str(job_id), timeout=300)
                    assert job["state"] == "succeeded", job
                    assert job["done"] == CORPUS and job["failed"] == 0, job
                    r = c.post(
                        "/v1/collections/crash/search",
                        json={
                            "text": "x",
                            "target": "image",
                            "k": 1,
                            "filter": {"path": "00007.png"},
                        },
                    )
                    assert [h["id"] for h in r.json()["results"]] == ["00007.png"]
                    break
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=client_loop, args=(server.url, "crash", led, stop, i, round_)
                )
                for i, led in enumerate(ledgers)
            ]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.3, 2.0))
            server.kill()
            stop.set()
            for t in threads:
                t.join(30)
        finally:
            server.kill()
    acknowledged = sum(len(led.written) for led in ledgers)
    deletes = sum(len(led.deleted) for led in ledgers)
    assert acknowledged > 50 and deletes > 5, (acknowledged, deletes)  # the trial did something


def check(c: httpx.Client, ledgers: list[Ledger], everything: bool) -> None:
    """Every acknowledged write is there and found by a filtered search; every
    acknowledged delete is gone. Checks what was not checked yet, or ``everything``."""
    for ledger in ledgers:
        for item_id, modality in list(ledger.written.items()):
            if item_id in ledger.uncertain:
                continue
            gone = item_id in ledger.deleted
            key = f"{item_id}:{gone}"
            if key in ledger.checked and not everything:
                continue
            ledger.checked.add(key)
            r = c.get(f"/v1/collections/crash/items/{item_id}")
            if gone:
                assert r.status_code == 404, (item_id, r.text)
                continue
            assert r.status_code == 200, (item_id, r.text)
            r = c.post(
                "/v1/collections/crash/search",
                json={"text": "x", "target": modality, "k": 1, "filter": {"tag": item_id}},
            )
            assert [h["id"] for h in r.json()["results"]] == [item_id], (item_id, r.text)
