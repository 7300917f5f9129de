"""What a newcomer meets on the page: example queries on a first visit, a search that can
be linked (``/?q=``), captions on image tiles, and an empty list that says why."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.helpers import AppServer
from tests.ui.pages import api_search, picture, shown_ids


def nearest_texts(site: AppServer, **body: Any) -> list[str]:
    r = httpx.post(f"{site.url}/v1/collections/gallery/search", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return [h["text"] for h in r.json()["results"]]


def test_a_first_visit_offers_examples_and_a_search_can_be_linked(
    browser: Browser, site: AppServer
) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(site.url + "/")
    examples = page.locator("#examples .example")
    expect(examples).to_have_count(3)
    # Captions the collection holds: its texts nearest "a photo", as the API ranks them.
    offered = examples.all_inner_texts()
    assert (
        offered == list(dict.fromkeys(nearest_texts(site, text="a photo", target="text", k=12)))[:3]
    )
    examples.nth(1).click()
    assert shown_ids(page, 12) == api_search(site, text=offered[1], k=12)
    expect(page.locator("#examples")).to_be_hidden()
    expect(page.locator("#query")).to_have_value(offered[1])
    # The address names the search, the target with it.
    page.check("input[name=target][value=text]")
    expect(page.locator("#results .text-hit")).to_have_count(8)  # the gallery's 8 captions
    link = parse_qs(urlsplit(page.url).query)
    assert link == {"q": [offered[1]], "collection": ["gallery"], "target": ["text"]}
    # Opened anew, the link shows the same results.
    other = context.new_page()
    other.goto(page.url)
    expect(other.locator("#query")).to_have_value(offered[1])
    assert shown_ids(other, 8) == api_search(site, text=offered[1], k=12, target="text")
    expect(other.locator("#examples")).to_be_hidden()
    # Odd text in the address is a query like any other, shown as text, never as markup; a
    # collection that does not exist leaves the first one chosen.
    odd = "  ünï<b>code</b> ✓ \u200b"
    other.goto(f"{site.url}/?q={quote(odd)}&collection=nope&target=sideways")
    expect(other.locator("#summary")).to_contain_text("ünï<b>code</b> ✓")
    assert other.locator("#summary b").count() == 0
    assert shown_ids(other, 12) == api_search(site, text=odd.strip(), k=12)
    assert not errors, errors
    context.close()


def test_tiles_show_captions_and_an_empty_list_says_what_cut_it(
    page: Page, site: AppServer
) -> None:
    with httpx.Client(base_url=site.url, timeout=60) as c:
        assert c.post("/v1/collections", json={"name": "with-captions"}).status_code == 201
        files = [("files", (f"{i}.png", picture(i), "image/png")) for i in range(2)]
        meta = ['{"caption": "a red square by the sea", "year": 2024}', '{"year": 2023}']
        r = c.post(
            "/v1/collections/with-captions/images",
            files=files,
            data={"ids": ["IMG_0001.JPG", "IMG_0002.JPG"], "metadata": meta},
        )
        assert r.status_code == 200, r.text
    page.reload()
    page.select_option("#collection", "with-captions")
    page.fill("#query", "anything")
    page.click("#search-form button")
    shown_ids(page, 2)
    captioned = page.locator("#results .hit[data-id='IMG_0001.JPG'] figcaption")
    expect(captioned.locator(".label")).to_have_text("a red square by the sea")
    expect(captioned.locator(".id")).to_have_count(0)
    bare = page.locator("#results .hit[data-id='IMG_0002.JPG'] figcaption")
    expect(bare.locator(".id")).to_have_text("IMG_0002.JPG")  # no caption: the id
    page.hover("#results .hit[data-id='IMG_0001.JPG']")
    expect(page.locator("#details-body")).to_contain_text("id: IMG_0001.JPG")
    # A min score above every hit: the summary says that it cut them, and what to do.
    page.fill("#min-score", "0.99")
    page.dispatch_event("#min-score", "change")
    expect(page.locator("#results .hit")).to_have_count(0)
    expect(page.locator("#summary")).to_contain_text("scored 0.99 or more")
    expect(page.locator("#summary")).to_contain_text("lower or clear Min score")


def test_the_match_control_searches_texts_by_their_words(page: Page, site: AppServer) -> None:
    page.check("input[name=target][value=text]")
    page.select_option("#mode", "lexical")
    page.fill("#query", "caption number 3")
    page.click("#search-form button")
    r = httpx.post(
        f"{site.url}/v1/collections/gallery/search",
        json={"text": "caption number 3", "mode": "lexical", "k": 12},
        timeout=60,
    )
    expected = [h["id"] for h in r.json()["results"]]
    assert expected[0] == "cap-3"  # the only caption with the word "3"
    assert shown_ids(page, len(expected)) == expected
    page.select_option("#mode", "hybrid")  # re-runs the query, fused
    r = httpx.post(
        f"{site.url}/v1/collections/gallery/search",
        json={"query": [{"text": "caption number 3"}], "mode": "hybrid", "k": 12, "target": "text"},
        timeout=60,
    )
    fused = [h["id"] for h in r.json()["results"]]
    expect(page.locator("#results .hit").first).to_have_attribute("data-id", fused[0])
    assert shown_ids(page, len(fused)) == fused
