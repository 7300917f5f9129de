from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.cli.parser import build_parser
from tests.helpers import REPO, AppServer, ServerProcess, free_port


def test_serve_without_network_or_weights_exits_fast_with_the_way_out(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "XMODAL_MODEL": "ViT-B-32",
        "XMODAL_PRETRAINED": "laion2b_s34b_b79k",
        "XMODAL_DATA_DIR": str(tmp_path),
        "HF_ENDPOINT": "https://127.0.0.1:9",  # a closed loopback port stands in for no network
    }
    env.pop("HF_HUB_OFFLINE", None)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # What this guards against is the hub client retrying for a minute and more; the
    # import of torch and OpenCLIP alone takes 4-11 s on a loaded 2-core machine.
    assert time.monotonic() - started < 30
    assert proc.returncode != 0
    # Which file, from where, what to set, and what works without it.
    assert "huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in proc.stderr
    assert "XMODAL_PRETRAINED=data/models/open_clip_model.safetensors" in proc.stderr
    assert "make demo" in proc.stderr and "make run-tiny" in proc.stderr


def test_invalid_settings_are_reported_not_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "XMODAL_MAX_BATCH_SIZE": "0", "XMODAL_DATA_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "max_batch_size" in proc.stderr and "Traceback" not in proc.stderr


def test_console_script_serves_a_saved_checkpoint(tmp_path: Path) -> None:
    from models.encoder import load_encoder

    ckpt = load_encoder("xmodal-tiny", "none", "cpu", tmp_path, seed=3).save_checkpoint(
        tmp_path / "mine.pt"
    )
    server = ServerProcess(tmp_path / "data", pretrained=ckpt).start()
    try:
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["model"].startswith("xmodal-tiny@mine-")
        assert httpx.post(server.url + "/v1/collections", json={"name": "c"}).status_code == 201
        r = httpx.post(
            server.url + "/v1/collections/c/texts", json={"items": [{"id": "a", "text": "b"}]}
        )
        assert r.status_code == 200
    finally:
        server.stop()
    # SIGTERM is a graceful stop, the normal end of a server: exit status 0, after the
    # shutdown flushed the index snapshots.
    assert server.proc is not None and server.proc.returncode == 0
    assert (tmp_path / "data" / "indexes" / "c" / "text.xmidx").exists()


def test_demo_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "app.cli", "demo", "--port", str(port), "--data-dir", str(demo)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"xmodal demo: port {port} is in use; stop what runs there or pass --port"
    ]
    assert not demo.exists()  # nothing generated, no job sent anywhere


def test_every_option_has_a_line_and_its_default() -> None:
    def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    seen = 0
    for parser in parsers(build_parser()):
        text = " ".join(parser.format_help().split())  # argparse wraps lines
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(
                action, (argparse._HelpAction, argparse._SubParsersAction)
            ):
                continue
            assert action.help, (parser.prog, action.dest)
            if action.option_strings and action.default not in (None, False):
                assert f"(default: {action.default})" in text, (parser.prog, action.dest)
                seen += 1
    assert seen >= 6  # finetune's and demo's options at least


def test_serve_help_names_the_model_settings() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    for setting in ("XMODAL_MODEL ", "XMODAL_PRETRAINED ", "XMODAL_DEVICE ", "XMODAL_DATA_DIR "):
        assert setting in proc.stdout
    assert "[ViT-B-32]" in proc.stdout and "xmodal-tiny" in proc.stdout


def test_the_demo_knows_which_process_holds_its_port() -> None:
    """The demo checks that the server answering on its port is the one it started."""
    from app.cli.demo import listener_pids

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        assert listener_pids(port) == set()  # bound, not listening yet
        listener.listen()
        assert listener_pids(port) == {os.getpid()}
    assert listener_pids(port) == set()


def test_a_torchvision_built_for_another_torch_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What `make run` printed as a raw traceback when pip paired a CPU torch with a CUDA
    torchvision (the import fails in torchvision itself; it cannot be installed here, so
    the command's handler raises what that import raises)."""
    from app.cli import commands

    def broken(args: object) -> int:
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setitem(commands.HANDLERS, "serve", broken)
    assert commands.main(["serve"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not belong together" in err and "make clean" in err
    assert "Traceback" not in err

    def other(args: object) -> int:
        raise RuntimeError("something else")

    monkeypatch.setitem(commands.HANDLERS, "serve", other)
    with pytest.raises(RuntimeError, match="something else"):  # other errors stay loud
        commands.main(["serve"])


def test_a_second_demo_on_a_data_dir_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    from index.lock import lock_data_dir

    demo = tmp_path / "demo"
    demo.mkdir()
    held = lock_data_dir(demo)  # as the first demo's server holds it
    try:
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "app.cli", "demo"),
                *("--port", str(free_port()), "--data-dir", str(demo)),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(held)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is in use by another xmodal" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_waiting_on_a_server_says_in_one_sentence_why_it_did_not_come_up(
    tmp_path: Path,
) -> None:
    """The server exited; it answers that it cannot load (its data dir held elsewhere)."""
    from app.cli.demo import wait_ready
    from index.lock import lock_data_dir

    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    with (
        httpx.Client(base_url="http://127.0.0.1:9", timeout=1) as c,
        pytest.raises(SystemExit, match="exited with status 3"),
    ):
        wait_ready(c, exited, "xmodal demo")
    data = tmp_path / "data"
    data.mkdir()
    held = lock_data_dir(data)
    server = AppServer(data).start(wait=False)
    waiting = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        server.wait_listening()
        with (
            httpx.Client(base_url=server.url, timeout=5) as c,
            pytest.raises(SystemExit, match="could not start: the data dir .* in use"),
        ):
            wait_ready(c, waiting, "xmodal demo", timeout_s=30)
    finally:
        waiting.kill()
        server.stop()
        os.close(held)
