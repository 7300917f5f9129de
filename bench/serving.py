"""A real ``xmodal serve`` process with the tiny model, and images made on the fly: what
the benchmarks, the load check and the tests that need a process of their own start."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def image_bytes(
    color: tuple[int, int, int] = (255, 0, 0),
    size: tuple[int, int] = (48, 40),
    fmt: str = "PNG",
    mode: str = "RGB",
    seed: int | None = None,
    **save: Any,
) -> bytes:
    """An image in ``fmt``; with ``seed``, random noise over the colour so that no two
    seeds give the same picture."""
    if seed is None:
        img = Image.new("RGB", size, color)
    else:
        rng = np.random.default_rng(seed)
        noise = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        base = np.array(color, dtype=np.uint16)
        img = Image.fromarray(((noise.astype(np.uint16) + base) // 2).astype(np.uint8), "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drive(
    url: str, path: str, body: Callable[[int, int], dict[str, Any]], clients: int, seconds: float
) -> dict[str, float]:
    """``clients`` threads, each sending the next request when the last is answered."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(worker: int) -> None:
        nonlocal errors
        mine, bad, i = [], 0, 0
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < stop_at:
                t = time.perf_counter()
                r = c.post(path, json=body(worker, i))
                mine.append(time.perf_counter() - t)
                bad += r.status_code != 200
                i += 1
        with lock:
            latencies.extend(mine)
            errors += bad

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    lat = np.array(latencies) * 1000
    return {
        "per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": float(errors),
        "requests": float(len(latencies)),
    }


def add_images(client: httpx.Client, collection: str, n: int) -> None:
    """``n`` small distinct JPEGs into ``collection``, 32 a request."""
    for start in range(0, n, 32):
        files = [
            (
                "files",
                (f"{i}.jpg", image_bytes((i % 255, 90, 160), seed=i, size=(96, 96), fmt="JPEG")),
            )
            for i in range(start, min(n, start + 32))
        ]
        r = client.post(f"/v1/collections/{collection}/images", files=files)
        assert r.status_code == 200, r.text


TINY = {"model": "xmodal-tiny", "pretrained": "none", "device": "cpu", "log_level": "warning"}


def tiny_env(**settings: Any) -> dict[str, str]:
    """``XMODAL_*`` variables for the tiny model with ``settings`` on top, offline."""
    return {
        **{f"XMODAL_{k.upper()}": str(v) for k, v in {**TINY, **settings}.items()},
        # No test may reach the internet: point the hub at a closed loopback port.
        "HF_ENDPOINT": "https://127.0.0.1:9",
    }


class ServerProcess:
    """``xmodal serve`` on a loopback port, with the tiny model and its own data dir."""

    def __init__(
        self,
        data_dir: Path,
        *,
        args: tuple[str, ...] = (),
        port: int | None = None,
        **settings: Any,
    ) -> None:
        """``args``: more for ``xmodal serve`` (``--workers 2``); ``port``: the one a server
        killed before had (a load balancer names it)."""
        self.data_dir = data_dir
        self.port = port or free_port()
        self.args = args
        self.env = {**os.environ, **tiny_env(data_dir=data_dir, **settings)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, wait: bool = True) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "app.cli", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as poll:
            while time.monotonic() < deadline:
                try:
                    poll.get(self.url + "/healthz")
                    return
                except httpx.HTTPError:
                    time.sleep(0.1)
        raise TimeoutError(f"server not listening after {timeout} s:\n{self.log()}")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # One client for every poll: a fresh one per call costs about 30 ms of CPU (an SSL
        # context), taken from the server starting beside it.
        with httpx.Client(timeout=1.0, trust_env=False) as poll:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if poll.get(self.url + "/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no final snapshot."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""
