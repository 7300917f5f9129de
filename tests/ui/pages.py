"""What the page tests share: the pictures they upload, and how they read the page."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.helpers import REPO, AppServer, image_bytes

ARTIFACTS = REPO / "test-artifacts"
COLOURS = [
    (220, 30, 30),
    (30, 170, 60),
    (30, 70, 220),
    (235, 210, 30),
    (20, 20, 20),
    (240, 240, 240),
]
KEY = "browser-test-key-0123456789"


def picture(i: int) -> bytes:
    return image_bytes(COLOURS[i % len(COLOURS)], size=(96, 72), seed=i)


def api_search(site: AppServer, **body: Any) -> list[str]:
    r = httpx.post(f"{site.url}/v1/collections/gallery/search", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def set_k(page: Page, k: int) -> None:
    page.eval_on_selector(
        "#k",
        f"el => {{ el.value = {k}; el.dispatchEvent(new Event('input')); }}",
    )


def shown_ids(page: Page, n: int) -> list[str]:
    hits = page.locator("#results .hit")
    expect(hits).to_have_count(n)
    return [hits.nth(i).get_attribute("data-id") or "" for i in range(n)]


def wait_images_loaded(page: Page) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
