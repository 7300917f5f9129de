"""Under overload the server answers 429 or 504 in words, never 5xx, and keeps answering."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import AppServer


def test_full_queue_answers_429_and_the_rest_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.service.engine.MAX_QUEUE", 16)
    monkeypatch.setattr("app.service.engine.MAX_WAIT_MS", 0)
    server = AppServer(
        tmp_path / "data",
        max_texts_per_request=16,
        max_files_per_request=4,
        max_batch_size=4,
    ).start()
    try:
        texts = [f"text number {i} " * 8 for i in range(16)]  # 16 inputs fill the queue alone

        def one(_: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                return c.post("/v1/embed", json={"texts": texts})

        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(one, range(48)))
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 429}, codes
        assert codes.count(429) > 0 and codes.count(200) > 0
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.json()["error"]["code"] == "queue_full" and refused.headers["retry-after"]
        assert all(len(r.json()["vectors"]) == 16 for r in answers if r.status_code == 200)
        assert httpx.get(server.url + "/readyz").status_code == 200
    finally:
        server.stop()


def test_request_past_its_deadline_answers_504(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request right behind another waits a second for companions; the deadline is 50 ms.
    # (The first, after a quiet spell and alone, goes at once.)
    monkeypatch.setattr("app.service.engine.MAX_WAIT_MS", 1000)
    server = AppServer(tmp_path / "data", request_timeout_s=0.05).start()
    try:
        first = httpx.post(server.url + "/v1/embed", json={"texts": ["first"]}, timeout=30)
        assert first.status_code == 200
        r = httpx.post(server.url + "/v1/embed", json={"texts": ["too slow"]}, timeout=30)
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "deadline_exceeded"
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.stop()


def test_failed_model_load_leaves_the_server_up_but_not_ready(tmp_path: Path) -> None:
    server = AppServer(tmp_path / "data", device="cuda:99").start(wait=False)
    try:
        server.wait_listening()
        assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
        for _ in range(100):
            r = httpx.get(server.url + "/readyz")
            if "cuda" in r.text.lower():
                break
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        r = httpx.post(server.url + "/v1/embed", json={"texts": ["x"]})
        assert r.status_code == 503 and "cuda" in r.json()["error"]["message"].lower()
        # The store opened, so collections can still be listed.
        assert httpx.get(server.url + "/v1/collections").json() == {"collections": []}
    finally:
        server.stop()
