"""One regression test per defect class found by trying the service as a hostile user
would (see the README's Security section). Each test is named after its class."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import sqlite3
import struct
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.api.main import create_app
from app.service.activation import ACTIVATE_JOB
from app.service.config import Settings
from app.service.errors import Conflict
from app.service.finetune import FINETUNE_JOB
from app.service.jobs import INDEX_JOB
from app.service.jobs.loop import JobContext, JobQueueFull
from app.service.jobs.reindex import REINDEX_JOB
from app.service.stack import Stack, build_stack
from index import DB_FILE, JobNotCancellable, JobState, Modality, NewItem
from models.adapt.methods import TrainingStopped
from models.adapt.pairs import load_pairs
from models.feature_map import FeatureMap
from models.registry import ModelVersion
from models.sources import FileRef, resolve_under
from models.synthetic import write_dataset
from tests.calls import assert_error, run_job, wait_for_job
from tests.corpus import good_image, noise_png, write_jsonl, write_many
from tests.helpers import TINY, AppServer

# --- 1. a collection's FAISS factory string is trusted -------------------------------------------
BAD_SPECS = {
    "faiss": ["HNSW1", "IVF100000000,Flat", "IVF4", "PQ8x2", "LSH", "IDMap2,Flat", "Flat" * 60],
    "milvus": [
        "HNSW:M=1",
        "IVF_FLAT:nlist=100000000",
        "IVF_PQ:m=7",  # does not divide the dimension
        "HNSW:M=16,M=16",
        "FLAT:nlist=4",
        "HNSW:M=-4",
        "SCANN",
        "GPU_CAGRA",  # Milvus Lite has no GPUs
        "IVF_PQ",  # nor product quantisation
        'FLAT" or true',
        "FLAT" * 60,
    ],
}


@pytest.mark.both_backends
@pytest.mark.parametrize("n", range(len(BAD_SPECS["milvus"])))
def test_untrusted_index_spec_is_refused_with_400(
    client: httpx.Client, backend: str, n: int
) -> None:
    specs = BAD_SPECS[backend]
    spec = specs[n % len(specs)]
    r = client.post("/v1/collections", json={"name": "spec-check", "index": spec})
    assert r.status_code in (400, 422), (spec, r.text)
    assert client.get("/v1/collections/spec-check").status_code == 404


def test_untrusted_index_spec_stored_earlier_does_not_stop_start_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = AppServer(data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/v1/collections", json={"name": "good"}).status_code == 201
            r = c.post("/v1/collections/good/texts", json={"items": [{"id": "a", "text": "hi"}]})
            assert r.status_code == 200
    finally:
        server.stop()
    # Written by an older version, before specs were checked: HNSW1 used to crash FAISS
    # on its first add, and again on every start while the index was rebuilt.
    with sqlite3.connect(data / DB_FILE) as conn:
        dim, version = conn.execute("SELECT dim, model_version FROM collections").fetchone()
        for name, spec in (("h", "HNSW1"), ("huge", "IVF100000000,Flat")):
            conn.execute(
                "INSERT INTO collections (name, uid, index_spec, dim, model_version, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, name * 4, spec, dim, version, time.time()),
            )
    server = AppServer(data).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            listed = {x["name"]: x for x in c.get("/v1/collections").json()["collections"]}
            assert set(listed) == {"good", "h", "huge"}
            assert listed["good"]["error"] is None and listed["good"]["counts"]["text"] == 1
            assert "HNSW1" in listed["h"]["error"]
            assert c.get("/v1/collections/h").json()["error"] == listed["h"]["error"]
            for r in (
                c.post("/v1/collections/h/search", json={"text": "hi"}),
                c.post("/v1/collections/h/texts", json={"items": [{"id": "a", "text": "x"}]}),
                c.get("/v1/collections/h/items/a"),
                c.post("/v1/collections/huge/jobs/index", json={"source": "x.jsonl"}),
            ):
                assert_error(r, 409, "collection_broken")
            assert c.post(
                "/v1/collections/good/search", json={"text": "hi", "target": "text"}
            ).json()["results"]
            assert_error(c.post("/v1/collections", json={"name": "h"}), 409, "collection_exists")
            assert c.delete("/v1/collections/h").status_code == 204
            assert c.post("/v1/collections", json={"name": "h"}).status_code == 201
            assert c.get("/v1/collections/h").json()["error"] is None
    finally:
        server.stop()


# --- 2. file reads that escape the import root ----------------------------------------------------
def test_file_reads_that_escape_the_import_root_are_refused(
    server: AppServer, client: httpx.Client, collection: str, tmp_path: Path
) -> None:
    root = server.data_dir / "import"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret_shard = outside / "secret.tar"
    with tarfile.open(secret_shard, "w") as tar:
        for member, payload in (("s0.jpg", good_image(7)), ("s0.txt", b"secret caption")):
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    (outside / "secret.png").write_bytes(good_image(8))
    (outside / "secret.txt").write_text("secret caption")
    shards = root / f"{collection}-shards"
    shards.mkdir()
    (shards / "a-link.tar").symlink_to(secret_shard)
    folder = root / f"{collection}-folder"
    folder.mkdir()
    (folder / "own.png").write_bytes(good_image(9))
    (folder / "own.txt").symlink_to(outside / "secret.txt")
    (folder / "linked.png").symlink_to(outside / "secret.png")
    (root / f"{collection}.jsonl").write_text(
        json.dumps({"id": "m1", "image": f"{collection}-folder/linked.png"})
        + "\n"
        + json.dumps({"id": "m2", "image": "../../outside/secret.png"})
        + "\n"
    )
    for source, fmt in (
        (f"{collection}-shards", "webdataset"),
        (f"{collection}-folder", "folder"),
        (f"{collection}.jsonl", None),
    ):
        job = run_job(client, collection, source, fmt)
        assert job["state"] == "succeeded", job
        assert job["failed"] >= 1, job
        # The reasons name the records, never where the server keeps its files.
        assert str(tmp_path) not in json.dumps(job) and str(root) not in json.dumps(job), job
    for source in ("../../etc", "no-such-source.jsonl", f"{collection}-folder/own.png"):
        r = client.post(f"/v1/collections/{collection}/jobs/index", json={"source": source})
        assert r.status_code in (400, 404) and str(root.resolve()) not in r.text, r.text
    counts = client.get(f"/v1/collections/{collection}").json()["counts"]
    assert counts == {"image": 1, "text": 0}  # own.png alone; its caption is a link out
    r = client.post(
        f"/v1/collections/{collection}/search",
        json={"text": "secret caption", "target": "text"},
    )
    assert r.json()["results"] == []


def test_file_swapped_for_a_link_after_the_check_is_refused_when_opened(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.png").write_bytes(b"inside")
    (outside / "a.png").write_bytes(b"outside")
    ref = FileRef(str(resolve_under(root, "sub/a.png")), str(root))
    assert ref.read(100) == b"inside"
    (root / "sub" / "a.png").unlink()  # the last component swapped for a link
    (root / "sub" / "a.png").symlink_to(outside / "a.png")
    with pytest.raises(OSError):
        ref.read(100)
    (root / "sub" / "a.png").unlink()  # a directory on the way swapped for a link
    (root / "sub").rmdir()
    (root / "sub").symlink_to(outside)
    with pytest.raises(OSError, match="outside the import root"):
        ref.read(100)
    os.mkfifo(root / "fifo.png")  # would block a plain open forever
    with pytest.raises(OSError, match="not a regular file"):
        FileRef(str(root / "fifo.png"), str(root)).read(100)


# --- 3. values JSON allows but the store cannot use -----------------------------------------------
def test_values_json_allows_but_the_store_cannot_use_get_4xx(
    client: httpx.Client, collection: str
) -> None:
    c = collection
    ok = client.post(
        f"/v1/collections/{c}/texts",
        json={"items": [{"id": "keep", "text": "kept", "metadata": {"score": 1.5}}]},
    )
    assert ok.status_code == 200
    headers = {"content-type": "application/json"}
    raw_bodies = [
        b'{"items": [{"id": "n", "text": "t", "metadata": {"score": NaN}}]}',
        b'{"items": [{"id": "n", "text": "t", "metadata": {"score": Infinity}}]}',
        b'{"items": [{"id": "n", "text": "t", "metadata": {"score": -Infinity}}]}',
        b'{"items": [{"id": "n", "text": "t", "metadata": {"score": 1e999}}]}',
        b'{"items": [{"id": "n", "text": "t", "metadata": {"big": 99999999999999999999999}}]}',
        b'{"items": [{"id": "n", "text": "t", "metadata": {"k": "\\ud800"}}]}',
        b'{"items": [{"id": "n", "text": "t", "metadata": {"\\udfff": 1}}]}',
        b'{"items": [{"id": "n", "text": "\\ud800 lone"}]}',
        b'{"items": [{"id": "\\ud800", "text": "t"}]}',
        b'{"items": [{"id": "a\\nb", "text": "t"}]}',
        b'{"items": [{"id": "n", "text": "t", "metadata": {"k": "a\\u0000b"}}]}',
        b'{"items": [{"id": "n", "text": "t", "metadata": {"k": ["x", {"y": "\\u0000"}]}}]}',
        *(
            b'{"items": [{"id": "%s", "text": "t"}]}' % bad
            for bad in (b"x/image", b"a/b/thumbnail", b"/image", b"..", b"a/../b", b"./a")
        ),
        b'{"items": [{"id": "n", "text": "t", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
        b'{"items": [{"id": "n", "text": "t", "metadata": {"a": ' + b"[" * 40 + b"]" * 40 + b"}}]}",
        b'{"items": [{"id": "n", "text": "t"}]}\xff\xfe',
    ]
    for body in raw_bodies:
        r = client.post(f"/v1/collections/{c}/texts", content=body, headers=headers)
        assert r.status_code in (400, 422), (body[:80], r.status_code, r.text)
        assert set(r.json()) == {"error"}
    searches = [
        b'{"text": "x", "target": "text", "filter": {"score": NaN}}',
        b'{"text": "x", "target": "text", "filter": {"n": 99999999999999999999}}',
        b'{"text": "x", "target": "text", "filter": {"\\ud800": 1}}',
        b'{"text": "x", "target": "text", "filter": {"a\\u0000b": 1}}',
        b'{"text": "x", "target": "text", "filter": {"k": "a\\u0000b"}}',
        b'{"text": "\\udc00", "target": "text"}',
    ]
    for body in searches:
        r = client.post(f"/v1/collections/{c}/search", content=body, headers=headers)
        assert r.status_code in (400, 422), (body, r.status_code, r.text)
    for form_metadata in ('{"score": NaN}', '{"a": "\\ud800"}', "[" * 5000):
        r = client.post(
            f"/v1/collections/{c}/images",
            files=[("files", ("a.png", good_image(1)))],
            data={"metadata": [form_metadata]},
        )
        # To the schema a form field is any string: what is wrong inside it is a 400.
        assert_error(r, 400, "invalid_metadata")
    for source in ("a\x00b.jsonl", "x" * 5000, "a/" + "y" * 300 + "/b.jsonl", "\ud800.jsonl"):
        r = client.post(
            f"/v1/collections/{c}/jobs/index",
            content=json.dumps({"source": source}).encode(),
            headers=headers,
        )
        assert r.status_code in (400, 422), (source[:20], r.text)
    # Nothing was stored, and filtered searches still work on the collection.
    assert client.get(f"/v1/collections/{c}").json()["counts"] == {"image": 0, "text": 1}
    for where in ({"score": 1.5}, {'quo"te': 1}, {"back\\slash": None}):
        r = client.post(
            f"/v1/collections/{c}/search", json={"text": "x", "target": "text", "filter": where}
        )
        assert r.status_code == 200, r.text
    assert [h["id"] for h in r.json()["results"]] == []
    r = client.post(
        f"/v1/collections/{c}/search",
        json={"text": "x", "target": "text", "filter": {"score": 1.5}},
    )
    assert [h["id"] for h in r.json()["results"]] == ["keep"]


def test_metadata_keys_with_quotes_can_be_filtered(client: httpx.Client, collection: str) -> None:
    items = [
        {"id": "q", "text": "quoted", "metadata": {'say "hi"': "yes", "a\\b": 2}},
        {"id": "p", "text": "plain", "metadata": {"x": 1}},
    ]
    assert client.post(f"/v1/collections/{collection}/texts", json={"items": items}).is_success
    for where, want in (({'say "hi"': "yes"}, ["q"]), ({"a\\b": 2}, ["q"]), ({"x": 1}, ["p"])):
        r = client.post(
            f"/v1/collections/{collection}/search",
            json={"text": "x", "target": "text", "filter": where},
        )
        assert [h["id"] for h in r.json()["results"]] == want, where


# --- 4. images that are not mapped to 415 ---------------------------------------------------------
def _tiff_with_text_strip_offsets() -> bytes:
    """A TIFF whose strip offsets claim to be text: PIL then finds no dimensions."""
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (n,) = struct.unpack_from("<H", data, ifd)
    for i in range(n):
        entry = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, entry)[0] == 273:  # StripOffsets
            struct.pack_into("<H", data, entry + 2, 2)  # type: ASCII
    return bytes(data)


def _gif_with_its_last_byte_changed(last: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="GIF")
    return buf.getvalue()[:-1] + bytes([last])  # the trailer, now an extension or an image


def test_images_that_are_not_mapped_to_415_are(client: httpx.Client, collection: str) -> None:
    for name, data in (
        ("strips.tif", _tiff_with_text_strip_offsets()),
        ("extension.gif", _gif_with_its_last_byte_changed(0x21)),
        ("descriptor.gif", _gif_with_its_last_byte_changed(0x2C)),
    ):
        for r in (
            client.post(f"/v1/collections/{collection}/images", files=[("files", (name, data))]),
            client.post(f"/v1/collections/{collection}/search/image", files={"file": (name, data)}),
            client.post("/v1/embed", json={"images_base64": [base64.b64encode(data).decode()]}),
        ):
            body = assert_error(r, 415, "unsupported_media_type")
            assert name in body["error"]["message"] or "images_base64" in body["error"]["message"]


# --- 5. slow clients lock everyone out ------------------------------------------------------------
def _status(sock: socket.socket, timeout: float) -> int | None:
    """The status of the answer on ``sock``, or None if none came within ``timeout``."""
    sock.settimeout(timeout)
    try:
        reply = sock.recv(4096)
    except (TimeoutError, BlockingIOError):
        return None
    except ConnectionResetError:
        return -1
    return int(reply.split(b" ", 2)[1]) if reply else -1


def test_slow_clients_do_not_lock_everyone_out(tmp_path: Path) -> None:
    server = AppServer(
        tmp_path / "data", max_concurrent_requests=2, max_requests_per_client=3, body_timeout_s=2
    ).start()
    slow: list[socket.socket] = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/v1/collections", json={"name": "s"}).status_code == 201
            started = time.monotonic()
            for _ in range(5):  # from another address: a byte of the body now and then
                sock = socket.create_connection(
                    ("127.0.0.1", server.port), source_address=("127.0.0.2", 0)
                )
                sock.sendall(
                    b"POST /v1/collections/s/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{"
                )
                slow.append(sock)
            early = [_status(sock, 0.3) for sock in slow]
            assert early[:3] == [None, None, None] and early[3:] == [429, 429], early
            for i in range(8):  # ordinary clients are served meanwhile, not refused
                for sock in slow[:3]:
                    sock.sendall(b" ")
                r = c.post("/v1/collections/s/search", json={"text": f"query {i}"})
                assert r.status_code == 200, r.text
                assert c.get("/readyz").status_code == 200
            late = [_status(sock, 5.0) for sock in slow[:3]]
            assert late == [408, 408, 408], late
            assert time.monotonic() - started < 6
            assert c.post("/v1/collections/s/search", json={"text": "after"}).status_code == 200
    finally:
        for sock in slow:
            sock.close()
        server.stop()


# --- 6. unbounded metric labels -------------------------------------------------------------------
WEBDAV = ("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "PURGE", "REPORT")


def test_unbounded_metric_labels_come_from_fixed_sets(client: httpx.Client) -> None:
    client.get("/v1/collections")  # every label set that ordinary traffic makes, first
    client.get("/no/such/path")
    before = client.get("/metrics").text
    for i in range(300):
        # Methods no parser knows (httptools refuses them before the app), and ones it
        # knows that the app does not route (WebDAV's): neither becomes a label.
        client.request(f"JUNK{i}", f"/v1/collections/x{i}/items/{i}")
        client.request(WEBDAV[i % len(WEBDAV)], f"/v1/collections/x{i}/items/{i}")
        client.get(f"/random/{i}/path")
    after = client.get("/metrics").text
    assert "JUNK" not in after and "/random/" not in after and "x17" not in after
    assert not any(f'method="{m}"' in after for m in WEBDAV)
    assert 'method="other"' in after
    assert len(after) < len(before) + 5_000  # a few new series, not 600


# --- 7. memory taken before limits apply ----------------------------------------------------------
def test_memory_is_not_taken_before_limits_apply(client: httpx.Client, collection: str) -> None:
    # 200,000 tiny texts in a body under the byte limit: refused before it is parsed.
    body = b'{"texts": [' + b'"a",' * 199_999 + b'"a"]}'
    r = client.post("/v1/embed", content=body, headers={"content-type": "application/json"})
    assert "JSON values" in assert_error(r, 413)["error"]["message"]
    # Long texts full of commas are not mistaken for many values.
    text = "a, b: c, " * 200
    r = client.post("/v1/embed", json={"texts": [text] * 16})
    assert r.status_code == 200, r.text


def test_training_images_are_kept_at_the_size_the_model_needs(tmp_path: Path) -> None:
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (1200 + i, 900), (i * 40, 90, 200)).save(folder / f"p{i}.png")
        (folder / f"p{i}.txt").write_text(f"picture {i}")
    pairs = load_pairs(tmp_path, "pairs", 50_000_000, 50_000_000, side=64)
    assert len(pairs) == 3 and all(min(im.size) == 64 for im in pairs.images)
    assert all(max(im.size) in (85, 86) for im in pairs.images)  # the aspect is kept
    assert all(
        min(im.size) == 900 for im in load_pairs(tmp_path, "pairs", 50_000_000, 50_000_000).images
    )


def test_image_decoding_queue_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.service.engine.MAX_QUEUE", 8)
    server = AppServer(
        tmp_path / "data",
        max_files_per_request=8,
        max_texts_per_request=8,
        decode_workers=1,
    ).start()
    try:
        files = [("files", (f"{i}.png", noise_png(400, i))) for i in range(8)]
        assert httpx.post(server.url + "/v1/collections", json={"name": "q"}).status_code == 201

        def one(i: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=60) as c:
                return c.post("/v1/collections/q/images", files=files)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(one, range(6)))
        codes = sorted(r.status_code for r in answers)
        assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
        refused = next(r for r in answers if r.status_code == 429)
        assert "decoding queue is full" in refused.json()["error"]["message"]
    finally:
        server.stop()


def test_queued_jobs_are_bounded(tmp_path: Path) -> None:
    settings = Settings(**{**TINY, "data_dir": tmp_path / "data", "max_queued_jobs": 2})
    stack = build_stack(settings)  # the job loop is not started: submitted jobs stay queued
    try:
        stack.store.create_collection("c", stack.engine.dim, stack.engine.version)
        settings.import_root_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(settings.import_root_dir, "m", 2)
        for _ in range(2):
            stack.jobs.submit(INDEX_JOB, "c", {"source": "m.jsonl"})
        with pytest.raises(JobQueueFull):
            stack.jobs.submit(INDEX_JOB, "c", {"source": "m.jsonl"})
        assert len(stack.jobs.jobs.unfinished()) == 2
    finally:
        stack.close()


# --- 8. races around activation and deletion ------------------------------------------------------
def _identity_version(stack: Stack) -> str:
    """A linear version over the serving model that maps every vector to itself."""
    d, base = stack.engine.dim, stack.engine.version
    version = ModelVersion(
        version="xmodal-tiny@linear-identity",
        architecture="xmodal-tiny",
        base=base,
        method="linear",
        artifact="map.npz",
        metrics={},
    )
    eye, zero = np.eye(d, dtype=np.float32), np.zeros(d, np.float32)
    stack.registry.save(version, FeatureMap(eye, eye, zero, zero).save)
    return version.version


def test_races_around_activation_cancel_means_cancelled(tmp_path: Path) -> None:
    stack = build_stack(Settings(**{**TINY, "data_dir": tmp_path / "data"}))
    try:
        base = stack.engine.version
        stack.store.create_collection("g", stack.engine.dim, base)
        texts = ["a red circle", "a blue square"]
        vectors = stack.engine.encoder.encode_texts(texts)
        items = [NewItem(f"t{i}", Modality.TEXT, {}, text=t) for i, t in enumerate(texts)]
        stack.store.upsert("g", items, vectors, base)
        target = _identity_version(stack)
        jobs = stack.jobs.jobs
        # The gate is the runner's: a version that did not beat its base needs force.
        with pytest.raises(Conflict, match="did not beat its base"):
            stack.jobs.submit(ACTIVATE_JOB, None, {"version": target})
        forced = {"version": target, "force": True}
        # A cancel that lands after the last look at it, before the switch: nothing switches.
        job = stack.jobs.submit(ACTIVATE_JOB, None, forced)
        assert jobs.start(job.id)
        assert jobs.cancel(job.id).state is JobState.CANCELLED
        with pytest.raises(TrainingStopped):
            stack.activator.run(jobs.get(job.id), lambda: False)
        assert stack.engine.version == base
        assert [c.model_version for c in stack.store.list_collections()] == [base]
        assert sorted(stack.store.collections) == ["g"]  # no copy left behind
        # Past the point of no return, a cancel is refused rather than answered falsely.
        job = stack.jobs.submit(ACTIVATE_JOB, None, forced)
        assert jobs.start(job.id)
        assert jobs.pass_point_of_no_return(job.id, {"phase": "switching"})
        with pytest.raises(JobNotCancellable):
            jobs.cancel(job.id)
        stack.activator.run(jobs.get(job.id), lambda: False)
        assert stack.engine.version == target
    finally:
        stack.close()


def test_races_around_finetune_and_reindex_cancel_means_cancelled(tmp_path: Path) -> None:
    """A cancel answered after a job's last look at it, before it saves a version or
    switches an index, still stops it: nothing is saved or switched."""
    data = tmp_path / "data"
    write_dataset(data / "import", "train", 48, seed=0, side=32)
    stack = build_stack(Settings(**{**TINY, "data_dir": data}))
    try:
        jobs = stack.jobs.jobs
        params = {"source": "train.jsonl", "method": "cca", "hyperparameters": {"dims": 8}}
        job = stack.jobs.submit(FINETUNE_JOB, None, params)
        assert jobs.start(job.id)
        assert jobs.cancel(job.id).state is JobState.CANCELLED
        with pytest.raises(TrainingStopped):
            stack.finetuner.run(jobs.get(job.id), stack.engine.encoder, lambda: False)
        assert stack.registry.versions() == []
        # The same job not cancelled saves its version (the check above could fail).
        job = stack.jobs.submit(FINETUNE_JOB, None, params)
        assert jobs.start(job.id)
        saved = stack.finetuner.run(jobs.get(job.id), stack.engine.encoder, lambda: False)
        assert [v.version for v in stack.registry.versions()] == [saved.version]

        stack.store.create_collection("g", stack.engine.dim, stack.engine.version)
        vectors = stack.engine.encoder.encode_texts(["a red circle", "a blue square"])
        items = [NewItem(f"t{i}", Modality.TEXT, {}, text=str(i)) for i in range(2)]
        stack.store.upsert("g", items, vectors, stack.engine.version)
        job = stack.jobs.submit(REINDEX_JOB, "g", {"index": "SQfp16"})
        assert jobs.start(job.id)
        assert jobs.cancel(job.id).state is JobState.CANCELLED
        stack.jobs.runners[REINDEX_JOB].run(JobContext(jobs.get(job.id), jobs, lambda: False))
        assert stack.store.get("g").spec == "Flat"
        job = stack.jobs.submit(REINDEX_JOB, "g", {"index": "SQfp16"})
        assert jobs.start(job.id)
        stack.jobs.runners[REINDEX_JOB].run(JobContext(jobs.get(job.id), jobs, lambda: False))
        assert stack.store.get("g").spec == "SQfp16"
    finally:
        stack.close()


def test_races_around_deletion_stop_the_job_and_leave_no_files(tmp_path: Path) -> None:
    server = AppServer(tmp_path / "data", import_chunk_size=16).start()
    root = server.data_dir / "import"
    write_many(root, "many", 800)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            _deleted_mid_job(server, client)
    finally:
        server.stop()


def _deleted_mid_job(server: AppServer, client: httpx.Client) -> None:
    assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
    r = client.post("/v1/collections/c/jobs/index", json={"source": "many"})
    job_id = r.json()["id"]
    while client.get(f"/v1/jobs/{job_id}").json()["done"] < 16:
        time.sleep(0.01)
    assert client.delete("/v1/collections/c").status_code == 204
    assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
    job = wait_for_job(client, job_id)
    assert job["state"] == "cancelled" and "deleted" in job["message"], job
    assert job["done"] < 800
    time.sleep(1.0)  # what the job had in flight lands nowhere
    assert client.get("/v1/collections/c").json()["counts"] == {"image": 0, "text": 0}
    # Thumbnails of deleted items go at once; the images the job decoded for chunks it
    # never committed are swept.
    r = client.post(
        "/v1/collections/c/images", files=[("files", ("a.png", good_image(5)))], data={"ids": ["a"]}
    )
    assert r.status_code == 200
    assert client.get("/v1/collections/c/items/a/thumbnail?size=64").is_success
    services = server.app.state.services
    thumbs = services.thumbnails.root
    assert len(list(thumbs.glob("*/??/*.jpg"))) == 1
    assert client.delete("/v1/collections/c/items/a").status_code == 204
    assert not list(thumbs.glob("*/??/*.jpg"))
    blobs = server.data_dir / "blobs"
    assert list(blobs.glob("??/??/*"))  # decoded, never committed
    services.sweep(grace_s=0)
    assert not list(blobs.glob("??/??/*"))


# --- 9. one bad record fails a whole batch job ----------------------------------------------------
def test_one_bad_record_fails_the_record_not_the_job(
    server: AppServer, client: httpx.Client, collection: str
) -> None:
    root = server.data_dir / "import"
    base = root / collection
    base.mkdir()
    (base / "good.png").write_bytes(good_image(3))
    (base / "bad.png").write_bytes(b"not an image")
    rows = [
        {"id": "nul", "image": "a\x00b.png"},
        {"id": "long-path", "image": "z" * 300 + ".png"},
        {"id": "good", "image": f"{collection}/good.png", "text": "a good caption"},
        {"id": "bad", "image": f"{collection}/bad.png", "text": "caption of a refused image"},
        {"id": "nan", "text": "fine text", "score": float("nan")},
        {"id": "huge-caption", "text": "w" * 3000},  # the server's XMODAL_MAX_TEXT_CHARS: 2000
        {"id": "ok-text", "text": "an ordinary text"},
    ]
    (root / f"{collection}.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows) + "\n"  # json writes NaN as NaN
    )
    job = run_job(client, collection, f"{collection}.jsonl")
    assert job["state"] == "succeeded", job
    failed = {e["item"] for e in job["errors"]}
    assert failed == {"nul", "long-path", "bad", "bad#text", "nan", "huge-caption"}, job
    assert job["done"] == 3  # good, good#text, ok-text
    with (root / f"{collection}.csv").open("w") as f:
        f.write("id,text\nbig," + "v" * 200_000 + "\nsmall,a small text\n")
    job = run_job(client, collection, f"{collection}.csv")
    assert job["state"] == "succeeded" and job["failed"] == 1, job
    r = client.get(f"/v1/collections/{collection}/items/small")
    assert r.status_code == 200


# --- 10. the API description does not tell the truth ----------------------------------------------
def _schema(tmp_path: Path, **settings: object) -> dict:
    return create_app(Settings(**{**TINY, "data_dir": tmp_path, **settings})).openapi()


def _operations(schema: dict) -> Iterator[tuple[str, dict]]:
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            yield f"{method.upper()} {path}", op


def test_the_api_description_tells_the_truth(tmp_path: Path, client: httpx.Client) -> None:
    open_schema = _schema(tmp_path)
    assert "securitySchemes" not in open_schema["components"]
    assert "HTTPValidationError" not in json.dumps(open_schema)
    for label, op in _operations(open_schema):
        assert "security" not in op, label
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (label, status)
        if op.get("requestBody") or op.get("parameters"):
            assert "422" in op["responses"], label
    ops = dict(_operations(open_schema))
    image = ops["GET /v1/collections/{name}/items/{item_id}/image"]["responses"]["200"]
    assert list(image["content"]) == ["image/*"]
    thumbnail = ops["GET /v1/collections/{name}/items/{item_id}/thumbnail"]["responses"]
    assert list(thumbnail["200"]["content"]) == ["image/jpeg"] and "304" in thumbnail
    k = open_schema["components"]["schemas"]["SearchRequest"]["properties"]["k"]
    assert (k["minimum"], k["maximum"]) == (1, 1000)
    # Security as configured: keys for writes only, then for reads as well.
    for auth_reads in (False, True):
        keyed = dict(
            _operations(_schema(tmp_path, api_keys="a-key-of-sixteen-chars", auth_reads=auth_reads))
        )
        for label in ("POST /v1/collections", "DELETE /v1/jobs/{job_id}", "POST /v1/evaluate"):
            assert keyed[label]["security"] and "401" in keyed[label]["responses"], label
        for label in ("GET /v1/collections", "POST /v1/collections/{name}/search"):
            assert ("security" in keyed[label]) is auth_reads, label
            assert ("401" in keyed[label]["responses"]) is auth_reads, label
        assert "security" not in keyed["GET /healthz"]
    # Every version GET /v1/models lists can be fetched on its own.
    for model in client.get("/v1/models").json()["models"]:
        assert client.get(f"/v1/models/{model['version']}").status_code == 200, model
    # A 405 names every method the path takes.
    assert client.post("/v1/collections", json={"name": "allow"}).status_code == 201
    for method, path, allow in (
        ("PUT", "/v1/collections/allow", "DELETE, GET"),
        ("PATCH", "/v1/collections", "GET, POST"),
        ("PUT", "/v1/collections/allow/items/x", "DELETE, GET"),
        ("POST", "/v1/jobs/x", "DELETE, GET"),
    ):
        r = client.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allow, (method, path, r.headers)
