"""The HTTP side of the ``xmodal`` command (and of ``xmodal demo``): requests with the API
key, errors in the API's words, and following a job until it ends."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "cancelled")
JobView = Callable[[dict[str, Any]], None]  # shows a job's state as it changes


class CliError(Exception):
    """Reported as ``xmodal: message`` with exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class ApiClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float | None = 60) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def get(self, path: str) -> dict[str, Any]:
        return self._json(self._send("GET", path), 200)

    def post(self, path: str, body: dict[str, Any], ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
        return self._json(self._send("POST", path, json=body), *ok)

    def post_bytes(self, path: str, body: dict[str, Any]) -> bytes:
        """``POST`` whose answer is a file (an image), not JSON."""
        r = self._send("POST", path, json=body)
        if r.status_code != 200:
            raise CliError(api_message(r))
        return r.content

    def delete(self, path: str) -> None:
        self._json(self._send("DELETE", path), 204)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer, or one line saying which server could not be reached and why."""
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise CliError(
                f"cannot reach the server at {self.url} ({reason}); is `xmodal serve` running"
                " there?"
            ) from None

    def run_job(self, path: str, body: dict[str, Any], show: JobView) -> dict[str, Any]:
        """Start a job with ``POST path`` and follow it to its end."""
        job_id = self.post(path, body, (202,))["id"]
        print(f"job {job_id} started on {self.url}", file=sys.stderr)
        return self.wait_job(job_id, show)

    def wait_job(self, job_id: str, show: JobView) -> dict[str, Any]:
        while True:
            job = self.get(f"/v1/jobs/{job_id}")
            show(job)
            if job["state"] in FINISHED:
                return job
            time.sleep(0.5)

    @staticmethod
    def _json(r: httpx.Response, *ok: int) -> dict[str, Any]:
        if r.status_code not in ok:
            raise CliError(api_message(r))
        body: dict[str, Any] = r.json() if r.content else {}
        return body


def api_message(r: httpx.Response) -> str:
    try:
        err = r.json()["error"]
        return f"{r.status_code} {err['code']}: {err['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code}: {r.text[:200]}"
