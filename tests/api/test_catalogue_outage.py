"""A server whose catalogue is on PostgreSQL, when PostgreSQL goes away: requests that
need it answer 503 naming the cause (no 500, no hang past the deadline), ``/readyz`` says
so, the server serves again by itself once PostgreSQL is back, and the connection
string's password shows up nowhere (responses, logs, metrics)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.postgres import PgCluster
from index import CatalogueUnavailable, CollectionStore, Modality, NewItem
from index.values import InvalidValue
from index.writes import uncertain
from tests.calls import wait_for_job
from tests.corpus import write_many
from tests.helpers import AppServer
from tests.stores import CPU, D, V, normalised

PASSWORD = "Sx-9f2-never-shown"
CORPUS = 160


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[tuple[PgCluster, AppServer, httpx.Client]]:
    cluster = PgCluster().start()  # its own: this test stops and starts it
    server = None
    try:
        url = cluster.password_user("xm", PASSWORD)
        write_many(tmp_path / "data" / "import", "corpus", CORPUS)
        server = AppServer(tmp_path / "data", database_url=url, import_chunk_size=8).start()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield cluster, server, client
    finally:
        if server is not None:
            server.stop()
        cluster.stop()


def test_a_catalogue_outage_is_a_503_and_the_server_recovers(
    outage: tuple[PgCluster, AppServer, httpx.Client], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    cluster, server, c = outage
    answers: list[httpx.Response] = []

    def call(method: str, path: str, **kw: object) -> httpx.Response:
        r = c.request(method, path, **kw)  # type: ignore[arg-type]
        answers.append(r)
        return r

    assert call("POST", "/v1/collections", json={"name": "docs"}).status_code == 201
    items = [
        {"id": f"d{i}", "text": f"document number {i}", "metadata": {"i": i}} for i in range(8)
    ]
    assert call("POST", "/v1/collections/docs/texts", json={"items": items}).status_code == 200
    query = {"text": "document number 3", "k": 3, "target": "text"}
    before = call("POST", "/v1/collections/docs/search", json=query).json()["results"]
    assert len(before) == 3, before

    r = call("POST", "/v1/collections/docs/jobs/index", json={"source": "corpus"})
    job = r.json()["id"]
    time.sleep(0.3)  # under way, a few chunks in
    cluster.stop_server()
    for method, path, body in [
        ("POST", "/v1/collections/docs/search", query),
        ("POST", "/v1/collections/docs/search", {**query, "filter": {"i": {"$gt": 2}}}),
        ("POST", "/v1/collections/docs/search", {**query, "mode": "lexical"}),
        ("POST", "/v1/collections/docs/texts", {"items": [{"id": "x", "text": "new"}]}),
        ("GET", "/v1/collections/docs/items/d1", None),
    ]:
        started = time.monotonic()
        r = call(method, path, json=body) if body else call(method, path)
        assert r.status_code == 503, (path, r.status_code, r.text)
        error = r.json()["error"]
        assert error["code"] == "catalogue_unavailable" and "PostgreSQL" in error["message"]
        assert time.monotonic() - started < 10
    ready = call("GET", "/readyz")
    assert ready.status_code == 503 and "PostgreSQL" in ready.json()["error"]["message"]

    cluster.restart_server()
    deadline = time.monotonic() + 20
    while call("GET", "/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the server did not come back with PostgreSQL"
        time.sleep(0.2)
    assert call("POST", "/v1/collections/docs/search", json=query).json()["results"] == before
    more = {"items": [{"id": "d8", "text": "document number 8"}]}
    r = call("POST", "/v1/collections/docs/texts", json=more)
    assert r.status_code == 200, r.text
    assert call("GET", "/v1/collections/docs/items/d8").status_code == 200

    # The index job went on once the catalogue was back: every image once.
    finished = wait_for_job(c, job, timeout=120)
    assert finished["state"] == "succeeded" and finished["done"] == CORPUS, finished
    assert c.get("/v1/collections/docs").json()["counts"]["image"] == CORPUS

    # The password, nowhere: not in a response, a log line or the metrics.
    answers.append(call("GET", "/metrics"))
    for r in answers:
        assert PASSWORD not in r.text and PASSWORD not in str(r.headers)
    assert PASSWORD not in caplog.text
    assert "catalogue" in caplog.text.lower() or any(r.status_code == 503 for r in answers)


def test_a_commit_whose_answer_was_lost_is_caught_up_before_the_next_search(
    tmp_path: Path, pg: PgCluster
) -> None:
    """The catalogue went away after ``COMMIT`` reached it, before its answer came back:
    the write raised, yet its rows are there. The indexes then catch up from the
    catalogue before the next search, rather than miss what it holds."""
    store = CollectionStore(tmp_path / "d", backends=CPU, database_url=pg.database())
    try:
        store.create_collection("c", D, V)
        store.upsert("c", [NewItem("a", Modality.TEXT, {}, text="a")], normalised(1, 1), V)
        c = store.get("c")
        landed = NewItem("b", Modality.TEXT, {"n": 1}, text="b")
        with pytest.raises(CatalogueUnavailable), uncertain(c):
            with store.db.transaction() as conn:  # what the lost commit wrote
                row = ("c", "b", "text", '{"n":1}', "b", None, None, normalised(1, 2)[0].tobytes())
                (label,) = store.db.insert_items(conn, [(*row, None, V, 1.0)])
                store.db.fields_written(conn, [(label, "c", "text", landed.metadata)])
            raise CatalogueUnavailable("the answer to COMMIT was lost")
        assert store.get_collection("c").counts[Modality.TEXT] == 2
        (hits,) = store.search("c", Modality.TEXT, normalised(1, 2), 2, model_version=V)
        assert hits[0].id == "b" and hits[0].score == pytest.approx(1.0, abs=1e-5)
        (hits,) = store.search(
            "c", Modality.TEXT, normalised(1, 2), 2, model_version=V, where={"n": 1}
        )
        assert [h.id for h in hits] == ["b"]
    finally:
        store.close()


def test_a_nul_in_a_text_is_refused_alike_on_both_catalogues(tmp_path: Path, pg: PgCluster) -> None:
    """The API refuses a NUL in any string; a source file or an archive could still carry
    one in a text, which PostgreSQL cannot store: both catalogues refuse it as a value."""
    for url in (None, pg.database()):
        store = CollectionStore(tmp_path / str(bool(url)), backends=CPU, database_url=url)
        try:
            store.create_collection("c", D, V)
            bad = NewItem("a", Modality.TEXT, {}, text="a\x00b")
            with pytest.raises(InvalidValue, match="NUL"):
                store.upsert("c", [bad], normalised(1, 1), V)
            assert store.get_collection("c").counts[Modality.TEXT] == 0
        finally:
            store.close()
