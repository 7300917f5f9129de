"""The web page in a real headless Chromium (Debian's, driven by Playwright) against a real
server: what the page shows must be what the API answers, in the same order."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect

from models.synthetic import write_dataset
from tests.helpers import AppServer, image_bytes
from tests.ui.pages import (
    ARTIFACTS,
    KEY,
    api_search,
    picture,
    set_k,
    shown_ids,
    wait_images_loaded,
)


def test_text_search_shows_the_apis_thumbnails_in_order(page: Page, site: AppServer) -> None:
    set_k(page, 6)
    page.fill("#query", "a red picture")
    page.click("#search-form button")
    ids = shown_ids(page, 6)
    assert ids == api_search(site, text="a red picture", k=6)
    wait_images_loaded(page)
    srcs = page.eval_on_selector_all("#results img", "els => els.map(e => e.getAttribute('src'))")
    assert all("/thumbnail?size=256" in s for s in srcs)  # never the full original
    assert "a red picture" in page.inner_text("#summary")
    # Metadata on hover.
    page.hover("#results .hit >> nth=0")
    expect(page.locator("#details")).to_be_visible()
    assert f"id: {ids[0]}" in page.inner_text("#details-body") and '"n"' in page.inner_text(
        "#details-body"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-text-search.png"), full_page=True)


def test_uploading_an_image_searches_with_it(page: Page, site: AppServer) -> None:
    query = image_bytes((30, 70, 220), size=(80, 80), seed=99)
    set_k(page, 5)
    page.set_input_files(
        "#image-input", files=[{"name": "query.png", "mimeType": "image/png", "buffer": query}]
    )
    ids = shown_ids(page, 5)
    expected = api_search(site, image_base64=base64.b64encode(query).decode(), k=5, target="image")
    assert ids == expected
    expect(page.locator("#query-image")).to_be_visible()
    # Texts instead: the toggle re-runs the same query for the other modality.
    page.check("input[name=target][value=text]")
    expect(page.locator("#results .text-hit")).to_have_count(5)
    texts = [page.locator("#results .hit").nth(i).get_attribute("data-id") for i in range(5)]
    assert texts == api_search(
        site, image_base64=base64.b64encode(query).decode(), k=5, target="text"
    )
    assert page.locator("#results .text-hit .caption").first.inner_text().startswith("caption")


def test_clicking_a_result_searches_with_that_image(page: Page, site: AppServer) -> None:
    set_k(page, 4)
    page.fill("#query", "something green")
    page.click("#search-form button")
    ids = shown_ids(page, 4)
    clicked = ids[2]
    page.click(f"#results .hit[data-id='{clicked}']")
    expect(page.locator("#summary")).to_contain_text(f"the image {clicked}")
    after = shown_ids(page, 4)
    index = int(clicked.split("-")[1])
    expected = api_search(
        site, image_base64=base64.b64encode(picture(index)).decode(), k=4, target="image"
    )
    assert after == expected
    # The picture is the query now: the old text is gone and the preview shows it.
    expect(page.locator("#query")).to_have_value("")
    expect(page.locator("#query-image")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-image-search.png"), full_page=True)
    # The preview can be cleared, and its results with it; a text search works after.
    page.click("#clear-image")
    expect(page.locator("#query-image")).to_be_hidden()
    expect(page.locator("#results .hit")).to_have_count(0)
    expect(page.locator("#summary")).to_have_text("")
    set_k(page, 4)
    page.check("input[name=target][value=text]")  # no query left to re-run: nothing happens
    expect(page.locator("#results .hit")).to_have_count(0)
    page.check("input[name=target][value=image]")
    page.fill("#query", "something green")
    page.click("#search-form button")
    assert shown_ids(page, 4) == ids


def test_api_errors_are_shown_in_words(page: Page, site: AppServer) -> None:
    with httpx.Client(base_url=site.url) as c:
        assert c.post("/v1/collections", json={"name": "doomed"}).status_code == 201
    page.click("button[data-panel=collections-panel]")
    expect(page.locator("#collections-body")).to_contain_text("doomed")
    page.click("button[data-panel=search-panel]")
    page.select_option("#collection", "doomed")
    with httpx.Client(base_url=site.url) as c:
        assert c.delete("/v1/collections/doomed").status_code == 204
    page.fill("#query", "anything")
    page.click("#search-form button")
    status = page.locator("#status")
    expect(status).to_have_class("error")
    expect(status).to_contain_text("doomed")
    expect(status).to_contain_text("404 collection_not_found")
    # A blank query is refused on the page, in words, too.
    page.fill("#query", "   ")
    page.click("#search-form button")
    expect(status).to_contain_text("Type something to search for")
    # The message belongs to the search tab: it is gone on another tab and on coming back.
    page.click("button[data-panel=jobs-panel]")
    expect(status).to_have_text("")
    expect(status).not_to_have_class("error")
    page.click("button[data-panel=search-panel]")
    expect(status).to_have_text("")


def test_api_key_is_asked_for_and_kept_in_the_session_only(
    browser: Browser, tmp_path: Path
) -> None:
    server = AppServer(tmp_path / "data", api_keys=KEY, auth_reads="true").start()
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=server.url, headers=auth) as c:
            assert c.post("/v1/collections", json={"name": "private"}).status_code == 201
            r = c.post(
                "/v1/collections/private/images",
                files=[("files", ("a.png", picture(0), "image/png"))],
                data={"ids": ["secret-pic"]},
            )
            assert r.status_code == 200
        context = browser.new_context()
        page = context.new_page()
        page.goto(server.url + "/")
        status = page.locator("#status")
        expect(status).to_contain_text("401")
        expect(status).to_contain_text("API key")
        page.fill("#api-key", KEY)
        page.click("#key-form button")
        expect(page.locator("#collection option")).to_have_count(1)
        page.fill("#query", "anything")
        page.click("#search-form button")
        assert shown_ids(page, 1) == ["secret-pic"]
        wait_images_loaded(page)  # thumbnails fetched with the key, shown from blob URLs
        assert page.evaluate("sessionStorage.getItem('xmodal.apiKey')") == KEY
        assert page.evaluate("localStorage.length") == 0
        context.close()
    finally:
        server.stop()


def test_jobs_panel_follows_jobs_and_shows_the_fine_tuning_report(
    page: Page, site: AppServer
) -> None:
    root = site.data_dir / "import"
    write_dataset(root, "pairs", 96, seed=3, side=64)
    with httpx.Client(base_url=site.url, timeout=60) as c:
        c.post("/v1/collections", json={"name": "imported"})
        index_job = c.post(
            "/v1/collections/imported/jobs/index", json={"source": "pairs.jsonl"}
        ).json()["id"]
        tune_job = c.post(
            "/v1/finetune",
            json={
                "source": "pairs.jsonl",
                "method": "contrastive",
                "eval_fraction": 0.25,
                "hyperparameters": {"epochs": 3, "batch_size": 16, "lr": 1e-3},
            },
        ).json()["id"]
    page.click("button[data-panel=jobs-panel]")
    index_row = page.locator(f"#jobs-body tr[data-id='{index_job}']")
    expect(index_row).to_contain_text("succeeded", timeout=60_000)
    job = httpx.get(f"{site.url}/v1/jobs/{index_job}").json()
    expect(index_row).to_contain_text(f"{job['done'] + job['failed']}/{job['total']}")
    tune_row = page.locator(f"#jobs-body tr[data-id='{tune_job}']")
    expect(tune_row).to_contain_text("finetune")
    tune_row.click()
    expect(page.locator("#report")).to_be_visible()
    expect(tune_row).to_contain_text("succeeded", timeout=120_000)  # the list kept updating
    expect(page.locator("#report-title")).to_contain_text("succeeded")
    expect(page.locator("#report-title")).to_contain_text("(contrastive)")
    detail = httpx.get(f"{site.url}/v1/jobs/{tune_job}").json()["detail"]
    points = page.get_attribute("#loss-chart polyline", "points") or ""
    assert len(points.split()) == len(detail["loss_curve"]) >= 2
    labels = {
        "t2i_r1": "text → image Recall@1",
        "t2i_r5": "text → image Recall@5",
        "i2t_r10": "image → text Recall@10",
        "t2i_mrr": "text → image mean reciprocal rank",
        "t2i_median_rank": "text → image median rank (lower is better)",
        "i2t_median_rank": "image → text median rank (lower is better)",
    }
    for metric, label in labels.items():
        row = page.locator(f"#recall-table tr[data-metric='{metric}'] td")
        base, tuned = detail["base_metrics"][metric], detail["result_metrics"][metric]
        assert row.nth(0).inner_text() == label  # words, not the API's field names
        assert row.nth(1).inner_text() == f"{base:.2f}"
        assert row.nth(2).inner_text() == f"{tuned:.2f}"
        # The change is marked better or worse by the metric's direction: a smaller
        # median rank is an improvement.
        delta = round(tuned - base, 2)
        lower_is_better = metric.endswith("median_rank")
        improved = delta < 0 if lower_is_better else delta > 0
        verdict = "same" if delta == 0 else "better" if improved else "worse"
        assert row.nth(3).inner_text() == ("+" if delta > 0 else "") + f"{delta:.2f}"
        assert row.nth(3).get_attribute("class") == verdict, (metric, base, tuned)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-finetune-report.png"), full_page=True)

    # A closed-form method: its name, and why there is no curve, instead of a wait.
    with httpx.Client(base_url=site.url, timeout=60) as c:
        cca_job = c.post(
            "/v1/finetune", json={"source": "pairs.jsonl", "method": "cca", "eval_fraction": 0.25}
        ).json()["id"]
    cca_row = page.locator(f"#jobs-body tr[data-id='{cca_job}']")
    expect(cca_row).to_contain_text("succeeded", timeout=60_000)
    cca_row.click()
    expect(page.locator("#report-title")).to_contain_text(f"{cca_job} (cca): succeeded")
    expect(page.locator("#loss-chart")).to_contain_text("fitted in closed form")

    # A distilled query encoder: both encoders' speeds beside the recall.
    with httpx.Client(base_url=site.url, timeout=60) as c:
        distill_job = c.post(
            "/v1/finetune",
            json={
                "source": "pairs.jsonl",
                "method": "distill",
                "eval_fraction": 0.25,
                "hyperparameters": {"epochs": 3},
            },
        ).json()["id"]
    distill_row = page.locator(f"#jobs-body tr[data-id='{distill_job}']")
    expect(distill_row).to_contain_text("succeeded", timeout=60_000)
    distill_row.click()
    expect(page.locator("#report-title")).to_contain_text(f"{distill_job} (distill): succeeded")
    with httpx.Client(base_url=site.url, timeout=60) as c:
        speed = c.get(f"/v1/jobs/{distill_job}").json()["detail"]["speed"]
    for metric, before, after in (
        ("texts_per_second", "base_texts_per_second", "result_texts_per_second"),
        ("single_text_ms", "base_single_text_ms", "result_single_text_ms"),
    ):
        cells = page.locator(f"#recall-table tr[data-metric='{metric}'] td")
        expect(cells.nth(1)).to_have_text(f"{speed[before]:.2f}")
        expect(cells.nth(2)).to_have_text(f"{speed[after]:.2f}")


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_dropped_or_pasted_images_search_too(page: Page, site: AppServer, how: str) -> None:
    query = image_bytes((235, 210, 30), size=(64, 64), seed=7)
    set_k(page, 3)
    page.evaluate(
        """([how, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const data = new DataTransfer();
            data.items.add(new File([bytes], "q.png", { type: "image/png" }));
            const event = how === "drop"
                ? new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true })
                : new ClipboardEvent("paste", { clipboardData: data, bubbles: true });
            (how === "drop" ? document.getElementById("drop") : document).dispatchEvent(event);
        }""",
        [how, base64.b64encode(query).decode()],
    )
    ids = shown_ids(page, 3)
    assert ids == api_search(
        site, image_base64=base64.b64encode(query).decode(), k=3, target="image"
    )


@pytest.mark.parametrize(
    ("path", "operation"), [("/docs", ".opblock"), ("/redoc", "[data-section-id]")]
)
def test_the_api_pages_render_offline(
    browser: Browser, site: AppServer, path: str, operation: str
) -> None:
    """As on a machine without internet (every request elsewhere fails): the API pages
    still render every operation, and no script, style or font comes from elsewhere."""
    context = browser.new_context()
    fetched: list[tuple[str, str]] = []
    context.on("request", lambda r: fetched.append((r.resource_type, r.url)))

    def offline(route: Route) -> None:
        if route.request.url.startswith((site.url, "data:", "blob:")):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", offline)
    page = context.new_page()
    try:
        page.goto(site.url + path)
        expect(page.locator(operation).first).to_be_visible(timeout=30_000)
        assert page.locator(operation).count() >= 10
        foreign = [
            url
            for kind, url in fetched
            if kind in ("script", "stylesheet", "font") and not url.startswith(site.url)
        ]
        assert not foreign, foreign
    finally:
        context.close()


def test_long_ids_are_shown_whole_and_counts_in_the_singular(page: Page, site: AppServer) -> None:
    """Ids that share a long prefix stay apart on the page: each is shown whole, inside
    its tile; one image and one text are "1 image, 1 text"."""
    prefix = "holiday-2024-summer-by-the-sea-camera-roll-"
    ids = [f"{prefix}{i:06d}" for i in range(3)]
    with httpx.Client(base_url=site.url, timeout=60) as c:
        assert c.post("/v1/collections", json={"name": "long-ids"}).status_code == 201
        files = [("files", (f"{i}.png", picture(i), "image/png")) for i in range(3)]
        assert c.post("/v1/collections/long-ids/images", files=files, data={"ids": ids}).is_success
        assert c.post("/v1/collections", json={"name": "single"}).status_code == 201
        assert c.post(
            "/v1/collections/single/images",
            files=[("files", ("a.png", picture(0), "image/png"))],
            data={"ids": ["only"]},
        ).is_success
        texts = {"items": [{"id": "t", "text": "one caption"}]}
        assert c.post("/v1/collections/single/texts", json=texts).is_success
    page.reload()
    expect(page.locator("#collection option[value=single]")).to_have_text(
        "single (1 image, 1 text)"
    )
    page.select_option("#collection", "long-ids")
    set_k(page, 3)
    page.fill("#query", "a picture")
    page.click("#search-form button")
    shown = shown_ids(page, 3)
    assert sorted(shown) == ids
    for item_id in shown:
        tile = page.locator(f"#results .hit[data-id='{item_id}']")
        label = tile.locator("figcaption .id")
        assert label.inner_text() == item_id
        fits = label.evaluate(
            """el => {
                const box = el.getBoundingClientRect(), tile = el.closest('figure')
                    .getBoundingClientRect();
                return el.scrollWidth <= el.clientWidth && box.right <= tile.right + 0.5
                    && box.bottom <= tile.bottom + 0.5;
            }"""
        )
        assert fits, item_id
    page.select_option("#collection", "single")
    set_k(page, 5)
    page.fill("#query", "a picture")
    page.click("#search-form button")
    expect(page.locator("#summary")).to_contain_text("1 image for")


def test_the_page_asks_for_nothing_that_is_missing(browser: Browser, site: AppServer) -> None:
    """No 404 on loading the page (the favicon included), and no console errors."""
    context = browser.new_context()
    page = context.new_page()
    failures: list[str] = []
    errors: list[str] = []
    page.on("response", lambda r: failures.append(r.url) if r.status >= 400 else None)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(site.url + "/")
        expect(page.locator("#collection option")).not_to_have_count(0)
        page.wait_for_load_state("networkidle")
        icon = page.get_attribute("link[rel=icon]", "href")
        assert icon is not None
        for path in (icon, "/favicon.ico"):
            r = httpx.get(site.url + path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg")
            assert b"<svg" in r.content
        assert not failures and not errors, (failures, errors)
    finally:
        context.close()


def test_a_job_with_nothing_to_count_shows_no_empty_bar(browser: Browser, tmp_path: Path) -> None:
    """Activating a version on a server without collections re-embeds nothing: the row
    says so instead of showing a 0/0 bar."""
    server = AppServer(tmp_path / "data").start()
    try:
        write_dataset(server.data_dir / "import", "pairs", 64, seed=5, side=32)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            tune = {"source": "pairs.jsonl", "method": "linear", "eval_fraction": 0.25}
            job_id = c.post("/v1/finetune", json=tune).json()["id"]
            job = wait_job(c, job_id)
            assert job["state"] == "succeeded", job
            version = job["detail"]["version"]
            activation = c.post(f"/v1/models/{version}/activate", json={"force": True}).json()
            job = wait_job(c, activation["id"])
            assert job["state"] == "succeeded" and not job["total"], job
        context = browser.new_context()
        page = context.new_page()
        page.goto(server.url + "/")
        page.click("button[data-panel=jobs-panel]")
        row = page.locator(f"#jobs-body tr[data-id='{activation['id']}']")
        expect(row).to_contain_text("nothing to do")
        expect(row.locator("progress")).to_have_count(0)
        tuned = page.locator(f"#jobs-body tr[data-id='{job_id}']")
        expect(tuned.locator("progress")).to_have_count(1)  # a job with a total keeps its bar
        context.close()
    finally:
        server.stop()


def wait_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def scores(site: AppServer, **body: Any) -> list[float]:
    r = httpx.post(f"{site.url}/v1/collections/gallery/search", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return [h["score"] for h in r.json()["results"]]


def test_min_score_and_near_duplicates_follow_the_api(page: Page, site: AppServer) -> None:
    set_k(page, 12)
    page.check("input[name=target][value=text]")
    page.fill("#query", "the caption number 3")
    page.click("#search-form button")
    everything = api_search(site, text="the caption number 3", k=12, target="text")
    assert shown_ids(page, len(everything)) == everything
    floor = round(scores(site, text="the caption number 3", k=12, target="text")[3], 4)
    page.fill("#min-score", str(floor))
    page.dispatch_event("#min-score", "change")
    expected = api_search(site, text="the caption number 3", k=12, target="text", min_score=floor)
    assert 0 < len(expected) < len(everything)
    assert shown_ids(page, len(expected)) == expected
    page.fill("#min-score", "1")
    page.dispatch_event("#min-score", "change")
    expect(page.locator("#summary")).to_contain_text("No texts in gallery")
    page.fill("#min-score", "")
    page.dispatch_event("#min-score", "change")
    shown_ids(page, len(everything))
    page.check("#dedup")
    deduped = api_search(site, text="the caption number 3", k=12, target="text", dedup=0.95)
    assert len(deduped) < len(everything)  # the random model's captions are close
    assert shown_ids(page, len(deduped)) == deduped


def test_more_results_pages_through_the_ranking(page: Page, site: AppServer) -> None:
    set_k(page, 5)
    page.fill("#query", "a blue picture")
    page.click("#search-form button")
    ranking = api_search(site, text="a blue picture", k=12)
    assert shown_ids(page, 5) == ranking[:5]
    page.click("#more")
    assert shown_ids(page, 10) == ranking[:10]  # appended, not replaced
    expect(page.locator("#summary")).to_contain_text("10 images")
    page.click("#more")
    assert shown_ids(page, 12) == ranking
    expect(page.locator("#more")).to_be_hidden()  # the last page


def test_a_second_part_combines_with_the_query(page: Page, site: AppServer) -> None:
    set_k(page, 6)
    page.fill("#query", "a red picture")
    page.click("#search-form button")
    shown_ids(page, 6)
    page.click("#combine summary")
    page.fill("#extra-weight", "-0.5")
    page.fill("#extra-text", "caption number 5")
    page.dispatch_event("#extra-text", "change")
    expected = api_search(
        site,
        query=[{"text": "a red picture"}, {"text": "caption number 5", "weight": -0.5}],
        k=6,
        target="image",
    )
    expect(page.locator("#summary")).to_contain_text("combined with")
    assert shown_ids(page, 6) == expected
    # A picture as the second part instead of the text.
    extra = picture(2)
    page.set_input_files(
        "#extra-image", files=[{"name": "x.png", "mimeType": "image/png", "buffer": extra}]
    )
    expect(page.locator("#extra-text")).to_have_value("")
    expected = api_search(
        site,
        query=[
            {"text": "a red picture"},
            {"image_base64": base64.b64encode(extra).decode(), "weight": -0.5},
        ],
        k=6,
        target="image",
    )
    expect(page.locator("#summary")).to_contain_text("combined with a picture")
    assert shown_ids(page, 6) == expected


def test_more_like_this_searches_with_the_stored_item(page: Page, site: AppServer) -> None:
    set_k(page, 5)
    page.check("input[name=target][value=text]")
    page.fill("#query", "caption number 1")
    page.click("#search-form button")
    ids = shown_ids(page, 5)
    chosen = ids[1]
    page.locator(f"#results .hit[data-id='{chosen}'] .more-like").click()
    expect(page.locator("#summary")).to_contain_text(f"more like {chosen}")
    expected = api_search(site, item_id=chosen, k=5)
    assert chosen not in expected
    assert shown_ids(page, 5) == expected
    expect(page.locator("input[name=target][value=text]")).to_be_checked()


def test_labels_facets_and_why_this_picture(page: Page, site: AppServer) -> None:
    """Pictures with labels (a label set's tags, or given): the tiles show them, the labels
    found are counted beside the results and a click narrows the results to one (and
    back), and "why?" shows the picture with its map from the API in place of the
    thumbnail."""
    given = [["red", "circle"], ["red"], ["blue", "circle"], ["blue"], ["blue"], []]
    with httpx.Client(base_url=site.url, timeout=60) as c:
        c.delete("/v1/collections/tagged")
        assert c.post("/v1/collections", json={"name": "tagged"}).status_code == 201
        files = [("files", (f"p{i}.png", picture(i), "image/png")) for i in range(6)]
        metadata = [json.dumps({"labels": t}) for t in given]
        ids = [f"t-{i}" for i in range(6)]
        r = c.post(
            "/v1/collections/tagged/images", files=files, data={"ids": ids, "metadata": metadata}
        )
        assert r.status_code == 200, r.text
        r = c.post(
            "/v1/collections/tagged/search",
            json={"text": "a picture", "k": 6, "facets": ["labels"]},
        )
        counts = r.json()["facets"]["labels"]
        tags = {h["id"]: h["metadata"]["labels"] for h in r.json()["results"]}
    assert [(e["value"], e["count"]) for e in counts][:1] == [("blue", 3)]
    page.click("button[data-panel=collections-panel]")
    expect(page.locator("#collections-body")).to_contain_text("tagged")
    page.click("button[data-panel=search-panel]")
    page.select_option("#collection", "tagged")
    set_k(page, 6)
    page.fill("#query", "a picture")
    page.click("#search-form button")
    shown_ids(page, 6)
    for item, tagged in tags.items():
        expect(page.locator(f'#results .hit[data-id="{item}"] .tag')).to_have_text(tagged)
    assert len(tags) == 6
    facets = page.locator("#facets .facet")
    expect(facets).to_have_text([f"{e['value']} ({e['count']})" for e in counts])
    facets.first.click()  # blue: three of the six
    assert sorted(shown_ids(page, 3)) == ["t-2", "t-3", "t-4"]
    expect(page.locator("#facets .facet").first).to_have_attribute("aria-pressed", "true")
    page.locator("#facets .facet").first.click()
    shown_ids(page, 6)
    # Why this picture: the overlay the API draws replaces the thumbnail, and comes back.
    with page.expect_response(lambda r: r.url.endswith("/explain")) as answer:
        page.locator("#results .hit >> nth=0 >> .why").click()
    assert answer.value.status == 200
    assert answer.value.headers["content-type"] == "image/png"
    tile = page.locator("#results .hit >> nth=0")
    expect(tile).to_have_class("hit image-hit explained")
    page.wait_for_function(
        "() => { const img = document.querySelector('#results .hit.explained img');"
        " return img && img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0; }"
    )
    tile.locator(".why").click()
    expect(tile).to_have_class("hit image-hit")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-labels-facets.png"), full_page=True)
