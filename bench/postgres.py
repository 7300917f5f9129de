"""A throwaway PostgreSQL cluster for the catalogue's tests and benchmarks, started the
way an operator would: Debian's ``initdb`` and ``pg_ctl``, as the ``postgres`` user when
run as root (``initdb`` refuses root), in a temporary directory, listening on a Unix
socket in that directory only (no TCP port). ``make postgres`` installs the package.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: run `make postgres`")
    return path


class PgCluster:
    """One cluster: ``database()`` gives each caller a fresh database's URL."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="xmodal-pg-"))
        self.data = self.root / "data"
        self.socket = self.root  # short: a socket's path is at most 107 bytes
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o755)

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = list(argv)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)

    def start(self) -> PgCluster:
        self._run(
            _bin("initdb"),
            "-D",
            str(self.data),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            self.user,
        )
        self.restart_server()
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql:///{database}?host={self.socket}&user={self.user}"

    def database(self) -> str:
        """The URL of a new, empty database."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def password_user(self, user: str, password: str) -> str:
        """A database owned by ``user``, who must give ``password`` (SCRAM over the socket,
        where everyone else is trusted); its URL, the password in it."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
            conn.execute(f"CREATE DATABASE {user} OWNER {user}")
        hba = self.data / "pg_hba.conf"
        rules = f"local all {user} scram-sha-256\n"
        self._run("sh", "-c", f"printf '{rules}' | cat - {hba} > {hba}.new && mv {hba}.new {hba}")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "reload")
        time.sleep(0.5)  # the postmaster reads pg_hba.conf again on the signal
        return f"postgresql://{user}:{password}@/{user}?host={self.socket}"

    def stop_server(self, mode: str = "immediate") -> None:
        """Stop PostgreSQL, leaving its files: ``immediate`` is a crash (no checkpoint; the
        next start replays the write-ahead log), ``fast`` a clean stop."""
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart_server(self) -> None:
        """Start PostgreSQL (again) on its socket, with no TCP port."""
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.socket}'"
            " -c max_connections=300 -c fsync=on -c shared_buffers=64MB"
        )
        log = str(self.root / "server.log")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
