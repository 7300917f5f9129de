"""Canonical correlation analysis: a shared subspace in which paired image and text
embeddings are as correlated as they can be. Closed form, no gradient steps."""

from __future__ import annotations

import numpy as np

from models.adapt.methods import CcaConfig
from models.feature_map import FeatureMap


def _inverse_sqrt(c: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(c)
    return (vectors / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T


def _covariance(x: np.ndarray, reg: float) -> np.ndarray:
    """Covariance with ridge ``reg`` times its mean variance (so ``reg`` needs no scale)."""
    c = x.T @ x / max(len(x) - 1, 1)
    ridge = reg * max(float(np.trace(c)) / len(c), 1e-12)
    return c + ridge * np.eye(len(c))


def fit_cca(
    image_vectors: np.ndarray, text_vectors: np.ndarray, cfg: CcaConfig
) -> tuple[FeatureMap, np.ndarray]:
    """Regularised CCA on paired embeddings (row i of each is one pair), the classic
    co-subspace embedding (Hotelling 1936; for retrieval, Rasiwasia et al. 2010 and Gong et
    al. 2014, whose components are weighted by a power of their correlation). Returns the
    map and the canonical correlations of the components kept.

    Both modalities are projected onto the top ``dims`` canonical directions (whitened,
    then rotated by the SVD of the whitened cross-covariance), each component scaled by its
    correlation to the power ``power``, and written into the first ``dims`` coordinates of
    the d-dimensional space, zeros after: inner products are those of the subspace, and
    stored vectors keep their dimension."""
    x = np.asarray(image_vectors, dtype=np.float64)
    y = np.asarray(text_vectors, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("image and text vectors must be paired row for row")
    n, d = x.shape
    k = min(cfg.dims, d, n - 1)
    if k < 1:
        raise ValueError("CCA needs at least two pairs")
    mu_x, mu_y = x.mean(axis=0), y.mean(axis=0)
    x, y = x - mu_x, y - mu_y
    wx = _inverse_sqrt(_covariance(x, cfg.reg))
    wy = _inverse_sqrt(_covariance(y, cfg.reg))
    cross = x.T @ y / max(n - 1, 1)
    u, s, vt = np.linalg.svd(wx @ cross @ wy)
    corr = np.clip(s[:k], 0.0, 1.0)
    scale = corr**cfg.power
    a = (wx @ u[:, :k]) * scale  # d x k
    b = (wy @ vt[:k].T) * scale
    pad = np.zeros((d, d))
    image_weight, text_weight = pad.copy(), pad.copy()
    image_weight[:, :k], text_weight[:, :k] = a, b
    fmap = FeatureMap(
        image_weight.astype(np.float32),
        text_weight.astype(np.float32),
        mu_x.astype(np.float32),
        mu_y.astype(np.float32),
    )
    return fmap, corr.astype(np.float32)
