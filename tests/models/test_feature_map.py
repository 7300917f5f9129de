"""Feature maps: applied per modality, renormalised, saved and loaded without pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.feature_map import FeatureMap


def test_feature_map_round_trips_and_keeps_vectors_normalised(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    d = 8
    fmap = FeatureMap(
        rng.standard_normal((d, d)), rng.standard_normal((d, d)), np.zeros(d), np.ones(d) * 0.1
    )
    fmap.save(tmp_path / "map.npz")
    loaded = FeatureMap.load(tmp_path / "map.npz")
    x = rng.standard_normal((5, d)).astype(np.float32)
    for modality in ("image", "text"):
        y = loaded.apply(x, modality)
        np.testing.assert_allclose(y, fmap.apply(x, modality), rtol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError):
        fmap.apply(x, "audio")


def test_each_modality_gets_its_own_affine_map() -> None:
    d = 4
    swap = np.eye(d, dtype=np.float32)[::-1]
    fmap = FeatureMap(np.eye(d, dtype=np.float32), swap, np.zeros(d), np.full(d, 0.5))
    x = np.array([[1, 1, 2, 3]], dtype=np.float32)
    np.testing.assert_allclose(fmap.apply(x, "image"), x / np.linalg.norm(x), rtol=1e-6)
    expected = (x - 0.5)[:, ::-1]
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(fmap.apply(x, "text"), expected, rtol=1e-6)


def test_a_pickled_file_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "map.npz"
    np.savez(
        path,
        image_weight=np.array([object()], dtype=object),
        text_weight=np.eye(2),
        image_mean=np.zeros(2),
        text_mean=np.zeros(2),
    )
    with pytest.raises(ValueError, match="pickle"):
        FeatureMap.load(path)
