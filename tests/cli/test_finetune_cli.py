"""`xmodal finetune`, `xmodal eval` and `xmodal models` in-process and against a server."""

from __future__ import annotations

from pathlib import Path

from models.synthetic import write_dataset
from tests.helpers import AppServer, xmodal


def test_finetune_eval_and_models_in_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dataset(data / "import", "train", 300, seed=0, side=32, varied=False)
    write_dataset(data / "import", "held", 80, seed=5, side=32, varied=False)
    proc = xmodal(
        "finetune",
        "train.jsonl",
        "--method",
        "linear",
        "--eval-source",
        "held.jsonl",
        "--set",
        "epochs=40",
        data_dir=data,
    )
    assert proc.returncode == 0, proc.stderr
    assert "succeeded" in proc.stdout and "beats its base: yes" in proc.stdout
    assert "t2i_r5" in proc.stdout and "fine-tuned" in proc.stdout
    version = next(
        line.split()[1].rstrip(":")
        for line in proc.stdout.splitlines()
        if line.startswith("version ")
    )
    listing = xmodal("models", data_dir=data)
    assert version in listing.stdout and "* xmodal-tiny@random-seed0" in listing.stdout
    header = listing.stdout.splitlines()[0].split()
    assert header[-2:] == ["built", "on"] and header.count("base") == 1  # one "base" column
    base = xmodal("eval", "held.jsonl", data_dir=data)
    tuned = xmodal("eval", "held.jsonl", "--model", version, data_dir=data)
    assert base.returncode == tuned.returncode == 0, tuned.stderr

    def r5(out: str) -> float:
        return float(
            next(line.split()[1] for line in out.splitlines() if line.startswith("t2i_r5"))
        )

    assert r5(tuned.stdout) > r5(base.stdout) + 10
    bad = xmodal("finetune", "train.jsonl", "--set", "epoch=3", "--method", "linear", data_dir=data)
    assert bad.returncode == 1 and "takes no epoch" in bad.stderr and "Traceback" not in bad.stderr
    missing = xmodal("eval", "held.jsonl", "--model", "nope", data_dir=data)
    assert (
        missing.returncode == 1
        and "does not exist" in missing.stderr
        and "Traceback" not in missing.stderr
    )


def test_finetune_against_a_server(server: AppServer) -> None:
    root = server.data_dir / "import"
    root.mkdir(exist_ok=True)
    write_dataset(root, "cli-ft", 200, seed=3, side=32)
    proc = xmodal(
        "finetune",
        "cli-ft.jsonl",
        "--method",
        "linear",
        "--server",
        server.url,
        "--set",
        "epochs=20",
        data_dir=server.data_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "succeeded" in proc.stdout
    listing = xmodal("models", "--server", server.url, data_dir=server.data_dir)
    assert "linear" in listing.stdout

    # A distilled query encoder reports both encoders' speeds; a student too long refused.
    proc = xmodal(
        "finetune",
        "cli-ft.jsonl",
        "--method",
        "distill",
        "--server",
        server.url,
        "--set",
        "epochs=3",
        data_dir=server.data_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "texts/s (batch 256)" in proc.stdout and "one text:" in proc.stdout
    bad = xmodal(
        "finetune",
        "cli-ft.jsonl",
        "--method",
        "distill",
        "--server",
        server.url,
        "--set",
        "context_length=64",
        data_dir=server.data_dir,
    )
    assert bad.returncode == 1 and "longer than the teacher's (32)" in bad.stderr
    assert "Traceback" not in bad.stderr
