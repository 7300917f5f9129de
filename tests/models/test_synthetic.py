from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.sources import open_source
from models.synthetic import render, samples, write_dataset


def test_same_seed_same_dataset_other_seed_other_dataset() -> None:
    a = [(s.caption, np.asarray(render(s)).tobytes()) for s in samples(20, 7, "a")]
    again = [(s.caption, np.asarray(render(s)).tobytes()) for s in samples(20, 7, "a")]
    other = [s.caption for s in samples(20, 8, "a")]
    assert a == again
    assert [c for c, _ in a] != other


def test_domains_share_the_vocabulary_but_not_the_look() -> None:
    words_a = {w for s in samples(300, 0, "a") for w in s.caption.split()}
    words_b = {w for s in samples(300, 0, "b") for w in s.caption.split()}
    assert words_a == words_b
    a = np.stack([np.asarray(render(s), dtype=np.float32) for s in samples(50, 0, "a")])
    b = np.stack([np.asarray(render(s), dtype=np.float32) for s in samples(50, 0, "b")])
    # Domain b is noisy: neighbouring pixels differ far more.
    assert np.abs(np.diff(b, axis=2)).mean() > 3 * np.abs(np.diff(a, axis=2)).mean()


def test_captions_describe_the_picture() -> None:
    sample = next(s for s in samples(200, 3, "a") if s.colour == "red" and s.size == "large")
    pixels = np.asarray(render(sample, side=64)).reshape(-1, 3).astype(int)
    red = (pixels[:, 0] > 180) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)
    assert red.mean() > 0.05  # a large red shape covers a good part of the picture
    assert sample.caption.startswith("a large red ")


def test_written_dataset_is_a_manifest_batch_jobs_can_read(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, "shapes", 10, seed=1, domain="b", side=32)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(rows) == 10 and rows[0]["domain"] == "b" and (tmp_path / rows[0]["image"]).is_file()
    records = list(open_source(tmp_path, manifest.name).records())
    assert [r.kind for r in records] == ["image", "text"] * 10
    assert records[1].text == rows[0]["text"]
