from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import REPO, ServerProcess


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
    assert time.monotonic() - started < 10
    assert proc.returncode != 0
    # Which file, from where, what to set, and what works without it.
    assert "huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in proc.stderr
    assert "XMODAL_PRETRAINED=/path/to/open_clip_model.safetensors" in proc.stderr
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
    # SIGTERM is a graceful stop: uvicorn re-raises the signal after the shutdown, which
    # flushed the index snapshots.
    assert server.proc is not None and server.proc.returncode in (0, -signal.SIGTERM)
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
