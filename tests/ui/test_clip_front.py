"""clip-retrieval's own web page, clip-front (the build inside the clip-retrieval wheel,
unchanged), in a real headless Chromium against xmodal's clip back routes: served on a
loopback port of its own and pointed at xmodal with ``?back=...&index=...``, as its users
open it. Any console error, failed request or request leaving loopback fails the test."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route

from tests.helpers import AppServer, image_bytes

PICTURES = 45  # more than clip-front's first 40, so it asks /metadata for the rest
CAPTIONS = [f"caption {w} number {i}" for i, w in enumerate(("red", "blue", "green", "gold"))]


def front_build() -> Path:
    spec = importlib.util.find_spec("clip_retrieval")
    assert spec is not None and spec.origin is not None, "make installs clip-retrieval"
    return Path(spec.origin).parents[1] / "front" / "build"


class Front(http.server.SimpleHTTPRequestHandler):
    """The build as its files lie; the wheel keeps the web components loader that its
    index.html names under ``vendor/`` one folder down, in ``node_modules``."""

    LOADER = "/vendor/webcomponents-loader.js"

    def translate_path(self, path: str) -> str:
        if path.split("?", 1)[0] == self.LOADER:
            path = "/vendor/node_modules/@webcomponents/webcomponentsjs/webcomponents-loader.js"
        return super().translate_path(path)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppServer, str]]:
    server = AppServer(
        tmp_path_factory.mktemp("front") / "data",
        image_urls=True,
        image_url_networks="127.0.0.1/32",  # a result's search-by-image fetches its url
    ).start()
    handler = functools.partial(Front, directory=str(front_build()))
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.post("/v1/collections", json={"name": "pictures"}).status_code == 201
            for start in range(0, PICTURES, 8):
                n = range(start, min(start + 8, PICTURES))
                files = [("files", (f"p{i}.png", picture(i), "image/png")) for i in n]
                r = c.post(
                    "/v1/collections/pictures/images",
                    files=files,
                    data={"ids": [f"p{i}" for i in n]},
                )
                assert r.status_code == 200, r.text
            assert c.post("/v1/collections", json={"name": "captions"}).status_code == 201
            items = [{"id": f"c{i}", "text": t} for i, t in enumerate(CAPTIONS)]
            assert c.post("/v1/collections/captions/texts", json={"items": items}).is_success
        yield server, f"http://127.0.0.1:{web.server_address[1]}"
    finally:
        web.shutdown()
        server.stop()


def picture(i: int) -> bytes:
    return image_bytes(((i * 53) % 256, (i * 97) % 256, (i * 31) % 256), size=(40, 30), seed=i)


class Watched:
    """What went wrong in the page: console errors, failed or refused requests, and any
    request that would leave loopback (refused: nothing may reach the internet)."""

    def __init__(self, page: Page) -> None:
        self.problems: list[str] = []
        self.metadata_ids: list[int] = []
        self.searches: list[dict[str, Any]] = []  # the /knn-service bodies sent
        page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", self._failed)
        page.on("response", self._response)
        page.route("**/*", self._route)

    def _route(self, route: Route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1:", "data:")):
            if url.endswith("/metadata"):
                self.metadata_ids += route.request.post_data_json["ids"]
            if url.endswith("/knn-service"):
                self.searches.append(route.request.post_data_json)
            route.continue_()
        else:
            self.problems.append(f"left loopback: {url}")
            route.abort()

    def _failed(self, request: Any) -> None:
        # The page's own cancels (a new search or page while lazy metadata is on its way)
        # are not failures of the server.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"failed: {request.url} ({request.failure})")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.append(f"{response.status}: {response.url}")


def shown(page: Page) -> list[str]:
    """The src of every result image clip-front shows."""
    srcs: list[str] = page.evaluate(
        """() => [...document.querySelector('clip-front').shadowRoot
                  .querySelectorAll('#products img.pic')]
                  .filter(i => i.complete && i.naturalWidth > 0 && i.offsetParent !== null)
                  .map(i => i.src)"""
    )
    return srcs


def test_clip_front_searches_xmodal(
    browser: Browser,
    front: tuple[AppServer, str],
) -> None:
    server, site = front
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    watched = Watched(page)
    try:
        page.goto(f"{site}/?back={server.url}&index=pictures")
        page.wait_for_function(  # the index list has come from xmodal
            "document.querySelector('clip-front').shadowRoot"
            ".querySelector('#filter select option[value=pictures]') !== null"
        )
        bar = page.locator("#searchBar")
        bar.fill("a small picture")
        bar.press("Enter")
        # Lazy metadata: the hits past the first 40 come from /metadata as the page scrolls.
        # With its near-duplicate toggle on (the default), the random-weights model's
        # pictures collapse into a few; off, every picture comes back.
        expect_eventually(lambda: 0 < len(shown(page)) < 40, page)
        page.get_by_label("Hide (near) duplicate images").uncheck()
        expect_eventually(lambda: len(shown(page)) >= 40, page)
        page.mouse.wheel(0, 100_000)
        # The hits past the first 40 came without metadata (no url to draw them from).
        expect_eventually(lambda: len(shown(page)) == PICTURES, page)
        assert watched.metadata_ids
        assert all("/v1/collections/pictures/items/p" in s for s in shown(page))
        page.get_by_label("Display similarities").check()
        scores = page.locator("#products figure p").all_inner_texts()
        assert len(scores) == PICTURES and all(0 < float(x) <= 1.0001 for x in scores), scores[:3]
        # Search by upload: the uploaded picture itself comes first.
        page.locator("#filechooser").set_input_files(
            {"name": "q.png", "mimeType": "image/png", "buffer": picture(7)}
        )
        expect_eventually(lambda: bool(shown(page)) and shown(page)[0].endswith("/p7/image"), page)
        assert watched.searches[-1]["text"] == "" and watched.searches[-1]["image"]
        # Search by a result's own icon: clip-front sends the hit's image back.
        sent = len(watched.searches)
        page.locator("#products figure").nth(3).hover()  # the icon shows on hover
        page.locator("#products img[src$='image-search.png']").nth(3).click()
        expect_eventually(lambda: len(watched.searches) > sent, page)
        assert watched.searches[-1]["image"] and not watched.searches[-1]["text"]
        want = api_ranking(server, watched.searches[-1]["image"])
        expect_eventually(lambda: shown(page)[:5] == want, page)
        # Search over texts: each caption drawn as its own picture.
        page.locator("#filter select").first.select_option("captions")
        page.select_option("text=Search over >> select", "text")
        bar.fill("a red caption")
        bar.press("Enter")
        expect_eventually(
            lambda: sum(s.startswith("data:image/svg+xml") for s in shown(page)) == len(CAPTIONS),
            page,
        )
        # Opened on an image URL (its imageUrl parameter): xmodal fetches the picture.
        url = f"{server.url}/v1/collections/pictures/items/p5/image"
        page.goto(f"{site}/?back={server.url}&index=pictures&imageUrl={url}")
        expect_eventually(lambda: bool(shown(page)) and shown(page)[0] == url, page)
        assert watched.searches[-1]["image_url"] == url
        assert watched.problems == [], watched.problems
    finally:
        context.close()


def api_ranking(server: AppServer, image: str) -> list[str]:
    """The first five pictures xmodal's own API gives for ``image``, as clip-front's urls."""
    r = httpx.post(
        f"{server.url}/v1/collections/pictures/search",
        json={"image_base64": image, "target": "image", "k": 5},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return [
        f"{server.url}/v1/collections/pictures/items/{h['id']}/image" for h in r.json()["results"]
    ]


def expect_eventually(condition: Any, page: Page, timeout_s: float = 20) -> None:
    for _ in range(int(timeout_s / 0.2)):
        if condition():
            return
        page.wait_for_timeout(200)
    raise AssertionError("the page never got there")
