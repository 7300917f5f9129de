"""Retrieval metrics against ranks worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluate import first_relevant_ranks, retrieval_metrics


def test_ranks_count_the_targets_scoring_above_the_relevant_one() -> None:
    targets = np.eye(4, dtype=np.float32)
    # query 0 points at target 0; query 1 at target 2 then 1; query 2 at 3, 0, 2; query 3 at 3
    queries = np.array(
        [[1, 0, 0, 0], [0, 0.5, 0.9, 0], [0.5, 0, 0.1, 0.9], [0, 0, 0, 1]], dtype=np.float32
    )
    assert first_relevant_ranks(queries, targets).tolist() == [1, 2, 3, 1]
    # small chunks give the same answer as one
    assert first_relevant_ranks(queries, targets, chunk=1).tolist() == [1, 2, 3, 1]


def test_a_group_makes_identical_captions_interchangeable() -> None:
    targets = np.eye(3, dtype=np.float32)
    queries = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    assert first_relevant_ranks(queries, targets).tolist() == [2, 1, 1]
    grouped = first_relevant_ranks(queries, targets, groups=["dog", "dog", "cat"])
    assert grouped.tolist() == [1, 1, 1]


def test_metrics_in_both_directions() -> None:
    n = 20
    x = np.eye(n, dtype=np.float32)
    perfect = retrieval_metrics(x, x)
    assert perfect["t2i_r1"] == perfect["i2t_r1"] == 100.0
    assert perfect["t2i_mrr"] == 1.0 and perfect["i2t_median_rank"] == 1.0 and perfect["pairs"] == n
    # each text points mostly at the next image: its own image comes second
    shifted = np.roll(x, 1, axis=0) * 0.9 + x * 0.1
    m = retrieval_metrics(x, shifted)
    assert m["t2i_r1"] == 0.0 and m["t2i_r5"] == 100.0 and m["t2i_median_rank"] == 2.0
    assert m["t2i_mrr"] == pytest.approx(0.5)


def test_unpaired_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="paired rows"):
        retrieval_metrics(np.eye(3, dtype=np.float32), np.eye(4, dtype=np.float32)[:, :3][:2])
