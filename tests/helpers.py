"""Test helpers: the app served in this process, the CLI run in this process; a real
``xmodal serve`` process and images made on the fly come from ``bench.serving``."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.serving import REPO, TINY, ServerProcess, free_port, image_bytes, tiny_env

__all__ = [
    "BACKENDS",
    "REPO",
    "SPECS",
    "TINY",
    "AppServer",
    "CliRun",
    "ServerProcess",
    "image_bytes",
    "run_cli",
]

# The vector backends the API tests run against: FAISS in the process, and Milvus Lite
# (the embedded Milvus, a local file).
BACKENDS = ["faiss", "milvus"]

# One kind of index in each vector backend's spec grammar, as a collection's "index".
SPECS = {
    "faiss": {"flat": "Flat", "hnsw": "HNSW16", "compressed": "IVF4,PQ8x4"},
    "milvus": {
        "flat": "FLAT",
        "hnsw": "HNSW:M=16,efConstruction=200",
        "compressed": "IVF_SQ8:nlist=4",
    },
}


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


class AppServer:
    """``create_app(settings)`` served by uvicorn on a loopback port in a thread of this
    process, through its real lifespan: what ``xmodal serve`` runs, without paying for a
    new interpreter, torch import and model load per test module."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.settings = {**TINY, "data_dir": data_dir, **settings}
        self._server: Any = None
        self.app: Any = None  # the FastAPI app, once started (its state, for white-box checks)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, wait: bool = True) -> AppServer:
        import uvicorn

        from app.api.main import create_app
        from app.service.config import Settings

        self.data_dir.mkdir(parents=True, exist_ok=True)
        app = self.app = create_app(Settings(**self.settings))
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
        # One client for every poll: a fresh one per call costs about 30 ms of CPU (an SSL
        # context), which a server starting in this process would wait on.
        with httpx.Client(timeout=1.0, trust_env=False) as poll:
            while time.monotonic() < deadline:
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError("in-process server exited during start-up")
                try:
                    if poll.get(self.url + path).status_code == 200:
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


def cli_env(data_dir: Path, env: dict[str, str]) -> dict[str, str]:
    return {**tiny_env(data_dir=data_dir, max_upload_bytes=200_000), **env}


def xmodal(*args: str, data_dir: Path, **env: str) -> CliRun:
    """``xmodal ARGS`` in this process: the ``main`` the console script calls."""
    return run_cli(list(args), cli_env(data_dir, env))


def children(pid: int, marker: bytes = b"") -> list[int]:
    """The processes ``pid`` started (Linux /proc), those whose command line holds
    ``marker`` if one is given."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and marker in cmdline:
            out.append(int(stat.parent.name))
    return out


TINY_SPACE = "xmodal-tiny@random-seed0"  # the tiny model's embedding space


def store_vectors(data: Path, name: str, n: int) -> None:
    """A collection of ``n`` random text vectors in the tiny model's space, written
    straight to the store (cheap: no encoding)."""
    from index import CollectionStore, Modality, NewItem
    from index.vectors.faiss_backends import FaissBackends

    store = CollectionStore(data, backends=FaissBackends(use_gpu=False))
    store.create_collection(name, 64, TINY_SPACE)
    xb = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    items = [NewItem(f"t{i}", Modality.TEXT, {}, text=f"t{i}") for i in range(n)]
    store.upsert(name, items, xb, TINY_SPACE)
    store.close()


class MilvusLiteServer:
    """``milvus-lite server`` on a loopback port: one Milvus every server reaches, as a
    Milvus standalone would be in production."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: Any = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> MilvusLiteServer:
        import shutil
        import socket
        import subprocess
        import sys

        self.folder.mkdir(parents=True, exist_ok=True)
        command = shutil.which("milvus-lite", path=str(Path(sys.executable).parent))
        assert command is not None, "milvus-lite is installed with the project"
        self.proc = subprocess.Popen(
            [command, "server", "--data-dir", str(self.folder / "data")]
            + ["--host", "127.0.0.1", "--port", str(self.port)],
            stdout=(self.folder / "server.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-3000:]
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return self
            time.sleep(0.1)
        raise TimeoutError("milvus-lite server did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
