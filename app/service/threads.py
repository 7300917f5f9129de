"""Blocking work (torch, FAISS, SQLite, files) off the event loop: one helper for the
service, on the same bounded worker threads the HTTP floor uses (anyio's default
limiter), so that neither side can starve the other of threads."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from anyio import to_thread

P = ParamSpec("P")
T = TypeVar("T")


async def run_in_threadpool(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    if kwargs:
        return await to_thread.run_sync(functools.partial(func, *args, **kwargs))
    return await to_thread.run_sync(func, *args)
