"""Collections stay apart for keys scoped to one of them: a write key of ``a`` indexes
sources under ``<import root>/a/`` only (never ``b``'s private texts), lexical search on
``a`` says nothing of ``b``'s words, snapshots go with their collection, within a quota,
and ``/metrics`` (every collection's counts) answers administrators only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.calls import wait_for_job
from tests.helpers import AppServer

WRITER = "writer-of-a-0123456789abcdef"
READER = "reader-of-a-0123456789abcdef"
ADMIN = "admin-of-all-0123456789abcd"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("apart")
    keys = root / "keys.json"
    entries = [
        {"key": WRITER, "collections": ["a"], "access": "write"},
        {"key": READER, "collections": ["a"], "access": "read"},
        {"key": ADMIN, "admin": True},
    ]
    keys.write_text(json.dumps({"keys": entries}))
    imports = root / "import"
    for folder, word in (("a", "public"), ("b", "secret")):
        (imports / folder).mkdir(parents=True)
        lines = [json.dumps({"id": f"{folder}{i}", "text": f"a {word} note {i}"}) for i in range(3)]
        (imports / folder / "notes.jsonl").write_text("\n".join(lines) + "\n")
    (imports / "top.jsonl").write_text(json.dumps({"id": "top", "text": "top secret"}) + "\n")
    with pytest.MonkeyPatch.context() as patch:  # a collection keeps two snapshots here
        patch.setattr("app.service.jobs.snapshots.SNAPSHOTS_PER_COLLECTION", 2)
        server = AppServer(root / "data", api_keys_file=str(keys), import_root=str(imports))
        server.start()
    clients = {
        name: httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        for name, key in (("writer", WRITER), ("reader", READER), ("admin", ADMIN))
    }
    try:
        for name in ("a", "b"):
            assert clients["admin"].post("/v1/collections", json={"name": name}).is_success
        yield {"server": server, **clients}
    finally:
        for c in clients.values():
            c.close()
        server.stop()


def index(client: httpx.Client, collection: str, source: str) -> httpx.Response:
    return client.post(f"/v1/collections/{collection}/jobs/index", json={"source": source})


def test_a_write_key_indexes_its_own_folder_of_the_import_root_only(
    site: dict[str, Any],
) -> None:
    writer, admin = site["writer"], site["admin"]
    for source in ("../b/notes.jsonl", "b/notes.jsonl", "../top.jsonl", "/etc/passwd"):
        r = index(writer, "a", source)
        assert r.status_code == 400, (source, r.text)
    r = index(writer, "a", "notes.jsonl")
    done = wait_for_job(writer, r.json()["id"])
    assert done["state"] == "succeeded", done
    assert "/" not in json.dumps(done["params"]["source"])
    hits = writer.post("/v1/collections/a/search", json={"text": "note", "target": "text"})
    assert {h["id"] for h in hits.json()["results"]} == {"a0", "a1", "a2"}
    # An administrator names any source under the root, as before.
    done = wait_for_job(admin, index(admin, "b", "b/notes.jsonl").json()["id"])
    assert done["state"] == "succeeded", done


def test_lexical_search_on_one_collection_says_nothing_of_the_other(
    site: dict[str, Any],
) -> None:
    reader, admin = site["reader"], site["admin"]
    texts = {"items": [{"id": f"x{i}", "text": f"secret plan {i}"} for i in range(12)]}
    body = {"text": "secret note", "target": "text", "mode": "lexical", "k": 5}
    before = reader.post("/v1/collections/a/search", json=body).json()["results"]
    assert admin.post("/v1/collections/b/texts", json=texts).is_success
    after = reader.post("/v1/collections/a/search", json=body).json()["results"]
    assert [(h["id"], h["score"]) for h in after] == [(h["id"], h["score"]) for h in before]
    assert all(h["id"].startswith("a") for h in after)


def test_snapshots_stay_with_their_collection_within_a_quota(site: dict[str, Any]) -> None:
    writer, admin, reader = site["writer"], site["admin"], site["reader"]
    assert writer.post("/v1/collections/b/snapshots").status_code == 403
    assert reader.get("/v1/collections/b/snapshots").status_code == 403
    for _ in range(2):
        r = writer.post("/v1/collections/a/snapshots")
        assert wait_for_job(writer, r.json()["id"])["state"] == "succeeded"
    r = writer.post("/v1/collections/a/snapshots")
    assert r.status_code == 409 and r.json()["error"]["code"] == "snapshot_quota", r.text
    assert "2 snapshots" in r.json()["error"]["message"]
    # Deleted with the collection: the name's next owner starts with none.
    assert admin.delete("/v1/collections/a").status_code == 204
    assert admin.post("/v1/collections", json={"name": "a"}).status_code == 201
    assert reader.get("/v1/collections/a/snapshots").json()["snapshots"] == []
    assert not list((site["server"].data_dir / "archives").glob("a/*.tar"))


def test_metrics_answer_administrators_only_under_a_keys_file(site: dict[str, Any]) -> None:
    server = site["server"]
    assert site["reader"].get("/metrics").status_code == 403
    assert site["writer"].get("/metrics").status_code == 403
    assert httpx.get(server.url + "/metrics").status_code == 401
    r = site["admin"].get("/metrics")
    assert r.status_code == 200 and "xmodal" in r.text
    assert httpx.get(server.url + "/healthz").status_code == 200
