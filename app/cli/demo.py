"""``xmodal demo``: the whole loop offline, on the synthetic shapes.

It generates the dataset, starts a server with the tiny model (random weights), fine-tunes
it on the training pairs, activates the result (re-embedding nothing yet), indexes a
gallery of unseen pictures and their captions, shows what a few searches return, and
keeps serving until interrupted.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.cli.client import ApiClient
from index.errors import DataDirInUse
from index.lock import lock_data_dir
from models.synthetic import write_dataset, write_samples

EXAMPLES = ("a small red circle", "a large blue square", "a green cross at the top left")


def _wait(client: ApiClient, job_id: str, label: str) -> dict[str, Any]:
    started = time.monotonic()

    def show(job: dict[str, Any]) -> None:
        progress = job.get("detail", {}).get("progress")
        extra = f" loss {progress['loss']:.3f}" if progress else ""
        if job.get("items_per_second"):
            extra += f", {job['items_per_second']:.0f}/s"
        if job.get("eta_seconds") is not None and job["state"] == "running":
            extra += f", about {job['eta_seconds']:.0f} s left"
        elapsed = time.monotonic() - started
        count = f" {job['done']}/{job['total']}" if job.get("total") else ""
        sys.stderr.write(f"\r{label}: {job['state']}{count} ({elapsed:.0f} s{extra})   ")

    job = client.wait_job(job_id, show)
    sys.stderr.write("\n")
    if job["state"] != "succeeded":
        raise SystemExit(f"{label} {job['state']}: {job.get('message')}")
    return job


def port_in_use(port: int) -> bool:
    """Whether something listens on (or holds) ``port`` on the loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def listener_pids(port: int) -> set[int] | None:
    """The processes holding a listening TCP socket on ``port``, from ``/proc``; None where
    there is no ``/proc`` to read (not Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not Path("/proc/self/fd").is_dir():
        return None
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                pids.add(int(proc.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def run(data_dir: Path, port: int, pairs: int, epochs: int) -> int:
    if port_in_use(port):
        # Otherwise the demo would talk to whatever answers there.
        raise SystemExit(f"xmodal demo: port {port} is in use; stop what runs there or pass --port")
    data_dir.mkdir(parents=True, exist_ok=True)
    try:  # a demo already serving this data dir: say so, before starting a server
        os.close(lock_data_dir(data_dir))
    except DataDirInUse:
        raise SystemExit(
            f"xmodal demo: {data_dir} is in use by another xmodal (a demo still running?); "
            "stop it, or pass --data-dir"
        ) from None
    # SIGTERM ends the demo as Ctrl-C does: the server stops, the exit status is 0.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    root = data_dir / "import"
    if not (root / "shapes-train.jsonl").exists():
        print(f"generating {pairs} training pairs and a 400-picture gallery under {root}")
        write_dataset(root, "shapes-train", pairs, seed=0, domain="a", side=64)
        write_dataset(root, "shapes-gallery", 400, seed=1, domain="a", side=64)
    # A few named pictures for trying the API by hand (the README's first session).
    write_samples(data_dir / "samples")
    env = {
        **os.environ,
        "XMODAL_MODEL": "xmodal-tiny",
        "XMODAL_PRETRAINED": "none",
        "XMODAL_DATA_DIR": str(data_dir),
        "XMODAL_PORT": str(port),
        # The demo prints what matters; the server's access log would bury it.
        "XMODAL_LOG_LEVEL": os.environ.get("XMODAL_LOG_LEVEL", "warning"),
    }
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env)

    def forward(signum: int, frame: object) -> None:
        # SIGTERM to the demo alone: the server hears it too, once, as it hears Ctrl-C.
        server.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, forward)
    url = f"http://127.0.0.1:{port}"
    try:
        with ApiClient(url) as api:
            c = api.http
            wait_ready(c, server, "xmodal demo")
            # Whatever answers must be the server started here, not one that took the port
            # between the check above and its start.
            holders = listener_pids(port)
            if holders is not None and server.pid not in holders:
                raise SystemExit(f"xmodal demo: another process answers on port {port}")
            active = c.get("/readyz").json()["model"]
            if active.startswith("xmodal-tiny@random"):
                tune = {
                    "source": "shapes-train.jsonl",
                    "method": "contrastive",
                    "hyperparameters": {"epochs": epochs, "lr": 1e-3, "batch_size": 64},
                }
                job = _wait(api, api.post("/v1/finetune", tune, (202,))["id"], "fine-tuning")
                detail = job["detail"]
                base, tuned = detail["base_metrics"]["t2i_r5"], detail["result_metrics"]["t2i_r5"]
                print(
                    f"{detail['version']}: text-to-image Recall@5 on held-out pairs "
                    f"{base:.1f} -> {tuned:.1f}"
                )
                activate = f"/v1/models/{detail['version']}/activate"
                _wait(api, api.post(activate, {}, (202,))["id"], "activating")
            if c.get("/v1/collections/demo").status_code == 404:
                c.post("/v1/collections", json={"name": "demo"})
            gallery = {"source": "shapes-gallery.jsonl"}
            job_id = api.post("/v1/collections/demo/jobs/index", gallery, (202,))["id"]
            _wait(api, job_id, "indexing the gallery (400 pictures and their captions)")
            for query in EXAMPLES:
                hits = c.post("/v1/collections/demo/search", json={"text": query, "k": 3}).json()[
                    "results"
                ]
                print(f"\n{query!r}:")
                for h in hits:
                    m = h["metadata"]
                    print(
                        f"  {h['score']:.3f}  {m['size']} {m['colour']} {m['shape']} at the "
                        f"{m['position']}  {url}/v1/collections/demo/items/{h['id']}/image"
                    )
        print(
            f"\nserving on {url}; try:\n  curl -s {url}/v1/collections/demo/search "
            "-H 'content-type: application/json' -d '{\"text\": \"a small red circle\"}'\n"
            f"The search page: http://localhost:{port}/?q=a+small+red+circle&collection=demo "
            f"(the API's own page: http://localhost:{port}/docs)\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        return server.wait()
    except KeyboardInterrupt:
        _stop(server, signalled=True)
        return 0
    finally:
        _stop(server, signalled=False)


# What /readyz says while a server starts (its message begins so), or stops.
STARTING = ("loading the model", "building indexes", "shutting down")


def wait_ready(
    c: httpx.Client, server: subprocess.Popen[bytes], who: str, timeout_s: float = 120
) -> None:
    """Until the server started here answers ``/readyz``; else ``SystemExit`` with one
    sentence that says why it did not come up (it exited, it could not load, it is slow)."""
    deadline = time.monotonic() + timeout_s
    why = "it did not answer"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"{who}: the server exited with status {server.returncode}")
        try:
            r = c.get("/readyz")
        except httpx.HTTPError:
            r = None
        if r is not None and r.status_code == 200:
            return
        if r is not None:
            try:
                why = str(r.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                why = f"/readyz answered {r.status_code}"
            if not why.startswith(STARTING):  # it started, and cannot load: waiting changes nothing
                raise SystemExit(f"{who}: the server could not start: {why}")
        time.sleep(0.2)
    raise SystemExit(f"{who}: the server was not ready after {timeout_s:g} s ({why})")


def _stop(server: subprocess.Popen[bytes], signalled: bool) -> None:
    """End the demo's server, saying so (a stop that takes seconds in silence looks like a
    hang). ``signalled``: Ctrl-C (or the SIGTERM forwarded) reached it already, and it is
    finishing what it holds; a second signal would cut that short."""
    if server.poll() is not None and not signalled:
        return
    print("\nstopping the server ...", flush=True)
    started = time.monotonic()
    if not signalled:
        server.terminate()
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    print(f"stopped ({time.monotonic() - started:.1f} s)", flush=True)
