"""Shared helpers for tests that drive the HTTP API: the error shape, jobs to their end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

JOB_ENDS = ("succeeded", "failed", "cancelled")


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is the one error shape, with this status (and code)."""
    assert r.status_code == status, f"{r.status_code} {r.text}"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def wait_until(condition: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    """Return as soon as ``condition()`` holds (polled every 0.05 s); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not after {timeout} s: {what or condition}")
        time.sleep(0.05)


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    """The job once it has ended (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in JOB_ENDS:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")


def submit_and_wait(client: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST a job to ``path`` (202 with its location) and wait for its end."""
    r = client.post(path, json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    return wait_for_job(client, job["id"])


def run_job(
    client: httpx.Client, collection: str, source: str, fmt: str | None = None
) -> dict[str, Any]:
    """An index job of ``source`` into ``collection``, to its end."""
    return submit_and_wait(
        client, f"/v1/collections/{collection}/jobs/index", {"source": source, "format": fmt}
    )


def add_texts(client: httpx.Client, name: str, texts: dict[str, str]) -> None:
    items = [{"id": i, "text": t, "metadata": {"n": n}} for n, (i, t) in enumerate(texts.items())]
    for start in range(0, len(items), 16):
        r = client.post(f"/v1/collections/{name}/texts", json={"items": items[start : start + 16]})
        assert r.status_code == 200, r.text


def search(client: httpx.Client, name: str, **body: Any) -> dict[str, Any]:
    r = client.post(f"/v1/collections/{name}/search", json=body)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer
