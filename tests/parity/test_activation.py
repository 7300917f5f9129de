"""Switching the served model: re-embedding, the switch under load, rollback, failures."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from index import MilvusBackends, Modality
from index.vectors.dumps import backend_key
from index.vectors.milvus_backend import collection_name
from models.adapt.pairs import load_pairs
from models.encoder import load_encoder
from models.evaluate import retrieval_metrics
from models.feature_map import FeatureMap
from models.registry import ModelRegistry, ModelVersion, mean_recall
from models.stored import encode_image_files
from models.student import STUDENT_FILE, Student
from models.synthetic import write_dataset
from tests.calls import wait_for_job
from tests.helpers import BACKENDS, AppServer

BASE = "xmodal-tiny@random-seed0"
QUERIES = [
    "a small red circle at the center on a white background",
    "a large blue square at the top left on a black background",
    "a small green cross at the bottom right on a grey background",
]


def answers(c: httpx.Client, name: str) -> list[list[tuple[str, float]]]:
    out = []
    for q in QUERIES:
        r = c.post(f"/v1/collections/{name}/search", json={"text": q, "k": 5})
        assert r.status_code == 200, r.text
        out.append([(h["id"], round(h["score"], 4)) for h in r.json()["results"]])
    return out


def finetune(c: httpx.Client, method: str, **hyper: Any) -> str:
    r = c.post(
        "/v1/finetune", json={"source": "train.jsonl", "method": method, "hyperparameters": hyper}
    )
    job = wait_for_job(c, r.json()["id"], timeout=300)
    assert job["state"] == "succeeded", job
    return str(job["detail"]["version"])


def activate(c: httpx.Client, version: str, **body: Any) -> dict[str, Any]:
    r = c.post(f"/v1/models/{version}/activate", json=body)
    assert r.status_code == 202, r.text
    return wait_for_job(c, r.json()["id"], timeout=300)


# Each vector backend on SQLite, and FAISS with the catalogue on PostgreSQL.
LABS = [(b, "sqlite") for b in BACKENDS] + [("faiss", "postgres")]


@pytest.fixture(
    scope="module", params=LABS, ids=[b if c == "sqlite" else f"{b}-{c}" for b, c in LABS]
)
def lab(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[AppServer, httpx.Client]]:
    backend, catalogue = request.param
    data = tmp_path_factory.mktemp("activation") / "data"
    write_dataset(data / "import", "train", 400, seed=0, side=32)
    write_dataset(data / "import", "gallery", 80, seed=9, side=32)
    extra = {}
    if catalogue == "postgres":
        extra["database_url"] = request.getfixturevalue("pg").database()
    server = AppServer(data, vector_backend=backend, **extra).start()
    client = httpx.Client(base_url=server.url, timeout=60)
    assert client.post("/v1/collections", json={"name": "gallery"}).status_code == 201
    job = wait_for_job(
        client,
        client.post("/v1/collections/gallery/jobs/index", json={"source": "gallery.jsonl"}).json()[
            "id"
        ],
    )
    assert job["done"] == 160
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


def test_activation_switches_every_collection_and_rollback_restores_the_answers(
    lab: tuple[AppServer, httpx.Client],
) -> None:
    server, c = lab
    before = answers(c, "gallery")
    linear = finetune(c, "linear", epochs=30)
    tuned = finetune(c, "contrastive", epochs=4, lr=1e-3)

    job = activate(c, linear)
    assert job["state"] == "succeeded" and job["done"] == job["total"] == 160
    info = c.get("/v1/collections/gallery").json()
    assert info["model"] == linear and info["counts"] == {"image": 80, "text": 80}
    assert c.get("/readyz").json()["model"] == linear
    after_linear = answers(c, "gallery")
    assert after_linear != before
    assert_backend_holds_only_live_collections(server)
    active = [m["version"] for m in c.get("/v1/models").json()["models"] if m["active"]]
    assert active == [linear]

    assert activate(c, tuned)["state"] == "succeeded"  # re-encodes the stored content
    assert c.get("/v1/collections/gallery").json()["model"] == tuned
    # New items are embedded with the active version.
    r = c.post(
        "/v1/collections/gallery/texts",
        json={"items": [{"id": "new", "text": "a large red square"}]},
    )
    assert r.status_code == 200
    assert c.get("/v1/collections/gallery/items/new").json()["model"] == tuned
    assert c.delete("/v1/collections/gallery/items/new").status_code == 204

    r = c.post(f"/v1/models/{tuned}/rollback")
    assert r.status_code == 202
    assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"
    assert answers(c, "gallery") == after_linear  # the linear map applied to the kept raw vectors
    r = c.post(f"/v1/models/{linear}/rollback")
    assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"
    assert answers(c, "gallery") == before
    assert c.get("/readyz").json()["model"] == BASE
    assert c.post(f"/v1/models/{BASE}/rollback").status_code == 409  # nothing before it
    assert_backend_holds_only_live_collections(server)


def store_ids(server: AppServer, name: str) -> set[str]:
    return set(stored_vectors(server, name))


def stored_vectors(server: AppServer, name: str) -> dict[str, np.ndarray]:
    store = server.app.state.services.store
    version = store.get(name).model_version
    rows = store.db.reader().execute(
        "SELECT id FROM items WHERE collection = ? ORDER BY label", (name,)
    )
    return {i: store.item_vector(name, i, version)[1] for (i,) in rows}


def test_re_embedding_to_the_version_that_indexed_gives_the_vectors_indexing_gave(
    lab: tuple[AppServer, httpx.Client],
) -> None:
    """One road from stored bytes to a vector: activating a fine-tuned version encodes the
    stored pictures and texts again, and rolling back to the base encodes them once more,
    the way the index job did (the same pixels), so every vector comes back within 1e-5."""
    server, c = lab
    assert c.get("/readyz").json()["model"] == BASE
    # Photographs as people upload them: JPEGs larger than the model's input, not square.
    c.delete("/v1/collections/photos")
    assert c.post("/v1/collections", json={"name": "photos"}).status_code == 201
    rng = np.random.default_rng(3)
    files = []
    for i in range(6):
        pixels = rng.integers(0, 256, (180 + 20 * i, 300, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).resize((900, 540 + 60 * i)).save(out, "JPEG", quality=85)
        files.append(("files", (f"p{i}.jpg", out.getvalue(), "image/jpeg")))
    assert c.post("/v1/collections/photos/images", files=files).status_code == 200
    indexed = {**stored_vectors(server, "gallery"), **stored_vectors(server, "photos")}
    tuned = finetune(c, "contrastive", epochs=2, lr=1e-3)
    assert activate(c, tuned)["state"] == "succeeded"
    moved = {**stored_vectors(server, "gallery"), **stored_vectors(server, "photos")}
    assert max(float(np.abs(moved[i] - indexed[i]).max()) for i in indexed) > 1e-3
    r = c.post(f"/v1/models/{tuned}/rollback")
    assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"
    again = {**stored_vectors(server, "gallery"), **stored_vectors(server, "photos")}
    assert again.keys() == indexed.keys()
    store = server.app.state.services.store
    kinds = {
        i: store.get_item(
            "gallery" if i in store_ids(server, "gallery") else "photos", i
        ).modality.value
        for i in indexed
    }
    assert {"image", "text"} <= set(kinds.values())
    for i, vector in indexed.items():
        assert np.allclose(again[i], vector, atol=1e-5), (i, kinds[i])


def test_evaluation_measures_the_vectors_the_index_job_stored(
    lab: tuple[AppServer, httpx.Client],
) -> None:
    """Evaluation takes the one road too: each pair's image is read from its file and
    encoded as the index job encoded it (within 1e-5, photographs larger than the model's
    input included), so the metrics ``/v1/evaluate`` reports are those of the vectors the
    index holds."""
    server, c = lab
    root = server.data_dir / "import"
    (root / "snaps").mkdir(exist_ok=True)
    rng = np.random.default_rng(5)
    lines = []
    for i in range(8):
        pixels = rng.integers(0, 256, (120 + 10 * i, 200, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((800, 500 + 40 * i)).save(
            root / "snaps" / f"s{i}.jpg", "JPEG", quality=85
        )
        lines.append({"id": f"s{i}", "image": f"snaps/s{i}.jpg", "text": f"snapshot {i}"})
    (root / "snaps.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    c.delete("/v1/collections/snaps")
    assert c.post("/v1/collections", json={"name": "snaps"}).status_code == 201
    r = c.post("/v1/collections/snaps/jobs/index", json={"source": "snaps.jsonl"})
    assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"
    vectors = stored_vectors(server, "snaps")
    settings = server.app.state.services.settings
    pairs = load_pairs(root, "snaps.jsonl", settings.max_upload_bytes, settings.max_image_pixels)
    assert pairs.texts == [x["text"] for x in lines]
    encoder = server.app.state.services.stack.engine.encoders[BASE]
    again = encode_image_files(encoder, pairs.files, settings.max_image_pixels)
    xi = np.stack([vectors[x["id"]] for x in lines])
    assert np.allclose(again, xi, atol=1e-5)
    r = c.post("/v1/evaluate", json={"source": "snaps.jsonl", "model": BASE})
    assert r.status_code == 200, r.text
    xt = np.stack([vectors[f"{x['id']}#text"] for x in lines])
    expected = retrieval_metrics(xi, xt, groups=pairs.texts)
    assert r.json()["metrics"] == pytest.approx(expected, abs=1e-9)


def assert_backend_holds_only_live_collections(server: AppServer) -> None:
    """On Milvus, the collections of the versions switched away from were dropped: one Milvus
    collection per modality of each live collection, and no other."""
    store = server.app.state.services.store
    if not isinstance(store.backends, MilvusBackends):
        return
    live = {
        collection_name(backend_key(c.uid, m)) for c in store.collections.values() for m in Modality
    }
    assert set(store.backends.client.list_collections()) == live


def test_searches_during_activation_all_succeed_from_one_version(
    lab: tuple[AppServer, httpx.Client],
) -> None:
    server, c = lab
    linear = finetune(c, "linear", epochs=30, seed=1)
    before = answers(c, "gallery")
    seen: list[list[list[tuple[str, float]]]] = []
    failures: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as h:
            while not stop.is_set():
                try:
                    seen.append(answers(h, "gallery"))
                except AssertionError as exc:
                    failures.append(str(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert activate(c, linear)["state"] == "succeeded"
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    after = answers(c, "gallery")
    assert not failures, failures[:3]
    assert len(seen) > 5
    for answer in seen:  # each query's answer is wholly the old version's or the new one's
        for got, old, new in zip(answer, before, after, strict=True):
            assert got in (old, new)
    r = c.post(f"/v1/models/{linear}/rollback")
    assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"


def test_a_version_that_did_not_beat_its_base_needs_force(
    lab: tuple[AppServer, httpx.Client],
) -> None:
    server, c = lab
    registry = ModelRegistry(server.data_dir / "versions")
    d = 64
    worse = ModelVersion(
        version="xmodal-tiny@linear-handmade",
        architecture="xmodal-tiny",
        base=BASE,
        method="linear",
        artifact="map.npz",
        metrics={
            "base": dict.fromkeys(
                ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"), 10.0
            ),
            "result": dict.fromkeys(
                ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"), 5.0
            ),
        },
    )
    identity = FeatureMap(
        np.eye(d, dtype=np.float32),
        np.eye(d, dtype=np.float32),
        np.zeros(d, np.float32),
        np.zeros(d, np.float32),
    )
    registry.save(worse, identity.save)
    r = c.post(f"/v1/models/{worse.version}/activate", json={})
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_better"
    assert c.get("/readyz").json()["model"] == BASE
    assert activate(c, worse.version, force=True)["state"] == "succeeded"
    assert c.get("/readyz").json()["model"] == worse.version
    r = c.post(f"/v1/models/{worse.version}/rollback")
    assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"
    assert c.post("/v1/models/no-such/activate", json={}).status_code == 404
    assert c.post(f"/v1/models/{BASE}/activate", json={}).status_code == 409  # already active


def text_hits(c: httpx.Client, query: str, k: int = 5) -> list[tuple[str, float, str]]:
    r = c.post("/v1/collections/gallery/search", json={"text": query, "k": k, "target": "text"})
    assert r.status_code == 200, r.text
    return [(h["id"], h["score"], h["text"]) for h in r.json()["results"]]


def test_a_distilled_version_switches_only_the_query_encoder(
    lab: tuple[AppServer, httpx.Client], tmp_path: Path
) -> None:
    """Activating a student re-embeds nothing: the collections keep the teacher's vectors
    and space, new items get the teacher's vectors, and each text search is scored with the
    student's query vector against them. It survives a restart; rolling back is as quick."""
    server, c = lab
    assert c.get("/readyz").json()["model"] == BASE
    before = answers(c, "gallery")
    distilled = finetune(c, "distill", epochs=20)
    record = c.get(f"/v1/models/{distilled}").json()
    assert record["method"] == "distill" and record["base"] == BASE
    speed = record["metrics"]["speed"]
    assert speed["base_texts_per_second"] > 0 and speed["result_texts_per_second"] > 0
    assert record["beats_base"] == (
        speed["speedup"] > 1
        and mean_recall(record["metrics"]["result"])
        >= mean_recall(record["metrics"]["base"]) - record["hyperparameters"]["max_recall_drop"]
    )

    job = activate(c, distilled, force=True)
    assert job["state"] == "succeeded" and "no re-embedding" in job["detail"]["message"]
    assert job["total"] in (None, 0) and job["detail"]["collections"] == []
    assert c.get("/readyz").json()["model"] == distilled
    assert c.get("/v1/collections/gallery").json()["model"] == BASE  # the teacher's space
    active = [m["version"] for m in c.get("/v1/models").json()["models"] if m["active"]]
    assert active == [distilled]

    teacher = load_encoder("xmodal-tiny", "none", "cpu", tmp_path, seed=0)  # BASE
    folder = ModelRegistry(server.data_dir / "versions").folder(distilled)
    student = Student.load(folder / STUDENT_FILE, teacher.device)
    query = QUERIES[0]
    hits = text_hits(c, query)
    texts = [text for _, _, text in hits]
    want = teacher.encode_texts(texts) @ student.encode([query])[0]
    np.testing.assert_allclose([s for _, s, _ in hits], want, atol=1e-4)
    teacher_scores = teacher.encode_texts(texts) @ teacher.encode_texts([query])[0]
    assert not np.allclose([s for _, s, _ in hits], teacher_scores, atol=1e-3)

    # New items are stored as the teacher encodes them, in the teacher's space.
    r = c.post("/v1/collections/gallery/texts", json={"items": [{"id": "fresh", "text": query}]})
    assert r.status_code == 200
    assert c.get("/v1/collections/gallery/items/fresh").json()["model"] == BASE
    scores = {i: score for i, score, _ in text_hits(c, query, k=100)}  # all 81 texts
    expected = float(teacher.encode_texts([query])[0] @ student.encode([query])[0])
    assert abs(scores["fresh"] - expected) < 1e-4
    assert c.delete("/v1/collections/gallery/items/fresh").status_code == 204

    server.stop()  # the active student is restored at start
    server.start()
    assert c.get("/readyz").json()["model"] == distilled
    np.testing.assert_allclose([s for _, s, _ in text_hits(c, query)], want, atol=1e-4)

    r = c.post(f"/v1/models/{distilled}/rollback")
    assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"
    assert c.get("/readyz").json()["model"] == BASE
    assert answers(c, "gallery") == before


def test_failed_activation_leaves_the_serving_model_and_collections_untouched(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    write_dataset(data / "import", "train", 200, seed=0, side=32)
    write_dataset(data / "import", "gallery", 30, seed=9, side=32)
    server = AppServer(data, store_images=False).start()  # nothing to re-encode from
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            c.post("/v1/collections", json={"name": "gallery"})
            wait_for_job(
                c,
                c.post(
                    "/v1/collections/gallery/jobs/index", json={"source": "gallery.jsonl"}
                ).json()["id"],
            )
            before = answers(c, "gallery")
            tuned = finetune(c, "contrastive", epochs=2, lr=1e-3)
            job = activate(c, tuned, force=True)  # whether it is better is not the point here
            assert job["state"] == "failed" and "no stored image" in job["message"]
            assert c.get("/readyz").json()["model"] == BASE
            assert c.get("/v1/collections/gallery").json()["model"] == BASE
            assert [x["name"] for x in c.get("/v1/collections").json()["collections"]] == [
                "gallery"
            ]
            assert answers(c, "gallery") == before
            # A linear version over the same base maps the stored vectors: no content needed.
            linear = finetune(c, "linear", epochs=10)
            # The same version with its map's weights made NaN on disk (what a diverged
            # training would have left, had it been saved): refused before anything moves.
            record = next(
                p
                for p in (data / "versions").glob("*/version.json")
                if json.loads(p.read_text())["version"] == linear
            )
            artifact = record.parent / "map.npz"
            saved = artifact.read_bytes()
            good = FeatureMap.load(artifact)
            nan = np.full_like(good.text_weight, np.nan)
            FeatureMap(good.image_weight, nan, good.image_mean, good.text_mean).save(artifact)
            job = activate(c, linear, force=True)
            assert job["state"] == "failed" and "non-finite vectors" in job["message"], job
            assert c.get("/readyz").json()["model"] == BASE
            assert answers(c, "gallery") == before
            artifact.write_bytes(saved)
            assert activate(c, linear, force=True)["state"] == "succeeded"

            # A cancelled fine-tune stores no version.
            r = c.post(
                "/v1/finetune",
                json={
                    "source": "train.jsonl",
                    "method": "contrastive",
                    "hyperparameters": {"epochs": 50},
                },
            )
            job_id = r.json()["id"]
            while c.get(f"/v1/jobs/{job_id}").json()["state"] == "queued":
                time.sleep(0.05)
            assert c.delete(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
            time.sleep(1.0)
            versions = [m["version"] for m in c.get("/v1/models").json()["models"]]
            assert not any(job_id[:8] in v for v in versions)
            assert c.get("/readyz").json()["model"] == linear
    finally:
        server.stop()


def test_an_activation_tags_the_pictures_with_the_new_version(
    lab: tuple[AppServer, httpx.Client],
) -> None:
    """A collection with a label set, moved to a new version, has its pictures tagged by
    the new version's towers (the same as /v1/classify gives once it serves); a rollback
    tags them as before."""
    import base64

    server, c = lab
    labels = ["a red shape", "a blue shape", "a green shape", "a yellow shape"]
    r = c.put("/v1/collections/gallery/labels", json={"labels": labels, "top": 1, "threshold": 0})
    assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"
    pictures = [
        h["id"]
        for h in c.post(
            "/v1/collections/gallery/search", json={"text": "a shape", "target": "image", "k": 5}
        ).json()["results"]
    ]

    def agree() -> list[Any]:
        out = []
        for item in pictures:
            picture = c.get(f"/v1/collections/gallery/items/{item}/image").content
            ranked = c.post(
                "/v1/classify",
                json={"image_base64": base64.b64encode(picture).decode(), "labels": labels},
            ).json()["labels"]
            tags = c.get(f"/v1/collections/gallery/items/{item}").json()["metadata"]["labels"]
            assert tags == [ranked[0]["label"]], (item, tags, ranked)
            out.append(tags)
        return out

    before = agree()
    tuned = finetune(c, "contrastive", epochs=2, lr=1e-3)
    try:
        assert activate(c, tuned)["state"] == "succeeded"
        agree()
    finally:
        r = c.post(f"/v1/models/{tuned}/rollback")
        assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"
        assert agree() == before
        r = c.delete("/v1/collections/gallery/labels")
        assert wait_for_job(c, r.json()["id"])["state"] == "succeeded"
