"""Snapshots through the API, on both vector backends: taken as a job, listed, downloaded,
restored from an upload and from the import root with the same ids and scores, refused
when damaged or of another space (unless re-encoded), deleted."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest

from index import CollectionStore, FaissBackends, Modality, NewItem
from index.archives import write_archive
from tests.calls import wait_for_job
from tests.helpers import AppServer, image_bytes, xmodal

# The same answers with the catalogue on PostgreSQL (issue 37): run against both.
pytestmark = pytest.mark.both_catalogues


def searches(client: httpx.Client, name: str) -> list[list[tuple[str, float]]]:
    out = []
    for body in (
        {"text": "a red square", "k": 10},
        {"text": "a note", "target": "text", "k": 10, "filter": {"n": {"$gte": 3}}},
    ):
        r = client.post(f"/v1/collections/{name}/search", json=body)
        assert r.status_code == 200, r.text
        out.append([(h["id"], round(h["score"], 5)) for h in r.json()["results"]])
    return out


def job(client: httpx.Client, r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 202, r.text
    return wait_for_job(client, r.json()["id"])


@pytest.mark.both_backends
def test_snapshot_download_restore_and_delete(
    client: httpx.Client, collection: str, server: AppServer, tmp_path: Path
) -> None:
    files = [
        ("files", (f"p{i}.png", image_bytes((40 * i, 20, 200 - 30 * i), seed=i), "image/png"))
        for i in range(5)
    ]
    meta = [f'{{"n": {i}}}' for i in range(5)]
    r = client.post(f"/v1/collections/{collection}/images", files=files, data={"metadata": meta})
    assert r.status_code == 200, r.text
    texts = [{"id": f"t{i}", "text": f"a note {i}", "metadata": {"n": i}} for i in range(8)]
    assert client.post(f"/v1/collections/{collection}/texts", json={"items": texts}).is_success
    expected = searches(client, collection)
    taken = job(client, client.post(f"/v1/collections/{collection}/snapshots"))
    assert taken["state"] == "succeeded", taken
    name = taken["detail"]["snapshot"]
    listed = client.get(f"/v1/collections/{collection}/snapshots").json()["snapshots"]
    assert [(s["name"], s["items"]) for s in listed] == [(name, 13)]
    archive = client.get(f"/v1/collections/{collection}/snapshots/{name}")
    assert archive.status_code == 200 and len(archive.content) == listed[0]["size"]
    # Restored from an upload: the same answers.
    restored = f"{collection}-up"[:60]
    client.delete(f"/v1/collections/{restored}")
    done = job(
        client,
        client.post(
            f"/v1/collections/{restored}/snapshots/restore",
            files={"file": ("c.tar", archive.content, "application/x-tar")},
        ),
    )
    assert done["state"] == "succeeded", done
    assert searches(client, restored) == expected
    # A name in use: 409 at once.
    r = client.post(
        f"/v1/collections/{restored}/snapshots/restore",
        files={"file": ("c.tar", archive.content, "application/x-tar")},
    )
    assert r.status_code == 409, r.text
    # From the import root.
    root = server.data_dir / "import"
    root.mkdir(exist_ok=True)
    (root / "kept.tar").write_bytes(archive.content)
    again = f"{collection}-src"[:60]
    client.delete(f"/v1/collections/{again}")
    done = job(
        client,
        client.post(f"/v1/collections/{again}/snapshots/restore", json={"source": "kept.tar"}),
    )
    assert done["state"] == "succeeded" and searches(client, again) == expected
    # Damaged: the job fails with the reason, and no collection is left.
    damaged = bytearray(archive.content)
    damaged[damaged.find(b"a note 5")] ^= 1
    bad = f"{collection}-bad"[:60]
    done = job(
        client,
        client.post(
            f"/v1/collections/{bad}/snapshots/restore",
            files={"file": ("c.tar", bytes(damaged), "application/x-tar")},
        ),
    )
    assert done["state"] == "failed" and "damaged" in done["message"], done
    assert client.get(f"/v1/collections/{bad}").status_code == 404
    # Deleted: gone from the list, 404 after.
    assert client.delete(f"/v1/collections/{collection}/snapshots/{name}").status_code == 204
    assert client.get(f"/v1/collections/{collection}/snapshots").json()["snapshots"] == []
    r = client.get(f"/v1/collections/{collection}/snapshots/{name}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "snapshot_not_found", r.text
    assert client.get(f"/v1/collections/{collection}/snapshots/..%2F..%2Fetc").status_code == 404


def test_an_archive_of_another_space_needs_reembed(
    client: httpx.Client, collection: str, tmp_path: Path
) -> None:
    store = CollectionStore(tmp_path / "other", backends=FaissBackends(use_gpu=False))
    try:
        store.create_collection("c", 64, "another-model@v3")
        import numpy as np

        xb = np.eye(64, dtype=np.float32)[:3]
        items = [NewItem(f"t{i}", Modality.TEXT, {}, text=f"a caption {i}") for i in range(2)]
        items.append(
            NewItem(
                "img", Modality.IMAGE, {}, content=image_bytes((200, 0, 0)), media_type="image/png"
            )
        )
        store.upsert("c", items, xb, "another-model@v3")
        write_archive(store, "c", tmp_path / "other.tar")
    finally:
        store.close()
    data = (tmp_path / "other.tar").read_bytes()
    target = f"{collection}-re"[:60]
    client.delete(f"/v1/collections/{target}")
    url = f"/v1/collections/{target}/snapshots/restore"
    refused = job(client, client.post(url, files={"file": ("o.tar", io.BytesIO(data))}))
    assert refused["state"] == "failed" and "reembed" in refused["message"]
    done = job(
        client,
        client.post(url, files={"file": ("o.tar", io.BytesIO(data))}, data={"reembed": "true"}),
    )
    assert done["state"] == "succeeded", done
    info = client.get(f"/v1/collections/{target}").json()
    assert info["counts"] == {"image": 1, "text": 2} and info["model"] != "another-model@v3"
    hits = client.post(
        f"/v1/collections/{target}/search", json={"text": "a caption 1", "target": "text"}
    ).json()["results"]
    assert {h["id"] for h in hits} == {"t0", "t1"}


def test_the_cli_takes_and_restores_snapshots(
    client: httpx.Client, collection: str, server: AppServer, tmp_path: Path
) -> None:
    texts = [{"id": f"t{i}", "text": f"a note {i}", "metadata": {"n": i}} for i in range(6)]
    assert client.post(f"/v1/collections/{collection}/texts", json={"items": texts}).is_success
    out = tmp_path / "c.tar"
    run = xmodal(
        "snapshot",
        "create",
        collection,
        "--out",
        str(out),
        "--server",
        server.url,
        data_dir=tmp_path / "unused",
    )
    assert run.returncode == 0, run.stderr
    assert "6 items" in run.stdout and out.stat().st_size > 0
    target = f"{collection}-cli"[:60]
    client.delete(f"/v1/collections/{target}")
    run = xmodal(
        "snapshot",
        "restore",
        str(out),
        "--collection",
        target,
        "--server",
        server.url,
        data_dir=tmp_path / "unused",
    )
    assert run.returncode == 0, run.stderr
    assert client.get(f"/v1/collections/{target}").json()["counts"]["text"] == 6
    # In process, on a data dir of its own: restore the file, then snapshot it again.
    local = tmp_path / "local"
    run = xmodal("snapshot", "restore", str(out), "--collection", "here", data_dir=local)
    assert run.returncode == 0, run.stderr
    run = xmodal("snapshot", "create", "here", data_dir=local)
    assert run.returncode == 0 and "6 items" in run.stdout, run.stderr
    assert list((local / "archives" / "here").glob("here-*.tar"))
    again = xmodal("snapshot", "restore", str(out), "--collection", "here", data_dir=local)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_partial_archives_left_by_a_killed_process_are_cleared_at_start(tmp_path: Path) -> None:
    from app.service.config import Settings
    from app.service.jobs.snapshots import Archives

    archives = Archives(Settings(data_dir=tmp_path))
    folder = archives.folder("photos")
    folder.mkdir(parents=True)
    (folder / ".photos-1.tar.0123abcd.partial").write_bytes(b"half")
    (folder / "photos-2.tar").write_bytes(b"kept")
    assert archives.clear_partials() == 1
    assert [p.name for p in folder.iterdir()] == ["photos-2.tar"]
