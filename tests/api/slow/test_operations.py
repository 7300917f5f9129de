"""Exposing the service safely: API keys, CORS, request ids and JSON logs, the concurrency
limit, graceful shutdown, the metrics the dashboard reads, and the load script."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.api.main import create_app
from app.service.config import Settings
from bench import load
from tests.calls import assert_error, wait_until
from tests.helpers import REPO, AppServer, ServerProcess, children, image_bytes, store_vectors

KEYS = ("first-key-0123456789abcdef", "second-key-0123456789abcdef")
# POSTs that only read: they need a key only with XMODAL_AUTH_READS.
READ_ONLY_POSTS = {
    "/v1/collections/{name}/search",
    "/v1/collections/{name}/search/image",
    "/v1/collections/{name}/search/batch",
    "/v1/embed",
    "/v1/embeddings",
    "/v1/classify",
    "/v1/classify/image",
    "/v1/collections/{name}/explain",
}
PATH_VALUES = {"name": "c", "item_id": "i", "job_id": "j", "version": "v", "snapshot": "s.tar"}


def api_routes() -> list[tuple[str, str]]:
    """Every (method, path template) of the API, from the application's own OpenAPI
    schema, so that a route added later is checked without editing this test."""
    app = create_app(Settings(model="xmodal-tiny", pretrained="none"))
    return [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/v1")
        for method in operations
    ]


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], template)


def writes() -> list[tuple[str, str]]:
    return [(m, p) for m, p in api_routes() if m != "GET" and p not in READ_ONLY_POSTS]


def reads() -> list[tuple[str, str]]:
    return [(m, p) for m, p in api_routes() if m == "GET" or p in READ_ONLY_POSTS]


def assert_unauthorized(r: httpx.Response) -> None:
    assert r.status_code == 401, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")


SCOPED = "scoped-reader-key-0123456789"  # of the keys file, read on collection k0


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("keyed")
    keys_file = root / "keys.json"
    keys_file.write_text(
        json.dumps({"keys": [{"key": SCOPED, "collections": ["k0"], "access": "read"}]})
    )
    server = ServerProcess(
        root / "data",
        api_keys=",".join(KEYS),
        api_keys_file=str(keys_file),
        log_level="info",
        log_format="json",
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_every_state_changing_route_needs_a_key(keyed: ServerProcess) -> None:
    routes = writes()
    # The routes the issue names are among them: nothing was left out by the classification.
    names = {p for _, p in routes}
    assert {
        "/v1/collections",
        "/v1/collections/{name}",
        "/v1/collections/{name}/images",
        "/v1/collections/{name}/texts",
        "/v1/collections/{name}/items/{item_id}",
        "/v1/collections/{name}/jobs/index",
        "/v1/jobs/{job_id}",
        "/v1/finetune",
        "/v1/models/{version}/activate",
        "/v1/models/{version}/rollback",
    } <= names
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"Authorization": KEYS[0]}):
                assert_unauthorized(c.request(method, concrete(path), headers=headers))
        # Nothing was created by the refused requests.
        assert c.get("/v1/collections").json()["collections"] == []
        # Either key works; reads stay open without XMODAL_AUTH_READS.
        for i, key in enumerate(KEYS):
            auth = {"Authorization": f"Bearer {key}"}
            r = c.post("/v1/collections", json={"name": f"k{i}"}, headers=auth)
            assert r.status_code == 201, r.text
        for method, path in reads():
            r = c.request(method, concrete(path), json={"text": "x"})
            assert r.status_code != 401, (method, path)
        for path in ("/healthz", "/readyz"):
            assert c.get(path).status_code == 200
        # Under a keys file /metrics shows every collection to administrators only.
        assert c.get("/metrics").status_code == 401
        scoped = {"Authorization": f"Bearer {SCOPED}"}
        assert c.get("/metrics", headers=scoped).status_code == 403
        assert c.get("/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}).is_success


def test_sighup_reads_the_keys_file_again(keyed: ServerProcess) -> None:
    keys_file = keyed.data_dir.parent / "keys.json"
    later = "a-later-writer-key-0123456789"
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        admin = {"Authorization": f"Bearer {KEYS[0]}"}
        c.post("/v1/collections", json={"name": "hup"}, headers=admin)
        items = {"items": [{"id": "t", "text": "x"}]}

        def write(key: str) -> int:
            auth = {"Authorization": f"Bearer {key}"}
            return c.post("/v1/collections/hup/texts", json=items, headers=auth).status_code

        assert write(SCOPED) == 403 and write(later) == 401
        keys_file.write_text(
            json.dumps({"keys": [{"key": later, "collections": ["hup"], "access": "write"}]})
        )
        assert keyed.proc is not None
        keyed.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: write(later) == 200, what="the new key after SIGHUP")
        assert write(SCOPED) == 401  # gone with the old file
    log = keyed.log_path.read_text()
    assert "API keys file reloaded: 1 keys" in log and later not in log


def test_keys_and_bodies_stay_out_of_the_logs_and_requests_carry_ids(
    keyed: ServerProcess,
) -> None:
    secret_text = "confidential-caption-7f3a9"
    with httpx.Client(base_url=keyed.url, timeout=30) as c:
        auth = {"Authorization": f"Bearer {KEYS[1]}"}
        c.post("/v1/collections", json={"name": "logged"}, headers=auth)
        r = c.post(
            "/v1/collections/logged/texts",
            json={"items": [{"id": "t1", "text": secret_text}]},
            headers={**auth, "X-Request-ID": "client-chosen-id-42"},
        )
        assert r.status_code == 200
        assert r.headers["x-request-id"] == "client-chosen-id-42"
        generated = c.get("/v1/collections").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)
        # An id that could forge log lines is replaced, not echoed.
        bad = c.get("/v1/collections", headers={"X-Request-ID": "a b\tc" + "x" * 200})
        assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
        refused = c.delete("/v1/collections/logged", headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401
    # The access log is written as each response ends: wait for the last one's line.
    last = refused.headers["x-request-id"]
    wait_until(lambda: last in keyed.log_path.read_text(), what="the last request logged")
    log = keyed.log_path.read_text()
    for secret in (*KEYS, secret_text, "Bearer wrong"):
        assert secret not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    by_id = {r.get("request_id"): r for r in records if r.get("logger") == "xmodal.access"}
    entry = by_id["client-chosen-id-42"]
    assert entry["method"] == "POST" and entry["path"] == "/v1/collections/logged/texts"
    assert entry["status"] == 200 and entry["duration_ms"] > 0 and entry["level"] == "info"
    assert by_id[generated]["status"] == 200
    assert by_id[refused.headers["x-request-id"]]["status"] == 401
    # Every line the server wrote is JSON, uvicorn's own lines included.
    assert all(line.startswith("{") for line in log.splitlines() if line.strip())


def test_auth_reads_and_metrics_close_everything_but_health(tmp_path: Path) -> None:
    server = AppServer(tmp_path / "data", api_keys=KEYS[0], auth_reads="true").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for method, path in reads() + writes():
                assert_unauthorized(c.request(method, concrete(path), json={"text": "x"}))
            assert_unauthorized(c.get("/metrics"))
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
            auth = {"Authorization": f"Bearer {KEYS[0]}"}
            assert c.get("/metrics", headers=auth).status_code == 200
            assert c.get("/v1/collections", headers=auth).status_code == 200
    finally:
        server.stop()


def test_cors_is_closed_by_default_and_open_to_configured_origins(
    tmp_path: Path, server: AppServer
) -> None:
    preflight = {
        "Origin": "https://ui.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    # The shared test server has no origins configured.
    r = httpx.options(server.url + "/v1/collections/x/search", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(server.url + "/v1/collections", headers={"Origin": "https://ui.example"})
    assert "access-control-allow-origin" not in r.headers

    cors = AppServer(tmp_path / "data", cors_origins="https://ui.example/").start()
    try:
        r = httpx.options(cors.url + "/v1/collections/x/search", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = httpx.get(cors.url + "/v1/collections", headers={"Origin": "https://ui.example"})
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        other = {**preflight, "Origin": "https://evil.example"}
        r = httpx.options(cors.url + "/v1/collections/x/search", headers=other)
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"
    finally:
        cors.stop()


def _hold_upload(
    url: str, collection: str, item_id: str, png: bytes
) -> tuple[socket.socket, bytes]:
    """Start a multipart upload and stop before its last bytes: the request is in flight
    until the rest is sent."""
    boundary = "xmodalboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="ids"\r\n\r\n{item_id}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST /v1/collections/{collection}/images HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[:-20])
    return sock, body[-20:]


def _finish(sock: socket.socket, rest: bytes) -> int:
    sock.sendall(rest)
    sock.settimeout(30)
    reply = b""
    while b"\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    sock.close()
    return int(reply.split(b" ", 2)[1])


def test_concurrency_limit_answers_429_and_spares_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each embed right behind another waits a second for companions to batch with: two of
    # them hold both slots. (The first after a quiet spell, alone, goes at once.)
    monkeypatch.setattr("app.service.engine.MAX_WAIT_MS", 1000)
    server = AppServer(tmp_path / "data", max_concurrent_requests=2, max_batch_size=64).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c, ThreadPoolExecutor(2) as pool:
            assert c.post("/v1/embed", json={"texts": ["first"]}).status_code == 200
            held = [
                pool.submit(httpx.post, server.url + "/v1/embed", json={"texts": [f"t{i}"]})
                for i in range(2)
            ]
            in_flight = "xmodal_requests_in_flight 2.0"
            wait_until(lambda: in_flight in c.get("/metrics").text, what=in_flight)
            r = c.get("/v1/collections")
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "too_many_concurrent_requests"
            assert r.headers["retry-after"] == "1"
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 200
            metrics = c.get("/metrics").text
            assert "xmodal_requests_in_flight 2.0" in metrics
            assert "xmodal_requests_refused_total 1.0" in metrics
            assert [f.result().status_code for f in held] == [200, 200]
            assert c.get("/v1/collections").status_code == 200
    finally:
        server.stop()


def test_sigterm_drains_finishes_in_flight_requests_and_snapshots(tmp_path: Path) -> None:
    store_vectors(tmp_path / "data", "many", 5000)
    server = ServerProcess(
        tmp_path / "data", shutdown_drain_s=2, index_dump_interval_s=3600
    ).start()
    assert server.proc is not None
    pid = server.proc.pid
    # An index advice that would measure for about 8 s (issue 26.3): SIGTERM ends it.
    advice = ThreadPoolExecutor(1).submit(
        httpx.post,
        f"{server.url}/v1/collections/many/index-advice",
        json={"specs": ["HNSW128"] * 12},
        timeout=60,
    )
    wait_until(
        lambda: children(pid, b"index.vectors.advice_run") != [], what="the advice measuring"
    )
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.post("/v1/collections", json={"name": "drain"}).status_code == 201
        r = c.post("/v1/collections/drain/texts", json={"items": [{"id": "t", "text": "kept"}]})
        assert r.status_code == 200
        drained = tmp_path / "data" / "indexes" / "drain"
        assert not list(drained.rglob("*.xmidx"))  # nothing snapshotted yet
        sock, rest = _hold_upload(server.url, "drain", "in-flight", image_bytes(seed=3))
        # The server reads the head and most of the body; a body still arriving takes no
        # slot yet (slow clients hold none), so there is nothing to poll for here.
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        stopped = advice.result()
        assert_error(stopped, 503, "advice_stopped")
        assert children(pid, b"index.vectors.advice_run") == []
        # Draining: not ready, still alive and still serving.
        wait_until(lambda: c.get("/readyz").status_code == 503, what="not ready")
        r = c.get("/readyz")
        assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"]
        assert c.get("/healthz").status_code == 200

    def closed() -> bool:
        try:
            httpx.get(server.url + "/healthz", timeout=2)
        except httpx.TransportError:
            return True
        return False

    # The drain is over: the listener is closed ...
    wait_until(closed, timeout=10, what="the listener closed")
    # ... but the request in flight since before SIGTERM still completes.
    assert _finish(sock, rest) == 200
    # uvicorn re-raises the signal once its shutdown is done: dying of it is the clean end.
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert sorted(p.name for p in drained.rglob("*.xmidx")) == ["image.xmidx", "text.xmidx"]
    again = ServerProcess(tmp_path / "data").start()
    try:
        counts = httpx.get(again.url + "/v1/collections/drain").json()["counts"]
        assert counts == {"image": 1, "text": 1}
    finally:
        again.stop()


def test_dashboard_queries_only_metrics_the_server_exports(server: AppServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        c.post("/v1/collections", json={"name": "dash"})
        c.post("/v1/collections/dash/texts", json={"items": [{"id": "a", "text": "a"}]})
        c.post("/v1/collections/dash/search", json={"text": "a"})
        exported = set(re.findall(r"^(xmodal_\w+)", c.get("/metrics").text, re.M))
    dashboard = json.loads((REPO / "docker" / "grafana" / "xmodal-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bxmodal_\w+", e)}
    assert used and used <= exported, used - exported
    # The named series are on the dashboard.
    for name in (
        "xmodal_encoder_batch_size_sum",
        "xmodal_encoder_queue_wait_seconds_bucket",
        "xmodal_request_duration_seconds_bucket",
        "xmodal_requests_total",
    ):
        assert name in used


def test_load_script_finishes_clean_and_its_check_can_fail(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        report = load.run(
            server.url,
            None,
            clients=8,
            seconds=4,
            mix={"search": 0.5, "upload": 0.3, "delete": 0.2},
        )
        assert report["ok"], report
        assert report["server_errors"] == 0 and report["lost_write_count"] == 0
        assert report["acknowledged_writes"] > 0 and report["acknowledged_deletes"] > 0
        assert set(report["latency_ms"]) == {"search", "upload", "delete"}
        # The check is real: a write the server never acknowledged is reported lost, and
        # so is a "deleted" id that is still there.
        tally = load.Tally()
        tally.stored["never-stored"] = ("text", "some text")
        tally.deleted.add("seed-1")
        lost = load._verify(server.url, None, report["collection"], tally)
        assert len(lost) == 2, lost
    finally:
        server.stop()
