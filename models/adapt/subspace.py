"""Subspace alignment between the modalities, unsupervised: no pairs needed."""

from __future__ import annotations

import numpy as np

from models.adapt.methods import SubspaceConfig
from models.feature_map import FeatureMap


def _pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:k].T.astype(np.float32)


def fit_subspace_alignment(
    image_vectors: np.ndarray, text_vectors: np.ndarray, cfg: SubspaceConfig
) -> FeatureMap:
    """Subspace alignment (Fernando et al., ICCV 2013) between the modalities, from unpaired
    images and texts of the target domain: the image PCA basis Xs is aligned onto the text
    basis Xt by M = Xs^T Xt; images map to (x - mu_s) Xs M, texts to (t - mu_t) Xt. Both are
    expressed back in the d-dimensional space (times Xt^T), which keeps inner products."""
    k = min(cfg.dims, image_vectors.shape[1], len(image_vectors) - 1, len(text_vectors) - 1)
    if k < 1:
        raise ValueError("subspace alignment needs at least two images and two texts")
    mu_s, xs = _pca(np.asarray(image_vectors, dtype=np.float32), k)
    mu_t, xt = _pca(np.asarray(text_vectors, dtype=np.float32), k)
    m = xs.T @ xt
    return FeatureMap(xs @ m @ xt.T, xt @ xt.T, mu_s, mu_t)
