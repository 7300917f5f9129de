"""Fine-tuning, evaluation and model versions through the HTTP API of a real server."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from models.synthetic import write_dataset
from tests.calls import wait_for_job
from tests.helpers import AppServer


@pytest.fixture(scope="module")
def shapes(server: AppServer) -> dict[str, str]:
    root = server.data_dir / "import"
    root.mkdir(exist_ok=True)
    train = write_dataset(root, "ft-train", 600, seed=0, domain="a", side=48, varied=False)
    held = write_dataset(root, "ft-eval", 160, seed=99, domain="a", side=48, varied=False)
    return {"train": train.name, "eval": held.name}


def finetune(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/finetune", json=body)
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"], timeout=300)
    assert job["kind"] == "finetune"
    return job


def test_contrastive_job_reports_progress_and_a_version_that_beats_the_base(
    client: httpx.Client, shapes: dict[str, str]
) -> None:
    job = finetune(
        client,
        source=shapes["train"],
        method="contrastive",
        hyperparameters={"epochs": 6, "lr": 1e-3, "batch_size": 64},
    )
    assert job["state"] == "succeeded", job
    detail = job["detail"]
    assert detail["phase"] == "done" and detail["beats_base"] is True
    assert (
        detail["data"]["eval_pairs"] == 60 and detail["data"]["train_pairs"] == 540
    )  # 10% held out
    assert detail["result_metrics"]["t2i_r5"] > detail["base_metrics"]["t2i_r5"] + 20
    curve = detail["loss_curve"]
    assert curve[-1]["loss"] < curve[0]["loss"] and {"epoch", "step", "loss", "lr"} <= set(curve[0])
    assert job["done"] == job["total"] > 0

    version = detail["version"]
    model = client.get(f"/v1/models/{version}").json()
    assert model["method"] == "contrastive" and model["base"] == "xmodal-tiny@random-seed0"
    assert model["hyperparameters"]["epochs"] == 6 and model["data"]["source"] == shapes["train"]
    assert set(model["metrics"]) == {"base", "result"} and not model["active"]
    listed = {m["version"]: m for m in client.get("/v1/models").json()["models"]}
    assert listed["xmodal-tiny@random-seed0"]["active"] and version in listed

    # The stored version, loaded from its checkpoint, gives the same gain on other pairs.
    base = client.post("/v1/evaluate", json={"source": shapes["eval"]}).json()
    tuned = client.post("/v1/evaluate", json={"source": shapes["eval"], "model": version}).json()
    assert tuned["model"] == version and base["model"] == "xmodal-tiny@random-seed0"
    assert tuned["metrics"]["t2i_r5"] > base["metrics"]["t2i_r5"] + 20
    for key in ("t2i_r1", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_mrr", "i2t_median_rank"):
        assert key in tuned["metrics"]


def test_linear_job_with_a_separate_evaluation_source(
    client: httpx.Client, shapes: dict[str, str]
) -> None:
    job = finetune(
        client,
        source=shapes["train"],
        method="linear",
        eval_source=shapes["eval"],
        hyperparameters={"epochs": 60},
    )
    assert job["state"] == "succeeded", job
    detail = job["detail"]
    assert detail["data"]["eval_pairs"] == 160 and detail["data"]["train_pairs"] == 600
    assert detail["beats_base"] is True
    r = client.post("/v1/evaluate", json={"source": shapes["eval"], "model": detail["version"]})
    assert r.json()["metrics"]["t2i_r5"] == pytest.approx(detail["result_metrics"]["t2i_r5"])


def test_closed_form_and_adversarial_jobs_map_the_base(
    client: httpx.Client, shapes: dict[str, str]
) -> None:
    """`cca` (seconds, no steps) and `adversarial` with a target source: versions that map
    their base, with their data recorded and a gain on the held-out pairs."""
    cca = finetune(client, source=shapes["train"], method="cca", hyperparameters={"dims": 16})
    assert cca["state"] == "succeeded", cca
    assert cca["detail"]["beats_base"] is True
    model = client.get(f"/v1/models/{cca['detail']['version']}").json()
    assert model["method"] == "cca" and model["hyperparameters"]["dims"] == 16
    adv = finetune(
        client,
        source=shapes["train"],
        method="adversarial",
        target_source=shapes["eval"],
        hyperparameters={"epochs": 20},
    )
    assert adv["state"] == "succeeded", adv
    data = adv["detail"]["data"]
    assert data["target_source"] == shapes["eval"] and data["target_items"] == 160
    assert adv["detail"]["loss_curve"] and adv["detail"]["beats_base"] is True


def test_bad_finetune_and_evaluate_requests(client: httpx.Client, shapes: dict[str, str]) -> None:
    cases = [
        ({"source": shapes["train"], "method": "magic"}, 400, "invalid_parameters"),
        (
            {"source": shapes["train"], "method": "linear", "hyperparameters": {"epoch": 3}},
            400,
            "invalid_parameters",
        ),
        ({"source": "../../etc/passwd", "method": "linear"}, 400, "invalid_source"),
        (
            {"source": shapes["train"], "method": "contrastive", "target_source": shapes["eval"]},
            400,
            "invalid_parameters",
        ),
        (
            {"source": shapes["train"], "method": "adversarial", "target_source": "../x"},
            400,
            "invalid_source",
        ),
        (
            {"source": shapes["train"], "method": "cca", "hyperparameters": {"dims": 0}},
            400,
            "invalid_parameters",
        ),
        *(
            (
                {"source": shapes["train"], "method": m, "hyperparameters": h},
                400,
                "invalid_parameters",
            )
            for m, h in (
                ("linear", {"lr": 1e30, "epochs": 20}),
                ("adversarial", {"lr": 1e30}),
                ("contrastive", {"lr": 1e10}),
                ("linear", {"lr": -1}),
                ("contrastive", {"batch_size": 0}),
                ("linear", {"epochs": True}),
                # a student of 9.87 billion parameters; one wider or deeper than its teacher
                ("distill", {"width": 4096, "layers": 48, "heads": 64}),
                ("distill", {"width": 128}),
                ("distill", {"layers": 4}),
                ("distill", {"width": 32, "heads": 8}),
            )
        ),
        (
            {
                "source": shapes["train"],
                "method": "adversarial",
                "hyperparameters": {"adversary_weight": -1},
            },
            400,
            "invalid_parameters",
        ),
        ({"source": "missing.jsonl"}, 400, "invalid_source"),
        ({"source": shapes["train"], "eval_fraction": 1.5}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        r = client.post("/v1/finetune", json=body)
        assert r.status_code == status and r.json()["error"]["code"] == code, (body, r.text)
    r = client.post("/v1/evaluate", json={"source": shapes["eval"], "model": "no-such-version"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert client.get("/v1/models/no-such-version").status_code == 404
