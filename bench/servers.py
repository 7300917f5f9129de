"""Several servers, one service, measured on this machine in one run: text-to-image
searches/s through one server, two servers behind nginx, and one ``xmodal serve
--workers 2``, each beside the no-op floor of the same topology (the floor app of
``bench.floor`` as one process, as two behind the same nginx, and as two uvicorn workers);
then how long a write or a delete acknowledged by one server takes to be searchable (or
gone) through the other, while clients search through nginx.

    .venv/bin/python -m bench.servers [--seconds 10] [--clients 32] [--visibility 100]

Every server is a process of its own on one PostgreSQL catalogue (a local cluster on a
Unix socket, as the tests run it) and one shared dir, with FAISS indexes of its own. The
clients are threads of this process. On two cores every topology competes with its
clients and with the catalogue for the same cores: what the table shows is what each
layer costs, not what a second machine would add.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.floor import FloorProcess
from bench.nginx import Nginx
from bench.postgres import PgCluster
from bench.serving import ServerProcess, add_images, drive

IMAGES = 512


def body(w: int, i: int) -> dict[str, Any]:
    return {"text": f"query {w} {i}", "target": "image", "k": 10}


@contextmanager
def servers(
    root: Path, settings: dict[str, Any], n: int, args: tuple[str, ...] = ()
) -> Iterator[list[ServerProcess]]:
    procs = [
        ServerProcess(root / f"s{len(list(root.glob('s*')))}-{i}", args=args, **settings)
        for i in range(n)
    ]
    try:
        for p in procs:
            p.start(wait=False)
        for p in procs:
            p.wait_ready(300)
        yield procs
    finally:
        for p in procs:
            p.stop()


def search_rates(
    root: Path, settings: dict[str, Any], clients: int, seconds: float
) -> list[dict[str, Any]]:
    rows = []
    path = "/v1/collections/photos/search"
    floor_path = "/v1/collections/x/search"

    # One server, and its floor.
    floor = FloorProcess()
    try:
        base = drive(floor.url, floor_path, body, clients, seconds)
    finally:
        floor.stop()
    with servers(root, settings, 1) as (one,):
        got = drive(one.url, path, body, clients, seconds)
    rows.append({"topology": "one server", "search": got, "floor": base})

    # Two servers behind nginx, and two floors behind the same nginx.
    floors = [FloorProcess(), FloorProcess()]
    proxy = Nginx(root / "nginx-floor", [f"127.0.0.1:{f.port}" for f in floors]).start()
    try:
        base = drive(proxy.url, floor_path, body, clients, seconds)
    finally:
        proxy.stop()
        for f in floors:
            f.stop()
    with servers(root, settings, 2) as pair:
        proxy = Nginx(root / "nginx", [f"127.0.0.1:{p.port}" for p in pair]).start()
        try:
            got = drive(proxy.url, path, body, clients, seconds)
        finally:
            proxy.stop()
    rows.append({"topology": "two servers behind nginx", "search": got, "floor": base})

    # One server, two worker processes on its port; the floor with two uvicorn workers.
    floor = FloorProcess(workers=2)
    try:
        base = drive(floor.url, floor_path, body, clients, seconds)
    finally:
        floor.stop()
    with servers(root, settings, 1, ("--workers", "2")) as (two,):
        got = drive(two.url, path, body, clients, seconds)
    rows.append({"topology": "xmodal serve --workers 2", "search": got, "floor": base})
    return rows


def visibility(root: Path, settings: dict[str, Any], n: int, clients: int) -> dict[str, Any]:
    """Seconds from a write's (or delete's) acknowledgement by server A to the moment a
    search through server B finds the item (or no longer does), ``n`` times each, while
    ``clients`` threads search through nginx."""
    with servers(root, settings, 2) as (a, b):
        proxy = Nginx(root / "nginx-vis", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]).start()
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=proxy.url, timeout=30) as c:
                while not stop.is_set():
                    c.post("/v1/collections/photos/search", json=body(0, 0))

        threads = [threading.Thread(target=load) for _ in range(clients)]
        for t in threads:
            t.start()
        writes: list[float] = []
        deletes: list[float] = []
        try:
            with (
                httpx.Client(base_url=a.url, timeout=30) as ca,
                httpx.Client(base_url=b.url, timeout=30) as cb,
            ):

                def found(tag: str) -> bool:
                    r = cb.post(
                        "/v1/collections/notes/search",
                        json={"text": "x", "target": "text", "k": 1, "filter": {"tag": tag}},
                    )
                    return bool(r.json()["results"])

                ca.post("/v1/collections", json={"name": "notes"})
                for i in range(n):
                    tag = f"v{i}"
                    item = {"id": tag, "text": f"note {i}", "metadata": {"tag": tag}}
                    r = ca.post("/v1/collections/notes/texts", json={"items": [item]})
                    assert r.status_code == 200, r.text
                    t0 = time.monotonic()
                    while not found(tag):
                        time.sleep(0.005)
                    writes.append(time.monotonic() - t0)
                    assert ca.delete(f"/v1/collections/notes/items/{tag}").status_code == 204
                    t0 = time.monotonic()
                    while found(tag):
                        time.sleep(0.005)
                    deletes.append(time.monotonic() - t0)
        finally:
            stop.set()
            for t in threads:
                t.join()
            proxy.stop()

    def summary(xs: list[float]) -> dict[str, float]:
        return {
            "p50_s": statistics.median(xs),
            "p99_s": float(np.percentile(xs, 99)),
            "max_s": max(xs),
        }

    return {"n": n, "clients": clients, "write": summary(writes), "delete": summary(deletes)}


def run(seconds: float, clients: int, visibility_n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pg = PgCluster().start()
        try:
            settings = {
                "database_url": pg.database(),
                "shared_dir": root / "shared",
                "max_k": 100,
            }
            with servers(root, settings, 1) as (s,), httpx.Client(base_url=s.url, timeout=120) as c:
                assert c.post("/v1/collections", json={"name": "photos"}).status_code == 201
                add_images(c, "photos", IMAGES)
            rates = search_rates(root, settings, clients, seconds)
            seen = visibility(root, settings, visibility_n, min(clients, 8))
        finally:
            pg.stop()
    return {
        "clients": clients,
        "seconds": seconds,
        "images": IMAGES,
        "rates": rates,
        "visibility": seen,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        f"| topology ({results['clients']} clients, text->image, {results['images']} images) "
        "| searches/s | p50 | p99 | no-op floor/s | of the floor |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rates"]:
        s, f = r["search"], r["floor"]
        lines.append(
            f"| {r['topology']} | {s['per_s']:,.0f} | {s['p50_ms']:.1f} ms | {s['p99_ms']:.1f} ms"
            f" | {f['per_s']:,.0f} | {s['per_s'] / f['per_s']:.0%} |"
        )
    v = results["visibility"]
    lines += [
        "",
        f"| visible on the other server ({v['n']} each, {v['clients']} clients searching) "
        "| p50 | p99 | max |",
        "|---|---|---|---|",
    ]
    for what in ("write", "delete"):
        x = v[what]
        lines.append(
            f"| a {what} | {x['p50_s'] * 1000:.0f} ms | {x['p99_s'] * 1000:.0f} ms"
            f" | {x['max_s'] * 1000:.0f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--visibility", type=int, default=100)
    args = parser.parse_args()
    print(table(run(args.seconds, args.clients, args.visibility)))


if __name__ == "__main__":
    main()
