"""Mixed concurrent traffic: uploads, text indexing, searches and deletes at once."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.helpers import AppServer, image_bytes


def test_server_keeps_answering_and_loses_no_acknowledged_write(
    server: AppServer, client: httpx.Client, collection: str
) -> None:
    acked: set[str] = set()
    deleted: set[str] = set()
    statuses: list[int] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 6.0

    def worker(w: int) -> None:
        rng = random.Random(w)
        n = 0
        with httpx.Client(base_url=server.url, timeout=60) as c:
            while time.monotonic() < stop_at:
                n += 1
                op = rng.random()
                if op < 0.3:
                    item = f"w{w}-img-{n}"
                    files = [("files", ("x.png", image_bytes(seed=w * 1000 + n, size=(20, 20))))]
                    r = c.post(
                        f"/v1/collections/{collection}/images", files=files, data={"ids": [item]}
                    )
                    if r.status_code == 200:
                        with lock:
                            acked.add(item)
                elif op < 0.5:
                    item = f"w{w}-txt-{n}"
                    body = {"items": [{"id": item, "text": f"caption {w} {n}"}]}
                    r = c.post(f"/v1/collections/{collection}/texts", json=body)
                    if r.status_code == 200:
                        with lock:
                            acked.add(item)
                elif op < 0.6 and acked:
                    with lock:
                        mine = sorted(i for i in acked if i.startswith(f"w{w}-"))
                    if not mine:
                        continue
                    item = rng.choice(mine)
                    r = c.delete(f"/v1/collections/{collection}/items/{item}")
                    if r.status_code == 204:
                        with lock:
                            acked.discard(item)
                            deleted.add(item)
                else:
                    r = c.post(
                        f"/v1/collections/{collection}/search", json={"text": f"query {n}", "k": 5}
                    )
                with lock:
                    statuses.append(r.status_code)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))

    assert statuses and all(s < 500 for s in statuses), sorted(set(statuses))
    assert statuses.count(200) > len(statuses) // 2
    counts = client.get(f"/v1/collections/{collection}").json()["counts"]
    assert counts["image"] + counts["text"] == len(acked)
    for item in acked:
        assert client.get(f"/v1/collections/{collection}/items/{item}").status_code == 200
    for item in list(deleted)[:20]:
        assert client.get(f"/v1/collections/{collection}/items/{item}").status_code == 404
