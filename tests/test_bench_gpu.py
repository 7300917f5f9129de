"""The prepared GPU benchmark runs end to end in its smoke mode on this machine's CPU, so
the one command spent on a lent GPU host cannot have rotted."""

from __future__ import annotations

import json
from pathlib import Path

from bench import gpu


def test_the_gpu_benchmark_measures_every_part_in_smoke_mode(tmp_path: Path) -> None:
    results = gpu.main(["--smoke", "--out", str(tmp_path)])
    assert results["errors"] == {}, results["errors"]
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["sizes"]["model"] == gpu.SMOKE.model and saved["errors"] == {}
    enc = results["encoders"]
    assert enc["patch_matmul"] is True  # the smoke model is a ViT: the GPU's path is taken
    assert all(rate > 0 for rate in enc["image_tower_per_s"].values())
    assert all(rate > 0 for rate in enc["text_tower_per_s"].values())
    assert enc["precision_check"]["top10_overlap"] == 1.0  # fp32 against fp32 here
    job = results["ingest"]
    assert job["images_per_s"] > 0 and job["first_progress_s"] <= job["seconds"]
    assert results["search"]["queries_per_s_batches_of_64"] > 0
    http = results["http"]
    assert http["search"]["errors"] == 0 and http["search"]["requests"] > 0
    assert http["floor"]["errors"] == 0
    (two,) = results["workers"]["rows"]  # --workers 2, both ready before it was driven
    assert two["workers"] == 2 and two["search"]["errors"] == 0 and two["search"]["requests"] > 0
    table = (tmp_path / "gpu.md").read_text()
    for row in ("image tower", "text tower", "index job", "exact search", "HTTP", "--workers 2"):
        assert row in table, table
