"""What the commands share: a client for ``--server``, the settings, and the stack and
jobs in this process for commands run without it."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.cli.client import ApiClient, CliError

if TYPE_CHECKING:
    from app.service.config import Settings
    from app.service.stack import Stack
    from index import Job


def api_client(args: argparse.Namespace, timeout: float | None = 60) -> ApiClient:
    return ApiClient(args.server, getattr(args, "api_key", None), timeout)


def load_settings() -> Settings:
    from app.service.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        raise CliError(f"invalid settings:\n{exc}", 2) from exc


@contextlib.contextmanager
def local_stack() -> Iterator[Stack]:
    """The store, the model and the jobs in this process, for commands run without
    ``--server``; the jobs run in the calling thread."""
    from app.service.stack import build_stack

    settings = load_settings()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    stack = build_stack(settings)
    try:
        yield stack
    finally:
        stack.close()


def run_local(stack: Stack, job: Job, show: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    from app.service.jobs import job_summary

    print(f"job {job.id} running in this process", file=sys.stderr)
    try:
        finished = stack.jobs.run(job, on_progress=lambda j: show(job_summary(j)))
    except KeyboardInterrupt:
        # Nobody would resume an in-process job: end it, keeping what it stored.
        finished = stack.jobs.jobs.cancel(job.id)
    return job_summary(finished)


def succeeded(job: dict[str, Any]) -> bool:
    return bool(job["state"] == "succeeded")
