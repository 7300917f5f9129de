"""Keys per collection (``XMODAL_API_KEYS_FILE``): every route of the API, taken from the
application's own route table, is tried with a read key and a write key of one
collection and an admin key, on that collection and on another, so that a route added
later is checked without editing this test; listings show only what a key opens; the
file's mistakes are refused with their reason."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from app.api.auth import Requirement
from app.api.route_table import routes
from app.service.access import ADMIN, READ, WRITE, KeyFileError, read_key_file
from tests.calls import assert_error, wait_until
from tests.helpers import AppServer

READER = "reader-key-of-open-0123456789"
WRITER = "writer-key-of-open-0123456789"
ADMIN_KEY = "admin-key-from-the-file-0123"
FULL_KEY = "full-key-from-the-env-0123456"
KEYS = {"read": (READER, READ), "write": (WRITER, WRITE), "admin": (ADMIN_KEY, ADMIN)}


def key_file(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"keys": entries}))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("scoped")
    keys = key_file(
        root / "keys.json",
        [
            {"key": READER, "collections": ["open"], "access": "read"},
            {
                "key_sha256": hashlib.sha256(WRITER.encode()).hexdigest(),
                "collections": ["open"],
                "access": "write",
            },
            {"key": ADMIN_KEY, "admin": True},
        ],
    )
    server = AppServer(root / "data", api_keys=FULL_KEY, api_keys_file=str(keys)).start()
    auth = {"Authorization": f"Bearer {FULL_KEY}"}
    jobs = {}
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as c:
            for name in ("open", "closed"):
                assert c.post("/v1/collections", json={"name": name}).status_code == 201
                items = {"items": [{"id": "t", "text": f"a text of {name}"}]}
                assert c.post(f"/v1/collections/{name}/texts", json=items).status_code == 200
                r = c.post(f"/v1/collections/{name}/jobs/duplicates", json={"threshold": 0.9})
                assert r.status_code == 202, r.text
                jobs[name] = r.json()["id"]
            for job_id in jobs.values():
                wait_until(
                    lambda j=job_id: c.get(f"/v1/jobs/{j}").json()["state"] == "succeeded",
                    what="the duplicates job",
                )
        yield {"server": server, "jobs": jobs, "file": keys}
    finally:
        server.stop()


def required_level(route: APIRoute) -> int | None:
    """The level a route needs under a keys file (``scoped_level`` where it differs)."""
    levels = [
        getattr(d.call, "scoped_level", d.call.level)
        for d in _walk(route.dependant)
        if isinstance(d.call, Requirement)
    ]
    return max(levels) if levels else None


def _walk(dependant: Any) -> list[Any]:
    out = []
    for dep in dependant.dependencies:
        out += [dep, *_walk(dep)]
    return out


def where(template: str, collection: str, jobs: dict[str, str], scratch: str) -> str:
    values = {
        "name": scratch if collection == "scratch" else collection,
        "item_id": "no-such-item",  # nothing is deleted or changed by an allowed request
        "job_id": jobs.get(collection, "no-such-job"),
        "version": "v",
        "snapshot": "no-such-snapshot.tar",
    }
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values[m.group(1)], template)


def test_every_route_with_every_kind_of_key(site: dict[str, Any]) -> None:
    server: AppServer = site["server"]
    checked = []
    table = [(path, r) for path, r in routes(server.app) if isinstance(r, APIRoute)]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for template, route in table:
            level = required_level(route)
            if level is None:
                assert not template.startswith("/v1"), f"{template} checks no key"
                continue
            names_collection = "{name}" in template or "{job_id}" in template
            clip = template in ("/knn-service", "/metadata")
            for method in sorted(route.methods):
                for kind, (key, key_level) in KEYS.items():
                    for collection in ("open", "closed"):
                        if kind == "admin" and method == "DELETE" and "{name}" in template:
                            # Allowed: done on a collection of its own, which it may lose.
                            scratch = f"scratch-{len(checked)}"
                            made = c.post(
                                "/v1/collections",
                                json={"name": scratch},
                                headers={"Authorization": f"Bearer {FULL_KEY}"},
                            )
                            assert made.status_code == 201
                            path = where(template, "scratch", site["jobs"], scratch)
                        else:
                            path = where(template, collection, site["jobs"], "")
                        body: dict[str, Any] = {"text": "x"}
                        if clip:
                            body = {"text": "x", "indice_name": collection, "ids": [1]}
                        r = c.request(
                            method, path, json=body, headers={"Authorization": f"Bearer {key}"}
                        )
                        covered = kind == "admin" or collection == "open"
                        # Cancelling a collection's job takes write on the collection.
                        job_cancel = "{job_id}" in template and method == "DELETE"
                        needed = WRITE if job_cancel else level
                        expect_refused = key_level < needed or (
                            (names_collection or clip) and not covered
                        )
                        label = f"{method} {path} with the {kind} key"
                        if expect_refused:
                            assert_error(r, 403, "forbidden")
                        else:
                            assert r.status_code not in (401, 403), f"{label}: {r.text}"
                        checked.append(label)
    assert len(checked) > 150  # every route, three keys, two collections


def test_listings_show_what_a_key_opens(site: dict[str, Any]) -> None:
    server: AppServer = site["server"]
    with httpx.Client(base_url=server.url, timeout=60) as c:

        def get(path: str, key: str) -> Any:
            r = c.get(path, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            return r.json()

        names = {c["name"] for c in get("/v1/collections", READER)["collections"]}
        assert names == {"open"}
        assert get("/indices-list", WRITER) == ["open"]
        assert {j["collection"] for j in get("/v1/jobs", READER)["jobs"]} == {"open"}
        everything = {c["name"] for c in get("/v1/collections", ADMIN_KEY)["collections"]}
        assert {"open", "closed"} <= everything
        # clip-front without an index name searches the first collection the key opens.
        r = c.post(
            "/knn-service",
            json={"text": "a text", "indice_name": "", "num_images": 5, "modality": "text"},
            headers={"Authorization": f"Bearer {READER}"},
        )
        assert r.status_code == 200 and [h.get("caption") for h in r.json()] == ["a text of open"]
        # No key: reads stay open (XMODAL_AUTH_READS is off) and see everything.
        anyone = {x["name"] for x in c.get("/v1/collections").json()["collections"]}
        assert {"open", "closed"} <= anyone
        # A key that is not configured on an open read is as if none was sent; on a write,
        # 401.
        wrong = {"Authorization": "Bearer not-a-configured-key-0000"}
        assert c.get("/v1/collections/closed", headers=wrong).status_code == 200
        r = c.post("/v1/collections/open/texts", json={"items": []}, headers=wrong)
        assert_error(r, 401, "unauthorized")


def test_the_file_is_read_again_and_a_bad_one_keeps_the_keys(site: dict[str, Any]) -> None:
    server: AppServer = site["server"]
    path: Path = site["file"]
    before = path.read_text()
    newcomer = "newcomer-key-of-closed-01234"
    try:
        key_file(path, [{"key": newcomer, "collections": ["closed"], "access": "read"}])
        assert server.app.state.keys.reload()  # what SIGHUP runs (`xmodal serve`)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            auth = {"Authorization": f"Bearer {newcomer}"}
            assert c.get("/v1/collections/closed", headers=auth).status_code == 200
            assert_error(c.get("/v1/collections/open", headers=auth), 403, "forbidden")
            r = c.get("/v1/collections/open", headers={"Authorization": f"Bearer {READER}"})
            assert r.status_code == 200  # the old key is gone: as if none was sent (open)
            path.write_text("{not json")
            assert not server.app.state.keys.reload()
            assert c.get("/v1/collections/closed", headers=auth).status_code == 200
    finally:
        path.write_text(before)
        server.app.state.keys.reload()


@pytest.mark.parametrize(
    ("entries", "says"),
    [
        ([{"key": "short", "collections": ["a"], "access": "read"}], "16 or more"),
        ([{"key": "k" * 20, "collections": ["a"], "access": "delete"}], "access"),
        ([{"key": "k" * 20, "collections": [], "access": "read"}], "collections"),
        ([{"key": "k" * 20, "key_sha256": "0" * 64, "access": "read"}], "exactly one"),
        ([{"key_sha256": "xyz", "collections": ["a"], "access": "read"}], "64 hexadecimal"),
        ([{"key": "k" * 20, "admin": True, "collections": ["a"]}], "opens everything"),
        ([{"key": "k" * 20, "collections": ["a"], "access": "read", "note": 1}], "'note'"),
        ([{"key": "k" * 20, "admin": True}, {"key": "k" * 20, "admin": True}], "twice"),
    ],
)
def test_a_bad_keys_file_is_refused_with_its_reason(
    tmp_path: Path, entries: list[dict[str, Any]], says: str
) -> None:
    with pytest.raises(KeyFileError, match=re.escape(says)):
        read_key_file(key_file(tmp_path / "keys.json", entries))
    # And the server does not start on it: one line, at once.
    from pydantic import ValidationError

    from app.service.config import Settings

    with pytest.raises(ValidationError, match=re.escape(says)):
        Settings(api_keys_file=str(tmp_path / "keys.json"))
