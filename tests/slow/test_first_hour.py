"""A newcomer's first hour, driven by the README's own commands, in order, on a fresh copy
of the repository, offline: ``make run`` without weights, ``make demo`` on a busy port,
``make demo`` to a serving server, the first session's requests against the files the
README names, and a Ctrl-C that ends it all without an error from make.

The one liberty taken: the demo trains on fewer pairs for fewer epochs than its default
(``DEMO_ARGS``), so that this test takes a minute instead of five.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import REPO, free_port

README = (REPO / "README.md").read_text()
DEMO_ARGS = "--pairs 600 --epochs 8"


def section(title: str) -> str:
    """The README's text from the heading ``## title`` to the next ``## ``."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert match, f"the README has no section {title!r}"
    return match.group(1)


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def commands(block: str) -> list[str]:
    """One shell command per entry: continuation lines joined, ``# comments`` dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository as a fresh clone has it (tracked and new files, not what is ignored),
    sharing the installed ``.venv`` so that ``make`` finds it set up."""
    dest = tmp_path_factory.mktemp("newcomer") / "xmodal"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        src = REPO / os.fsdecode(name)
        if src.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))  # keeps mtimes: no reinstall
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


def offline_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMODAL_")}
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # as typed at a shell, not under make
        env.pop(name, None)
    # No network: the hub at a closed loopback port. The port stands in for 8000.
    return {**env, "HF_ENDPOINT": "https://127.0.0.1:9", "XMODAL_PORT": str(port)}


def test_the_quick_start_commands_are_the_ones_the_readme_shows() -> None:
    blocks = shell_blocks(section("Two commands"))
    assert commands(blocks[0]) == ["make run", "make test"]
    assert [commands(b) for b in blocks[1:]] == [["make run TORCH=cpu"]]
    demo = section("Your first search, offline: `make demo`")
    assert commands(shell_blocks(demo)[0]) == ["make demo"]
    # Honest time, measured: the README states the demo's time on this machine, a range.
    assert re.search(r"\d+ to \d+ minutes on two CPU cores", demo)
    assert "DEMO_TIMES" not in demo


@pytest.mark.parametrize("command", ["make run", "make run TORCH=cpu"])
def test_make_run_offline_fails_fast_and_names_the_ways_on(clone: Path, command: str) -> None:
    assert command in README
    started = time.monotonic()
    proc = subprocess.run(
        command.split(),
        cwd=clone,
        env=offline_env(free_port()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 60
    assert proc.returncode != 0
    for way in ("open_clip_model.safetensors", "XMODAL_PRETRAINED=", "make demo", "make run-tiny"):
        assert way in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_torch_cpu_without_pytorchs_index_says_so_and_leaves_the_plain_install(
    tmp_path: Path,
) -> None:
    """``TORCH=cpu`` where PyTorch's index cannot be reached: one line that says so, exit 0
    (the plain install follows), and no torch left half-installed."""
    venv = tmp_path / "venv"
    closed = free_port()
    env = {
        **offline_env(free_port()),
        "PIP_CONFIG_FILE": os.devnull,  # no local wheel folders: only the closed index
    }
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "torch-cpu",
            f"VENV={venv}",
            f"TORCH_CPU_INDEX=http://127.0.0.1:{closed}/simple",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == (
        f"no working CPU-only torch and torchvision from http://127.0.0.1:{closed}/simple "
        "here: the plain install follows (about 6.5 GB)"
    )
    assert not list(venv.glob("lib/python*/site-packages/torch"))


def test_make_demo_on_a_busy_port_is_one_line(clone: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            ["make", "--no-print-directory", "demo"],
            cwd=clone,
            env=offline_env(port),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("make: ***")]
    assert lines == [f"xmodal demo: port {port} is in use; stop what runs there or pass --port"]
    assert not (clone / "demo-data").exists()


@pytest.fixture(scope="module")
def demo(clone: Path) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    """``make demo`` running in its own process group, as at a terminal, until serving."""
    port = free_port()
    proc = subprocess.Popen(
        ["make", "demo", f"DEMO_ARGS={DEMO_ARGS}"],
        cwd=clone,
        env=offline_env(port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C stops it"):  # the last line the demo prints
            break
        assert time.monotonic() < deadline, "".join(lines)
    else:
        pytest.fail("make demo ended before serving:\n" + "".join(lines))
    try:
        yield proc, port, lines
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def curl(command: str, clone: Path, port: int) -> dict[str, Any]:
    command = command.replace("localhost:8000", f"localhost:{port}")
    proc = subprocess.run(
        ["bash", "-c", command + " --silent --show-error"],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, (command, proc.stderr)
    answer: dict[str, Any] = json.loads(proc.stdout)
    assert answer.get("error") is None, (command, answer)
    return answer


def test_the_first_session_works_on_the_files_the_readme_names(
    clone: Path, demo: tuple[subprocess.Popen[str], int, list[str]]
) -> None:
    _, port, lines = demo
    printed = "".join(lines)
    assert "initialized randomly" not in printed  # the demo expects random weights
    # The last lines name the search page, a linked search that works as it is.
    page = re.search(rf"http://localhost:{port}/\?q=\S+", printed)
    assert page, printed
    assert httpx.get(page.group(0), timeout=30).status_code == 200
    assert "Traceback" not in printed
    first = section("A first session")
    steps = commands(shell_blocks(first)[0])
    named = set(re.findall(r"@(demo-data/samples/[\w.-]+)", first))
    assert named and all((clone / path).is_file() for path in named)  # the demo wrote them
    answers = [curl(step, clone, port) for step in steps]
    assert [a.get("name") for a in answers[:1]] == ["photos"]
    assert answers[1]["ids"] == ["red-circle", "blue-square", "yellow-triangle"]
    assert answers[2]["ids"] == ["c1"]
    # What the README says each search answers.
    red, yellow, caption = answers[3]["results"], answers[4]["results"], answers[5]["results"]
    assert red[0]["id"] == "red-circle", red
    assert yellow[0]["id"] == "yellow-triangle", yellow
    assert {h["metadata"]["year"] for h in yellow} == {2024}
    assert caption[0]["id"] == "c1" and caption[0]["modality"] == "text"


def test_ctrl_c_ends_the_demo_without_an_error_from_make(
    demo: tuple[subprocess.Popen[str], int, list[str]],
) -> None:
    proc, port, _ = demo
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does
    out, _ = proc.communicate(timeout=60)
    assert "***" not in out, out  # make's "make: *** [Makefile:..: demo] Interrupt"
    assert "Traceback" not in out, out
    said = out.splitlines()
    assert "stopping the server ..." in said and any(s.startswith("stopped (") for s in said), out
    with socket.socket() as probe:  # the demo's server is gone with it
        probe.bind(("127.0.0.1", port))
