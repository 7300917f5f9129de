"""Every adaptation method side by side, in the settings each is meant for, from one run:
held-out text-to-image Recall@5 on the synthetic domains (``models/synthetic.py``), mean
over three seeds, with xmodal-tiny as the base.

    .venv/bin/python -m bench.alignment

Settings:
- **paired**: 640 image-caption pairs of domain a; held-out pairs of domain a.
- **few pairs + target**: 64 pairs of domain a, and 1,000 images and 1,000 other texts of
  domain b with no pairing; held-out pairs of domain b.
- **new domain, unpaired**: a base already fine-tuned on domain a (the paired setting's
  `contrastive` result) meets domain b, of which only unpaired images and texts exist.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from models.adapt.adversarial import fit_adversarial
from models.adapt.cca import fit_cca
from models.adapt.contrastive import train_contrastive
from models.adapt.linear import fit_linear
from models.adapt.methods import (
    AdversarialConfig,
    CcaConfig,
    ContrastiveConfig,
    LinearConfig,
    SubspaceConfig,
)
from models.adapt.subspace import fit_subspace_alignment
from models.encoder import ClipEncoder, load_encoder
from models.evaluate import retrieval_metrics
from models.feature_map import FeatureMap
from models.synthetic import render, samples

SIDE = 48


def pictures(items: list[Any]) -> list[Any]:
    return [render(s, side=SIDE) for s in items]


def recall(enc: ClipEncoder, fmap: FeatureMap | None, test: list[Any]) -> float:
    captions = [s.caption for s in test]
    xi, xt = enc.encode_images(pictures(test)), enc.encode_texts(captions)
    if fmap is not None:
        xi, xt = fmap.apply(xi, "image"), fmap.apply(xt, "text")
    return float(retrieval_metrics(xi, xt, groups=captions)["t2i_r5"])


def tuned(base: ClipEncoder, pairs: list[Any], seed: int, epochs: int) -> ClipEncoder:
    cfg = ContrastiveConfig(epochs=epochs, batch_size=64, lr=1e-3, warmup_steps=10, seed=seed)
    model = train_contrastive(base, pictures(pairs), [s.caption for s in pairs], cfg)
    return base.with_model(model, "tuned")


def one_seed(seed: int, cache: str) -> dict[str, dict[str, float]]:
    base = load_encoder("xmodal-tiny", "none", "cpu", cache, seed=seed)
    out: dict[str, dict[str, float]] = {}
    timed: dict[str, float] = {}

    def run(name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = fn()
        timed[name] = time.perf_counter() - started
        return result

    # --- paired, one domain ---
    train, test = list(samples(640, seed, "a")), list(samples(200, 1000 + seed, "a"))
    xi = base.encode_images(pictures(train))
    xt = base.encode_texts([s.caption for s in train])
    shuffled = xt[np.random.default_rng(0).permutation(len(xt))]
    contrastive = run("contrastive", lambda: tuned(base, train, seed, epochs=6))
    out["paired"] = {
        "base": recall(base, None, test),
        "linear": recall(base, run("linear", lambda: fit_linear(xi, xt, LinearConfig())), test),
        "subspace_alignment": recall(
            base, fit_subspace_alignment(xi, shuffled, SubspaceConfig()), test
        ),
        "cca": recall(base, run("cca", lambda: fit_cca(xi, xt, CcaConfig())[0]), test),
        "adversarial": recall(
            base,
            run("adversarial", lambda: fit_adversarial(xi, xt, AdversarialConfig(seed=seed))[0]),
            test,
        ),
        "contrastive": recall(contrastive, None, test),
    }

    # --- few pairs + unpaired target ---
    few = list(samples(64, seed, "a"))
    unpaired = list(samples(2000, 900 + seed, "b"))
    test_b = list(samples(300, 500 + seed, "b"))
    fi, ft = base.encode_images(pictures(few)), base.encode_texts([s.caption for s in few])
    ui = base.encode_images(pictures(unpaired[:1000]))
    ut = base.encode_texts([s.caption for s in unpaired[1000:]])
    adv_cfg = AdversarialConfig(seed=seed)
    out["few pairs + target"] = {
        "base": recall(base, None, test_b),
        "linear": recall(base, fit_linear(fi, ft, LinearConfig(seed=seed)), test_b),
        "subspace_alignment": recall(
            base, fit_subspace_alignment(ui, ut, SubspaceConfig()), test_b
        ),
        "cca": recall(base, fit_cca(fi, ft, CcaConfig())[0], test_b),
        "adversarial": recall(
            base, fit_adversarial(fi, ft, adv_cfg, target_images=ui, target_texts=ut)[0], test_b
        ),
        "contrastive": recall(tuned(base, few, seed, epochs=20), None, test_b),
    }

    # --- a tuned base meets an unpaired new domain ---
    ui = contrastive.encode_images(pictures(unpaired[:1000]))
    ut = contrastive.encode_texts([s.caption for s in unpaired[1000:]])
    out["new domain, unpaired"] = {
        "base": recall(contrastive, None, test_b),
        "subspace_alignment": recall(
            contrastive, fit_subspace_alignment(ui, ut, SubspaceConfig()), test_b
        ),
    }
    out["seconds"] = timed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as cache:
        for seed in range(args.seeds):
            runs.append(one_seed(seed, cache))
    settings = [k for k in runs[0] if k != "seconds"]
    methods = ["base", "linear", "subspace_alignment", "cca", "adversarial", "contrastive"]
    print("| method | " + " | ".join(settings) + " | fit time, paired setting |")
    print("|---|" + "---|" * (len(settings) + 1))
    for m in methods:
        cells = []
        for s in settings:
            values = [r[s][m] for r in runs if m in r[s]]
            cells.append(
                f"{np.mean(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"
                if values
                else "-"
            )
        secs = [r["seconds"][m] for r in runs if m in r["seconds"]]
        fit = f"{np.median(secs):.1f} s" if secs else "-"
        print(f"| `{m}` | " + " | ".join(cells) + f" | {fit} |")


if __name__ == "__main__":
    main()
