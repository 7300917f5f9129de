"""Test helpers: images made on the fly, the app served in this process, and a real
``xmodal serve`` process for the tests where the process is the point."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_cli(argv: Sequence[str], env: dict[str, str]) -> CliRun:
    """The ``xmodal`` command in this process, with ``env`` set for its duration and its
    output captured; a real process is kept for what the process itself is about."""
    from app.cli.commands import main

    out, err = io.StringIO(), io.StringIO()
    with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse and settings errors exit
            code = exc.code if isinstance(exc.code, int) else 1
    return CliRun(code, out.getvalue(), err.getvalue())


TINY = {"model": "xmodal-tiny", "pretrained": "none", "device": "cpu", "log_level": "warning"}


class AppServer:
    """``create_app(settings)`` served by uvicorn on a loopback port in a thread of this
    process, through its real lifespan: what ``xmodal serve`` runs, without paying for a
    new interpreter, torch import and model load per test module."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.settings = {**TINY, "data_dir": data_dir, **settings}
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, wait: bool = True) -> AppServer:
        import uvicorn

        from app.config import Settings
        from app.main import create_app

        self.data_dir.mkdir(parents=True, exist_ok=True)
        app = create_app(Settings(**self.settings))
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="app-server")
        self._thread.start()
        if wait:
            self._wait("/readyz", timeout)
        return self

    def wait_listening(self, timeout: float = 60.0) -> None:
        self._wait("/healthz", timeout)

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._thread is None or not self._thread.is_alive():
                raise RuntimeError("in-process server exited during start-up")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"in-process server: {path} not answering 200 after {timeout} s")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(60)
            self._server = self._thread = None


class ServerProcess:
    """``xmodal serve`` on a loopback port, with the tiny model and its own data dir."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        every = {**TINY, "data_dir": data_dir, **settings}
        self.env = {
            **os.environ,
            **{f"XMODAL_{k.upper()}": str(v) for k, v in every.items()},
            # No test may reach the internet: point the hub at a closed loopback port.
            "HF_ENDPOINT": "https://127.0.0.1:9",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, wait: bool = True) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        command = [sys.executable, "-m", "app.cli", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/healthz", timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"server not listening after {timeout} s:\n{self.log()}")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
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
