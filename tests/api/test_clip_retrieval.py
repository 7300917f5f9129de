"""clip-retrieval's own client against xmodal: ``ClipClient`` from the clip-retrieval
package (installed without its dependencies; its module is loaded by file path, since the
package's ``__init__`` pulls in an old stack), and the routes as clip-front calls them."""

from __future__ import annotations

import base64
import http.server
import importlib.util
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import requests

from tests.helpers import AppServer, image_bytes

CAPTIONS = {
    f"c{i}": f"{w} {v} picture {i}"
    for i, (w, v) in enumerate(
        (w, v)
        for w in ("red", "green", "blue", "yellow", "black")
        for v in ("circle", "square", "cross", "star")
    )
}


def clip_client() -> ModuleType:
    spec = importlib.util.find_spec("clip_retrieval")
    assert spec is not None and spec.submodule_search_locations, "make install puts it there"
    path = Path(spec.submodule_search_locations[0]) / "clip_client.py"
    module_spec = importlib.util.spec_from_file_location("clip_retrieval_client", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """Texts in one collection, pictures with captions and urls in another; image URLs
    allowed from the loopback network only; fetches of 1.5 s at most, two at once (the
    constants the stack reads, smaller here for the deadline test)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("app.service.stack.IMAGE_URL_TIMEOUT_S", 1.5)
        patch.setattr("app.service.stack.IMAGE_URL_FETCHES", 2)
        server = AppServer(
            tmp_path_factory.mktemp("clip") / "data",
            image_urls=True,
            image_url_networks="127.0.0.1/32",
        ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.post("/v1/collections", json={"name": "captions"}).status_code == 201
            items = [
                {"id": i, "text": t, "metadata": {"n": n}}
                for n, (i, t) in enumerate(CAPTIONS.items())
            ]
            assert c.post("/v1/collections/captions/texts", json={"items": items}).is_success
            assert c.post("/v1/collections", json={"name": "pictures"}).status_code == 201
            files = [
                ("files", (f"{i}.png", image_bytes(seed=i, size=(48, 40)), "image/png"))
                for i in range(3)
            ]
            meta = [
                json.dumps({"caption": f"picture {i}", "url": f"https://example.com/{i}.png"})
                for i in range(2)
            ] + ["{}"]
            r = c.post(
                "/v1/collections/pictures/images",
                files=files,
                data={"ids": ["p0", "p1", "p2"], "metadata": meta},
            )
            assert r.status_code == 200, r.text
        yield server
    finally:
        server.stop()


def ranking(site: AppServer, collection: str, **body: Any) -> list[dict[str, Any]]:
    r = httpx.post(f"{site.url}/v1/collections/{collection}/search", json=body, timeout=60)
    assert r.status_code == 200, r.text
    results: list[dict[str, Any]] = r.json()["results"]
    return results


def test_the_clip_client_searches_texts(site: AppServer) -> None:
    module = clip_client()
    client = module.ClipClient(
        url=f"{site.url}/knn-service",
        indice_name="captions",
        modality=module.Modality.TEXT,
        num_images=5,
        deduplicate=False,
    )
    results = client.query(text="a blue square")
    expected = ranking(site, "captions", text="a blue square", target="text", k=5)
    assert [r["xmodal_id"] for r in results] == [h["id"] for h in expected]
    for r, h in zip(results, expected, strict=True):
        assert isinstance(r["id"], int)
        assert r["similarity"] == pytest.approx(h["score"], abs=1e-5)
        assert r["caption"] == CAPTIONS[h["id"]] and r["n"] == h["metadata"]["n"]
    # The client's defaults: deduplicate on (clip back's 0.94), safety and aesthetic
    # options sent and ignored.
    deduped = module.ClipClient(
        url=f"{site.url}/knn-service",
        indice_name="captions",
        modality=module.Modality.TEXT,
        num_images=20,
    ).query(text="a blue square")
    expected = ranking(site, "captions", text="a blue square", target="text", k=20, dedup=0.94)
    assert [r["xmodal_id"] for r in deduped] == [h["id"] for h in expected]
    # By embedding: the same ranking as the text it came from.
    vector = httpx.post(f"{site.url}/v1/embed", json={"texts": ["a blue square"]}).json()
    by_vector = client.query(embedding_input=vector["vectors"][0])
    assert [r["id"] for r in by_vector] == [r["id"] for r in results]
    # Only the direction counts: the largest finite float32s and tiny numbers alike.
    v = vector["vectors"][0]
    peak = max(abs(x) for x in v)
    for scale in (3e38, 1e300, 1e-300):
        scaled = client.query(embedding_input=[x / peak * scale for x in v])
        assert [r["id"] for r in scaled] == [r["id"] for r in results], scale


def test_the_clip_client_searches_pictures_by_image_file(site: AppServer, tmp_path: Path) -> None:
    module = clip_client()
    query = tmp_path / "query.png"
    query.write_bytes(image_bytes(seed=1, size=(48, 40)))
    client = module.ClipClient(
        url=f"{site.url}/knn-service", indice_name="pictures", num_images=2, deduplicate=False
    )
    results = client.query(image=str(query))
    expected = ranking(
        site,
        "pictures",
        image_base64=base64.b64encode(query.read_bytes()).decode(),
        k=40,
        target="image",
    )
    assert [r.get("xmodal_id") for r in results] == [h["id"] for h in expected[:2]]
    first = results[0]
    assert base64.b64decode(first["image"])[:2] == b"\xff\xd8"  # a JPEG of the stored image
    if first["xmodal_id"] in ("p0", "p1"):
        assert first["url"] == f"https://example.com/{first['xmodal_id'][1]}.png"
    # More ids than metadata: the hits past num_images carry only id and similarity.
    body = {
        "image": base64.b64encode(query.read_bytes()).decode(),
        "num_images": 1,
        "num_result_ids": 3,
        "indice_name": "pictures",
        "modality": "image",
    }
    results = requests.post(f"{site.url}/knn-service", data=json.dumps(body), timeout=60).json()
    assert len(results) == 3 and "xmodal_id" in results[0]
    assert all(set(r) == {"id", "similarity"} for r in results[1:])
    # /metadata resolves the integer ids, whatever content type the client sends.
    ids = [r["id"] for r in results]
    for headers in ({}, {"Content-Type": "text/plain;charset=UTF-8"}):
        meta = requests.post(
            f"{site.url}/metadata",
            data=json.dumps({"ids": [*ids, 999_999], "indice_name": "pictures"}),
            headers=headers,
            timeout=60,
        )
        assert meta.status_code == 200, meta.text
        rows = meta.json()
        assert [row["id"] for row in rows] == [*ids, 999_999]
        assert {row["metadata"]["xmodal_id"] for row in rows[:3]} == {"p0", "p1", "p2"}
        assert rows[3]["metadata"] == {}
        p2 = next(row for row in rows if row["metadata"].get("xmodal_id") == "p2")
        assert p2["metadata"]["url"].endswith("/v1/collections/pictures/items/p2/image")
        assert httpx.get(p2["metadata"]["url"]).status_code == 200


def test_indices_list_and_bad_bodies(site: AppServer) -> None:
    assert requests.get(f"{site.url}/indices-list", timeout=60).json() == ["captions", "pictures"]
    url = f"{site.url}/knn-service"
    for body, status in (
        ("not json", 422),
        (json.dumps({"modality": "image", "num_images": 5}), 400),  # no query
        (json.dumps({"text": "a", "num_images": 0}), 422),
        (json.dumps({"text": "a", "num_images": 5, "indice_name": "nope"}), 404),
        (json.dumps({"text": "", "image": "", "image_url": "", "num_images": 5}), 400),
        (json.dumps({"embedding_input": [1.0, 2.0], "indice_name": "captions"}), 400),
        ('{"text": "a", "num_images": NaN}', 422),
    ):
        r = requests.post(url, data=body, timeout=60)
        assert r.status_code == status, (body, r.text)
        assert "error" in r.json()
    # /metadata's ids are row numbers: true is not 1, nor 1.5, nor a number past 64 bits.
    for ids in ("[true]", "[1.5]", '["1"]', f"[{2**70}]", "[-1]"):
        body = f'{{"ids": {ids}, "indice_name": "captions"}}'
        r = requests.post(f"{site.url}/metadata", data=body, timeout=60)
        assert r.status_code == 422 and "error" in r.json(), (ids, r.text)
    r = requests.post(f"{site.url}/metadata", json={"ids": [0], "indice_name": "captions"})
    assert r.status_code == 200 and r.json()[0]["id"] == 0


class ImageHost(http.server.BaseHTTPRequestHandler):
    """A local image host: /ok.png is a picture, /moved redirects to it."""

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/ok.png")
            self.end_headers()
            return
        data = image_bytes(seed=2, size=(48, 40))
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_image_urls_reach_only_allowed_addresses(site: AppServer, server: AppServer) -> None:
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    port = host.server_address[1]
    try:
        body = {"num_images": 3, "indice_name": "pictures"}
        r = requests.post(
            f"{site.url}/knn-service",
            data=json.dumps({**body, "image_url": f"http://127.0.0.1:{port}/ok.png"}),
            timeout=60,
        )
        assert r.status_code == 200, r.text
        expected = ranking(
            site,
            "pictures",
            target="image",
            k=3,
            image_base64=base64.b64encode(image_bytes(seed=2, size=(48, 40))).decode(),
        )
        assert [x["xmodal_id"] for x in r.json()] == [h["id"] for h in expected]
        for url, what in (
            (f"http://127.0.0.1:{port}/moved", "302"),
            ("http://10.1.2.3/x.png", "not public"),
            (f"http://[::1]:{port}/ok.png", "not public"),
            ("http://169.254.169.254/latest/meta-data", "not public"),
            ("file:///etc/passwd", "http or https"),
            (f"http://user:pw@127.0.0.1:{port}/ok.png", "credentials"),
        ):
            r = requests.post(
                f"{site.url}/knn-service", data=json.dumps({**body, "image_url": url}), timeout=60
            )
            assert r.status_code == 400 and what in r.json()["error"]["message"], (url, r.text)
        # The default server does not fetch at all.
        r = requests.post(
            f"{server.url}/knn-service",
            data=json.dumps({"image_url": f"http://127.0.0.1:{port}/ok.png", "num_images": 3}),
            timeout=60,
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "image_url_refused"
    finally:
        host.shutdown()


def test_what_clip_front_sends_is_answered_as_clip_back_would(site: AppServer) -> None:
    knn = f"{site.url}/knn-service"

    def post(**body: Any) -> list[dict[str, Any]]:
        r = requests.post(knn, data=json.dumps(body), timeout=60)  # no content type, as it
        assert r.status_code == 200, r.text
        answer: list[dict[str, Any]] = r.json()
        return answer

    # Any origin may call clip back's routes (clip-front lives on another); /v1 stays shut.
    origin = {"Origin": "http://127.0.0.1:9"}
    r = requests.get(f"{site.url}/indices-list", headers=origin, timeout=60)
    assert r.headers["access-control-allow-origin"] == "*"
    pre = requests.options(
        knn,
        headers={**origin, "Access-Control-Request-Method": "POST"},
        timeout=60,
    )
    assert pre.status_code == 204 and "POST" in pre.headers["access-control-allow-methods"]
    r = requests.get(f"{site.url}/v1/collections", headers=origin, timeout=60)
    assert "access-control-allow-origin" not in r.headers
    # Its fixed num_result_ids (3,000, over the limit of 1,000) is clamped, not refused.
    texts = post(
        text="a red star",
        num_images=40,
        num_result_ids=3000,
        indice_name="captions",
        modality="text",
    )
    assert len(texts) == len(CAPTIONS) and sum("url" in t for t in texts) == len(CAPTIONS)
    # Text hits get a picture of their caption each: unique, loadable, escaped.
    urls = [t["url"] for t in texts]
    assert len(set(urls)) == len(urls) and all(
        u.startswith("data:image/svg+xml;base64,") for u in urls
    )
    svg = base64.b64decode(urls[0].split(",", 1)[1]).decode()
    assert svg.startswith("<svg") and texts[0]["caption"] in svg
    # An image with an empty text beside it is an image search; a text and an image: the text.
    picture = base64.b64encode(image_bytes(seed=1, size=(48, 40))).decode()
    by_image = post(image=picture, text="", num_images=3, indice_name="pictures")
    expected = ranking(site, "pictures", image_base64=picture, target="image", k=3)
    assert [h["xmodal_id"] for h in by_image] == [h["id"] for h in expected]
    both = post(
        text="a red star", image=picture, num_images=3, indice_name="captions", modality="text"
    )
    assert [h["xmodal_id"] for h in both] == [t["xmodal_id"] for t in texts[:3]]
    # No index named: the first collection.
    first = requests.get(f"{site.url}/indices-list", timeout=60).json()[0]
    unnamed = post(text="a red star", num_images=3, indice_name="", modality="text")
    named = post(text="a red star", num_images=3, indice_name=first, modality="text")
    assert [h["id"] for h in unnamed] == [h["id"] for h in named]


def _trickle(listener: socket.socket, stop: threading.Event) -> None:
    """A host that sends its headers a byte every 0.2 s, to each client at once."""

    def serve(conn: socket.socket) -> None:
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n" * 20:
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def test_image_url_fetches_have_one_deadline_and_a_bound(site: AppServer) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    threading.Thread(target=_trickle, args=(listener, stop), daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/slow.png"
    body = json.dumps({"num_images": 3, "indice_name": "pictures", "image_url": url})

    def post(_: int) -> tuple[int, str, float]:
        started = time.monotonic()
        r = requests.post(f"{site.url}/knn-service", data=body, timeout=60)
        return r.status_code, r.json()["error"]["message"], time.monotonic() - started

    try:
        # Each read of a trickled byte is quick; the whole fetch still ends at 1.5 s.
        status, message, took = post(0)
        assert status == 400 and "took longer than 1.5 s" in message, message
        assert took < 4, took
        # Two fetches at once at most (IMAGE_URL_FETCHES, 2 here): the others get 429.
        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(post, range(5)))
        statuses = sorted(a[0] for a in answers)
        assert statuses.count(429) >= 3 and set(statuses) <= {400, 429}, answers
        assert all("in progress" in m for s, m, _ in answers if s == 429)
        assert max(a[2] for a in answers) < 4
    finally:
        stop.set()
        listener.close()


def test_the_routes_follow_the_read_key_rules(tmp_path: Path) -> None:
    key = "clip-test-key-0123456789"
    server = AppServer(tmp_path / "data", api_keys=key, auth_reads="true").start()
    try:
        body = json.dumps({"text": "a", "num_images": 3})
        for method, path in (
            ("GET", "/indices-list"),
            ("POST", "/knn-service"),
            ("POST", "/metadata"),
        ):
            r = requests.request(method, server.url + path, data=body, timeout=60)
            assert r.status_code == 401, (path, r.text)
        ok = requests.get(
            server.url + "/indices-list", headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        assert ok.status_code == 200 and ok.json() == []
    finally:
        server.stop()
