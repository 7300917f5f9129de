"""Issue 26, third hardening round: what one request may cost (bodies, searches, advice,
fetches) and how long it may take."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest

from app.api import bodies
from app.api.bodies import CONTROL_BODY_BYTES, json_values
from tests.api import assert_error


# --- 9. counting a body's values, and bodies per route -------------------------------------------
def _bare_count(body: bytes) -> int:
    bare = bodies._STRING.sub(b"", body)
    return bare.count(b",") + bare.count(b":")


def test_value_count_is_exact_across_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(26)
    parts: list[object] = ["a,b", 'x"y:', "\\", "", 'q\\"', 7, {"k:": "v,"}, [1, 2], "é,\u2028"]
    for _ in range(400):
        monkeypatch.setattr(bodies, "_SCAN_BYTES", rng.choice([1, 2, 3, 5, 8, 17, 64]))
        body = json.dumps([rng.choice(parts) for _ in range(rng.randint(0, 30))]).encode()
        assert json_values(body, 0) == _bare_count(body), body
        cut = body[: rng.randint(1, len(body))]  # malformed: a string left open
        assert json_values(cut, 0) <= _bare_count(body)


def test_value_count_takes_constant_memory() -> None:
    body = b'{"texts": [' + b'"a",' * 599_999 + b'"a"]}'
    tracemalloc.start()
    try:
        count = json_values(body, 100_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 600_000
    # Whole-body removal of the strings took about 40 times the body (about 100 MB here).
    assert peak < 4_000_000, peak


@pytest.fixture
def big_control_body() -> bytes:
    return json.dumps({"name": "x", "index": "Flat", "pad": "p" * CONTROL_BODY_BYTES}).encode()


def _chunks(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 8192):
        yield body[i : i + 8192]


@pytest.mark.parametrize(
    "path", ["/v1/collections", "/v1/finetune", "/v1/collections/x/jobs/index", "/v1/evaluate"]
)
def test_control_routes_take_small_bodies(
    client: httpx.Client, big_control_body: bytes, path: str
) -> None:
    headers = {"content-type": "application/json"}
    declared = client.post(path, content=big_control_body, headers=headers)
    assert f"at most {CONTROL_BODY_BYTES} bytes" in assert_error(declared, 413)["error"]["message"]
    streamed = client.post(path, content=_chunks(big_control_body), headers=headers)
    assert f"at most {CONTROL_BODY_BYTES} bytes" in assert_error(streamed, 413)["error"]["message"]
    assert client.get("/v1/collections/x").status_code == 404
