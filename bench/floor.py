"""A search against its floor: the same closed-loop clients drive a FastAPI endpoint that
does no work (it parses a search body and answers a fixed 10-hit body of the same shape)
and xmodal's search on 20,000 text vectors (text to text) and on 512 images (text to
image), in one run; each search row is also given as a fraction of the floor's rate.

    .venv/bin/python -m bench.floor [--clients 16,64] [--seconds 15] [--profile DIR]

Both servers are processes of their own, served by uvicorn with the same options
(`xmodal serve`'s: no access log from uvicorn, and its own choice of event loop and HTTP
parser: uvloop and httptools, which `uvicorn[standard]` brings). The clients
are threads of this process, on the same machine. With ``--profile``, py-spy samples the
xmodal server during the first text-to-text run and the top functions by own time and by
cumulative time are written there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

from bench.serving import REPO, ServerProcess, add_images, drive, free_port

HITS = [
    {
        "id": f"item-{i:05d}",
        "score": 0.9 - i / 100,
        "modality": "text",
        "metadata": {"n": i},
        "text": f"a caption of item {i}",
    }
    for i in range(10)
]
FIXED = {"results": HITS, "next_offset": 10, "took_ms": 0.1}


class Body(BaseModel):
    """What the floor parses: a search body's fields, validated as xmodal's are."""

    text: str
    target: str | None = None
    k: int = 10


def floor_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/collections/{name}/search")
    async def search(name: str, body: Body) -> dict[str, Any]:
        return FIXED

    return app


def serve_floor(port: int, workers: int = 1) -> None:
    import uvicorn

    uvicorn.run(
        "bench.floor:floor_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=workers,  # processes on one port, as ``xmodal serve --workers``
        log_config=None,
        access_log=False,
        log_level="warning",
    )


class FloorProcess:
    def __init__(self, workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", "--serve", str(self.port)]
            + ["--workers", str(workers)],
            cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.post(f"{self.url}/v1/collections/x/search", json={"text": "x"}, timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("the floor server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``run``'s figures, with the server's and this (client) process's CPU per request."""
    server, client = cpu_seconds(pid), time.process_time()
    out = run()
    n = max(1.0, out["requests"])
    out["server_cpu_ms"] = 1000 * (cpu_seconds(pid) - server) / n
    out["client_cpu_ms"] = 1000 * (time.process_time() - client) / n
    return out


def fill(url: str, texts: int, images: int) -> None:
    with httpx.Client(base_url=url, timeout=120) as c:
        for name in ("texts", "images"):
            c.delete(f"/v1/collections/{name}")
            assert c.post("/v1/collections", json={"name": name}).status_code == 201
        for start in range(0, texts, 64):
            items = [
                {"id": f"t{i}", "text": f"{i % 97} words about thing {i}", "metadata": {"n": i}}
                for i in range(start, min(texts, start + 64))
            ]
            r = c.post("/v1/collections/texts/texts", json={"items": items})
            assert r.status_code == 200, r.text
        add_images(c, "images", images)


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: no profile", file=sys.stderr)
        return None
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out / "xmodal-search.txt"),
            "--nonblocking",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--summarise", type=Path, help="print the tables of a py-spy raw file")
    parser.add_argument("--clients", default="16,64")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--profile", type=Path, help="write a py-spy profile of xmodal here")
    args = parser.parse_args()
    if args.serve:
        serve_floor(args.serve, args.workers)
        return
    if args.summarise:
        print(summarise(args.summarise))
        return
    print(table(floor_rows(args.clients, args.seconds, args.texts, args.images, args.profile)))


TABLE_HEAD = (
    "| benchmark | rate | p50 | p99 | of the floor | server CPU | client CPU |\n"
    "|---|---|---|---|---|---|---|"
)


def table(rows: list[str]) -> str:
    return "\n".join([TABLE_HEAD, *rows])


def floor_rows(
    clients: str, seconds: float, texts: int, images: int, profile_dir: Path | None = None
) -> list[str]:
    """The floor and xmodal's searches, driven alike, as table rows (see the module doc)."""
    rows: list[str] = []
    floor = FloorProcess()
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", max_k=100).start(timeout=300)
        try:
            fill(server.url, texts, images)
            search = "/v1/collections/{}/search"
            for n in (int(x) for x in clients.split(",")):
                base = measured(
                    floor.proc.pid,
                    lambda n=n: drive(
                        floor.url,
                        search.format("x"),
                        lambda w, i: {"text": f"q {w} {i}"},
                        n,
                        seconds,
                    ),
                )
                rows.append(row(f"no-op FastAPI endpoint, fixed 10-hit body, {n} clients", base))
                spy = None
                if profile_dir and n == 16:
                    spy = profile(server.proc.pid, seconds, profile_dir)  # type: ignore[union-attr]
                for name, target in (("texts", "text"), ("images", "image")):
                    got = measured(
                        server.proc.pid,  # type: ignore[union-attr]
                        lambda n=n, name=name, target=target: drive(
                            server.url,
                            search.format(name),
                            lambda w, i: {"text": f"query {w} {i}", "target": target, "k": 10},
                            n,
                            seconds,
                        ),
                    )
                    rows.append(
                        row(f"xmodal search text->{target}, {n} clients", got, base["per_s"])
                    )
                    if spy is not None:
                        spy.wait()
                        spy = None
            batch = measured(
                server.proc.pid,  # type: ignore[union-attr]
                lambda: drive(
                    server.url,
                    "/v1/collections/texts/search/batch",
                    lambda w, i: {
                        "queries": [{"text": f"q {w} {i} {j}", "target": "text"} for j in range(64)]
                    },
                    4,
                    seconds,
                ),
            )
            batch = {
                **batch,
                "per_s": batch["per_s"] * 64,
                "server_cpu_ms": batch["server_cpu_ms"] / 64,
                "client_cpu_ms": batch["client_cpu_ms"] / 64,
            }
            rows.append(
                row(
                    "xmodal search/batch text->text, 64 queries a request, 4 clients",
                    batch,
                    unit="queries",
                )
            )
        finally:
            server.stop()
            floor.stop()
    return rows


def summarise(raw: Path, top: int = 25) -> str:
    """py-spy's collapsed stacks (``frame;frame;... count``) as two tables: the frames the
    samples were in (own time) and the frames on the stack (cumulative), as shares of all
    samples of the server's threads."""
    own: dict[str, int] = {}
    cumulative: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames[1:]):  # the first is the thread
            cumulative[frame] = cumulative.get(frame, 0) + n
    lines = [f"{total} samples", "", "| own time | frame |", "|---|---|"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * n / total:.1f}% | `{frame}` |")
    lines += ["", "| on the stack | frame |", "|---|---|"]
    for frame, n in sorted(cumulative.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {100 * n / total:.1f}% | `{frame}` |")
    return "\n".join(lines)


def row(name: str, r: dict[str, float], floor: float | None = None, unit: str = "requests") -> str:
    share = f"{r['per_s'] / floor:.2f}" if floor else "-"
    errors = f", {int(r['errors'])} errors" if r["errors"] else ""
    each = {"requests": "request", "queries": "query"}[unit]
    return (
        f"| {name} | {r['per_s']:,.0f} {unit}/s{errors} | {r['p50_ms']:.1f} ms | "
        f"{r['p99_ms']:.1f} ms | {share} | {r['server_cpu_ms']:.2f} ms/{each} | "
        f"{r['client_cpu_ms']:.2f} ms/{each} |"
    )


if __name__ == "__main__":
    main()
