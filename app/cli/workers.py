"""``xmodal serve --workers N``: N server processes on one port, for a host whose cores
(or GPU) one Python process cannot keep busy.

This process binds the port and hands the socket to each worker, which accepts from it
(the kernel spreads connections between them). Each worker is a whole server with a data
dir of its own (``<data dir>/workers/<i>``: its indexes, thumbnails and id) and shares the
rest through the shared dir (``XMODAL_SHARED_DIR``, or this data dir): image files,
model versions, and the SQLite catalogue unless ``XMODAL_DATABASE_URL`` names a
PostgreSQL one. Every worker follows the others' writes, as servers on several hosts do.
Each holds its own copy of the model, on the GPU when there is one, and its own FAISS
indexes. A worker that dies is started again; SIGTERM or Ctrl-C stops them all (each
drains and shuts down as a single server does), SIGHUP reaches them all.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from app.cli.client import CliError
from app.service.config import Settings
from index.errors import DataDirInUse
from index.lock import lock_data_dir

log = logging.getLogger("xmodal.workers")

RESTART_DELAY_S = 1.0  # after a worker died, before it is started again
STOP_GRACE_S = 120.0  # after SIGTERM, before a worker that did not stop is killed


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}", 1) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class Workers:
    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.shared = settings.shared_root
        try:  # the same refusals a worker would meet, before any is started
            Settings(**{**settings.model_dump(), "shared_dir": self.shared})
        except ValueError as exc:
            raise CliError(f"--workers {count}: {exc}", 2) from exc
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def data_dir(self, i: int) -> Path:
        return self.settings.data_dir / "workers" / str(i)

    def start(self, i: int, fd: int) -> None:
        env = {
            **os.environ,
            "XMODAL_DATA_DIR": str(self.data_dir(i)),
            "XMODAL_SHARED_DIR": str(self.shared),
        }
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--fd", str(fd)]
            + ["--host", self.settings.host, "--port", str(self.settings.port)],
            env=env,
            pass_fds=(fd,),
        )
        log.info("worker %d started (pid %d)", i, self.procs[i].pid)

    def signal_all(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    def run(self) -> int:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        try:  # no single server on this data dir meanwhile: it would not follow
            lock = lock_data_dir(s.data_dir)
        except DataDirInUse as exc:
            raise CliError(str(exc), 1) from exc
        sock = bind(s.host, s.port)

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping = True
            self.signal_all(signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda signum, frame: self.signal_all(signum))
        try:
            for i in range(self.count):
                self.start(i, sock.fileno())
            log.info("%d workers serve http://%s:%d", self.count, s.host, s.port)
            self.supervise(sock.fileno())
        finally:
            sock.close()
            os.close(lock)
        # Nothing of this process is left to finish: leave now, without the seconds the
        # interpreter takes to unload torch (imported to check the weights) at exit.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def supervise(self, fd: int) -> None:
        stop_at: float | None = None
        while True:
            if self.stopping and stop_at is None:
                stop_at = time.monotonic() + STOP_GRACE_S
            alive = False
            for i, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    alive = True
                    if stop_at is not None and time.monotonic() > stop_at:
                        log.error("worker %d did not stop in %.0f s: killed", i, STOP_GRACE_S)
                        proc.kill()
                elif not self.stopping:
                    log.error("worker %d exited (status %s); starting it again", i, code)
                    time.sleep(RESTART_DELAY_S)
                    if not self.stopping:
                        self.start(i, fd)
                        alive = True
            if self.stopping and not alive:
                return
            time.sleep(0.2)
