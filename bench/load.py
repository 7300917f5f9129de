"""`make load`: many concurrent clients against a running server for a fixed time.

    python -m bench.load [--url http://host:8000] [--key KEY] [--clients 32] [--seconds 30]

Each client loops over a mix of searches (text to image, text to text, image to image),
uploads (images or texts, each with ids of its own) and deletes (of ids it uploaded
before). Afterwards every acknowledged write is checked: each id that was stored and not
deleted must be readable and must come back when searching with its own content; each
deleted id must be gone (the search is filtered on a key stored with each upload, so an
untrained model's near-identical vectors cannot hide an item). Prints requests per
second, latency percentiles per kind of request and every status seen, writes them as
JSON under bench-results/, and exits 1 on any 5xx, transport error or lost write (429s are
the server shedding load, reported but not failures). Without ``--url`` it starts its own
``xmodal serve`` with the tiny model.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.serving import ServerProcess, image_bytes

KINDS = ("search", "upload", "delete")


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    statuses: Counter[str] = field(default_factory=Counter)
    transport_errors: list[str] = field(default_factory=list)
    stored: dict[str, tuple[str, bytes | str]] = field(default_factory=dict)  # id -> content
    deleted: set[str] = field(default_factory=set)

    def merge(self, other: Tally) -> None:
        for k in KINDS:
            self.latencies[k] += other.latencies[k]
        self.statuses.update(other.statuses)
        self.transport_errors += other.transport_errors
        self.stored.update(other.stored)
        self.deleted |= other.deleted


def _client(url: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60)


def _worker(
    url: str, key: str | None, collection: str, worker: int, stop_at: float, mix: dict[str, float]
) -> Tally:
    rng = random.Random(worker)
    tally = Tally()
    mine: list[str] = []  # ids this worker stored and has not deleted
    base = f"/v1/collections/{collection}"
    n = 0
    with _client(url, key) as c:
        while time.monotonic() < stop_at:
            kind = rng.choices(list(mix), weights=list(mix.values()))[0]
            if kind == "delete" and not mine:
                kind = "upload"
            n += 1
            started = time.perf_counter()
            try:
                if kind == "search":
                    roll = rng.random()
                    if roll < 0.6:
                        body: dict[str, Any] = {"text": f"a photo number {rng.randrange(10**6)}"}
                    elif roll < 0.8:
                        body = {"text": f"caption {rng.randrange(10**6)}", "target": "text"}
                    else:
                        img = image_bytes(seed=rng.randrange(10**6), size=(32, 32))
                        body = {"image_base64": base64.b64encode(img).decode()}
                    r = c.post(f"{base}/search", json={**body, "k": 10})
                elif kind == "upload":
                    item_id = f"w{worker}-{n}-{uuid.uuid4().hex[:6]}"
                    if rng.random() < 0.5:
                        content: bytes | str = image_bytes(
                            (rng.randrange(256), 90, 160), seed=rng.randrange(2**31), size=(32, 32)
                        )
                        r = c.post(
                            f"{base}/images",
                            files=[("files", (f"{item_id}.png", content, "image/png"))],
                            data={"ids": [item_id], "metadata": [json.dumps({"key": item_id})]},
                        )
                        modality = "image"
                    else:
                        content = f"load caption {item_id} {rng.randrange(10**9)}"
                        r = c.post(
                            f"{base}/texts",
                            json={
                                "items": [
                                    {"id": item_id, "text": content, "metadata": {"key": item_id}}
                                ]
                            },
                        )
                        modality = "text"
                    if r.status_code == 200:
                        tally.stored[item_id] = (modality, content)
                        mine.append(item_id)
                else:
                    item_id = mine.pop(rng.randrange(len(mine)))
                    r = c.delete(f"{base}/items/{item_id}")
                    if r.status_code == 204:
                        tally.deleted.add(item_id)
                    else:
                        mine.append(item_id)  # not acknowledged: it must still be there
            except httpx.HTTPError as exc:
                tally.transport_errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                continue
            tally.latencies[kind].append(time.perf_counter() - started)
            tally.statuses[f"{kind} {r.status_code}"] += 1
    return tally


def _verify(url: str, key: str | None, collection: str, tally: Tally) -> list[str]:
    """Every acknowledged write is there and searchable; every acknowledged delete is not."""
    lost = []
    base = f"/v1/collections/{collection}"
    with _client(url, key) as c:
        for item_id, (modality, content) in tally.stored.items():
            if item_id in tally.deleted:
                continue
            if c.get(f"{base}/items/{item_id}").status_code != 200:
                lost.append(f"{item_id}: acknowledged but not found")
                continue
            if modality == "image":
                assert isinstance(content, bytes)
                query: dict[str, Any] = {"image_base64": base64.b64encode(content).decode()}
            else:
                query = {"text": content}
            # Filtered on the item's own key, so the answer does not hang on how well the
            # model tells near-identical pictures apart: it is in the index or it is not.
            body = {**query, "target": modality, "k": 1, "filter": {"key": item_id}}
            r = c.post(f"{base}/search", json=body)
            if r.status_code != 200 or [h["id"] for h in r.json()["results"]] != [item_id]:
                lost.append(f"{item_id}: stored but not found by searching with its content")
        for item_id in tally.deleted:
            if c.get(f"{base}/items/{item_id}").status_code != 404:
                lost.append(f"{item_id}: deleted (204) but still there")
    return lost


def run(
    url: str,
    key: str | None,
    clients: int,
    seconds: float,
    mix: dict[str, float],
    collection: str | None = None,
) -> dict[str, Any]:
    collection = collection or f"load-{uuid.uuid4().hex[:8]}"
    with _client(url, key) as c:
        r = c.post("/v1/collections", json={"name": collection})
        if r.status_code != 201:
            raise SystemExit(f"cannot create collection {collection}: {r.status_code} {r.text}")
        # Something to find before the first upload lands.
        texts = [{"id": f"seed-{i}", "text": f"seed caption {i}"} for i in range(32)]
        c.post(f"/v1/collections/{collection}/texts", json={"items": texts}).raise_for_status()
    total = Tally()
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def run_worker(w: int) -> None:
        t = _worker(url, key, collection, w, stop_at, mix)
        with lock:
            total.merge(t)

    started = time.monotonic()
    threads = [threading.Thread(target=run_worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    lost = _verify(url, key, collection, total)
    requests = sum(len(v) for v in total.latencies.values())
    server_errors = sum(n for s, n in total.statuses.items() if s.split()[1].startswith("5"))
    report: dict[str, Any] = {
        "url": url,
        "collection": collection,
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": requests,
        "requests_per_s": round(requests / elapsed, 1),
        "latency_ms": {
            kind: {
                f"p{q}": round(float(np.percentile(np.array(v) * 1000, q)), 1) for q in (50, 95, 99)
            }
            | {"n": len(v)}
            for kind, v in total.latencies.items()
            if v
        },
        "statuses": dict(sorted(total.statuses.items())),
        "server_errors": server_errors,
        "transport_errors": total.transport_errors[:20],
        "acknowledged_writes": len(total.stored),
        "acknowledged_deletes": len(total.deleted),
        "lost_writes": lost[:20],
        "lost_write_count": len(lost),
    }
    report["ok"] = not server_errors and not total.transport_errors and not lost
    return report


def _mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown request kind {kind!r}: {', '.join(KINDS)}")
        mix[kind] = float(weight)
    return mix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server (default: start one with xmodal-tiny)")
    parser.add_argument("--key", help="API key, when the server has XMODAL_API_KEYS")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--mix", type=_mix, default=_mix("search=0.7,upload=0.2,delete=0.1"), help="weights"
    )
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args(argv)

    server = None
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url
        if url is None:
            server = ServerProcess(Path(tmp) / "data", log_level="warning").start(timeout=300)
            url = server.url
        try:
            report = run(url.rstrip("/"), args.key, args.clients, args.seconds, args.mix)
        finally:
            if server is not None:
                server.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    lat = report["latency_ms"]
    print(
        f"\n{report['requests']} requests in {report['seconds']} s from {args.clients} clients: "
        f"{report['requests_per_s']} requests/s; "
        + "; ".join(f"{k} p50 {v['p50']} ms p99 {v['p99']} ms" for k, v in lat.items())
        + f"; {report['server_errors']} 5xx, {len(report['transport_errors'])} transport "
        f"errors, {report['lost_write_count']} lost of {report['acknowledged_writes']} "
        f"acknowledged writes ({path})"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
