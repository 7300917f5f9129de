"""CCA and adversarial alignment on frozen embeddings: real fits on the synthetic domains,
three seeds each, measured on held-out pairs against their base (and CCA against the
linear map); and the mechanics each relies on (canonical correlations, the reversed
gradient)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.adapt.adversarial import fit_adversarial, reverse_gradient
from models.adapt.cca import fit_cca
from models.adapt.linear import fit_linear
from models.adapt.methods import AdversarialConfig, CcaConfig, LinearConfig
from models.encoder import ClipEncoder, load_encoder
from models.evaluate import retrieval_metrics
from models.feature_map import FeatureMap
from models.synthetic import render, samples
from tests.models.splits import SEEDS, split


def t2i_r5(fmap: FeatureMap | None, xi: np.ndarray, xt: np.ndarray, groups: list[str]) -> float:
    if fmap is not None:
        xi, xt = fmap.apply(xi, "image"), fmap.apply(xt, "text")
    return retrieval_metrics(xi, xt, groups=groups)["t2i_r5"]


def test_cca_finds_the_canonical_correlations_of_known_data() -> None:
    """Three shared latent factors with known loadings plus noise: three components with
    high correlation, the rest near none, and each kept pair of projections correlated by
    exactly the reported amount, uncorrelated with the other components."""
    rng = np.random.default_rng(0)
    n, d = 4000, 12
    z = rng.standard_normal((n, 3))
    x = z @ rng.standard_normal((3, d)) + 0.3 * rng.standard_normal((n, d))
    y = z @ rng.standard_normal((3, d)) + 0.3 * rng.standard_normal((n, d))
    fmap, corr = fit_cca(x, y, CcaConfig(dims=6, reg=1e-6, power=0.0))
    assert corr[:3].min() > 0.9 and corr[3:].max() < 0.1, corr
    px = (x - fmap.image_mean) @ fmap.image_weight
    py = (y - fmap.text_mean) @ fmap.text_weight
    assert np.allclose(px[:, 6:], 0) and np.allclose(py[:, 6:], 0)  # written into 6 coordinates
    both = np.corrcoef(px[:, :6].T, py[:, :6].T)
    np.testing.assert_allclose(np.diag(both[:6, 6:]), corr, atol=1e-3)
    np.testing.assert_allclose(both[:6, :6], np.eye(6), atol=1e-3)  # whitened components


def test_cca_beats_its_base_on_paired_data(tmp_path: Path) -> None:
    """Paired data of one domain, a random-weights base: the setting of a closed-form
    co-subspace. Held-out text-to-image Recall@5, three seeds."""
    for seed in SEEDS:
        base = load_encoder("xmodal-tiny", "none", "cpu", tmp_path, seed=seed)
        ti, tt, ei, et = split(seed)
        fmap, corr = fit_cca(base.encode_images(ti), base.encode_texts(tt), CcaConfig())
        xi, xt = base.encode_images(ei), base.encode_texts(et)
        before, after = t2i_r5(None, xi, xt, et), t2i_r5(fmap, xi, xt, et)
        assert after > before + 50, (seed, before, after)
        assert len(corr) == 32 and np.all(np.diff(corr) <= 1e-6)  # strongest first


def target_setting(
    base: ClipEncoder, seed: int, pairs: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Few pairs of domain a, many unpaired images and texts of domain b, held-out b pairs."""
    train = list(samples(pairs, seed, "a"))
    unpaired = list(samples(2000, 900 + seed, "b"))
    test = list(samples(300, 500 + seed, "b"))
    captions = [s.caption for s in test]
    return (
        base.encode_images([render(s, side=48) for s in train]),
        base.encode_texts([s.caption for s in train]),
        base.encode_images([render(s, side=48) for s in unpaired[:1000]]),
        base.encode_texts([s.caption for s in unpaired[1000:]]),  # other pictures' captions
        base.encode_images([render(s, side=48) for s in test]),
        base.encode_texts(captions),
        captions,
    )


def test_adversarial_alignment_with_target_data_beats_its_base(tmp_path: Path) -> None:
    """64 pairs of domain a and unpaired images and texts of domain b (the setting of the
    domain discriminator): held-out b pairs, three seeds."""
    gains = []
    for seed in SEEDS:
        base = load_encoder("xmodal-tiny", "none", "cpu", tmp_path, seed=seed)
        xi_a, xt_a, ui, ut, xi, xt, captions = target_setting(base, seed)
        cfg = AdversarialConfig(epochs=200, seed=seed)
        fmap, _ = fit_adversarial(xi_a, xt_a, cfg, target_images=ui, target_texts=ut)
        gains.append(t2i_r5(fmap, xi, xt, captions) - t2i_r5(None, xi, xt, captions))
    assert min(gains) > 4 and np.mean(gains) > 8, gains


def test_the_adversary_acts_only_through_the_reversed_gradient(tiny_encoder: ClipEncoder) -> None:
    """With a reversal weight of 0 the heads are exactly the linear map's; with a weight
    they are not."""
    ti, tt, _, _ = split(0, n_train=128, n_test=2)
    xi, xt = tiny_encoder.encode_images(ti), tiny_encoder.encode_texts(tt)
    linear = fit_linear(xi, xt, LinearConfig(epochs=5))
    silent, _ = fit_adversarial(xi, xt, AdversarialConfig(epochs=5, adversary_weight=0.0))
    np.testing.assert_allclose(silent.image_weight, linear.image_weight, atol=1e-6)
    np.testing.assert_allclose(silent.text_weight, linear.text_weight, atol=1e-6)
    active, _ = fit_adversarial(xi, xt, AdversarialConfig(epochs=5, adversary_weight=1.0))
    assert not np.allclose(active.image_weight, linear.image_weight, atol=1e-4)


def test_gradient_reversal_flips_and_scales_the_gradient() -> None:
    x = torch.ones(3, requires_grad=True)
    (reverse_gradient(x, 0.25) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad, torch.tensor([-0.25, -0.5, -0.75]))
