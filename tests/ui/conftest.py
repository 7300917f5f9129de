"""The browser the page tests drive (Debian's Chromium through Playwright, one per module),
the server with a small gallery they search, and a fresh page on it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.helpers import AppServer
from tests.ui.pages import picture


def chromium() -> str:
    exe = os.environ.get("XMODAL_CHROMIUM") or shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
        )
    return exe


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """A server with a small gallery: 12 pictures and 8 captions."""
    server = AppServer(tmp_path_factory.mktemp("ui") / "data").start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.post("/v1/collections", json={"name": "gallery"}).status_code == 201
            files = [("files", (f"p{i}.png", picture(i), "image/png")) for i in range(12)]
            ids = [f"pic-{i}" for i in range(12)]
            meta = [f'{{"n": {i}}}' for i in range(12)]
            r = c.post(
                "/v1/collections/gallery/images", files=files, data={"ids": ids, "metadata": meta}
            )
            assert r.status_code == 200, r.text
            texts = [{"id": f"cap-{i}", "text": f"caption number {i}"} for i in range(8)]
            assert c.post("/v1/collections/gallery/texts", json={"items": texts}).status_code == 200
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(browser: Browser, site: AppServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.goto(site.url + "/")
    expect(pg.locator("#collection option")).not_to_have_count(0)
    try:
        yield pg
    finally:
        context.close()
