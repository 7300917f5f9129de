"""Fine-tuning xmodal-tiny on the synthetic domain: real training, measured on held-out pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.adapt.contrastive import train_contrastive
from models.adapt.linear import fit_linear
from models.adapt.methods import (
    ContrastiveConfig,
    LinearConfig,
    SubspaceConfig,
    TrainingStopped,
    TrainStep,
)
from models.adapt.subspace import fit_subspace_alignment
from models.encoder import ClipEncoder, load_encoder
from models.encoder import ClipEncoder as Encoder
from models.errors import TrainingDiverged
from models.evaluate import retrieval_metrics
from models.synthetic import render, samples
from tests.models.splits import SEEDS, Split, split


def t2i_r5(encoder: ClipEncoder, images: list[Image.Image], texts: list[str]) -> float:
    return retrieval_metrics(
        encoder.encode_images(images), encoder.encode_texts(texts), groups=texts
    )["t2i_r5"]


@dataclass
class Tuned:
    base: ClipEncoder
    tuned: ClipEncoder
    steps: list[TrainStep]
    split: Split


@pytest.fixture(scope="module")
def tuned_on_a(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Tuned]:
    """For each seed, xmodal-tiny with random weights fine-tuned on domain a: the contrastive
    test measures it on held-out a pairs, the subspace-alignment test starts from it."""
    out = {}
    for seed in SEEDS:
        base = load_encoder("xmodal-tiny", "none", "cpu", tmp_path_factory.mktemp("m"), seed=seed)
        data = split(seed)
        steps: list[TrainStep] = []
        cfg = ContrastiveConfig(epochs=6, batch_size=64, lr=1e-3, warmup_steps=10, seed=seed)
        model = train_contrastive(base, data[0], data[1], cfg, on_step=steps.append)
        tuned = Encoder(model, base.preprocess, base.tokenizer, base.device, base.model_name, "a")
        out[seed] = Tuned(base, tuned, steps, data)
    return out


def test_contrastive_fine_tuning_raises_recall_well_above_the_base(
    tuned_on_a: dict[int, Tuned],
) -> None:
    gains = []
    for run in tuned_on_a.values():
        _, _, ei, et = run.split
        gains.append(t2i_r5(run.tuned, ei, et) - t2i_r5(run.base, ei, et))
        assert run.steps[-1].loss < run.steps[0].loss
        assert all(s.lr > 0 and s.samples_per_second > 0 for s in run.steps)
    assert min(gains) > 20 and np.mean(gains) > 35, gains


def test_linear_map_on_frozen_embeddings_beats_the_base(tmp_path: Path) -> None:
    gains = []
    for seed in SEEDS:
        base = load_encoder("xmodal-tiny", "none", "cpu", tmp_path, seed=seed)
        ti, tt, ei, et = split(seed)
        fmap = fit_linear(
            base.encode_images(ti), base.encode_texts(tt), LinearConfig(epochs=60, seed=seed)
        )
        xi, xt = base.encode_images(ei), base.encode_texts(et)
        mapped = retrieval_metrics(fmap.apply(xi, "image"), fmap.apply(xt, "text"), groups=et)[
            "t2i_r5"
        ]
        gains.append(mapped - retrieval_metrics(xi, xt, groups=et)["t2i_r5"])
    assert min(gains) > 15 and np.mean(gains) > 25, gains


def test_locking_the_image_tower_leaves_it_untouched(tiny_encoder: ClipEncoder) -> None:
    ti, tt, _, _ = split(0, n_train=128, n_test=2)
    cfg = ContrastiveConfig(epochs=1, batch_size=32, lr=1e-3, lock_image=True, freeze_text_blocks=1)
    model = train_contrastive(tiny_encoder, ti, tt, cfg)
    before, after = tiny_encoder.model.state_dict(), model.state_dict()
    for name, value in after.items():
        frozen = (
            name.startswith("visual.")
            or name.startswith("transformer.resblocks.0.")
            or name == "token_embedding.weight"
        )
        if frozen:
            assert torch.equal(value, before[name]), name
    assert not torch.equal(after["text_projection"], before["text_projection"])


def test_freezing_image_blocks_keeps_the_stem_and_first_blocks_with_their_statistics(
    tiny_encoder: ClipEncoder,
) -> None:
    ti, tt, _, _ = split(0, n_train=128, n_test=2)
    cfg = ContrastiveConfig(epochs=1, batch_size=32, lr=1e-3, freeze_image_blocks=2)
    model = train_contrastive(tiny_encoder, ti, tt, cfg)
    before, after = tiny_encoder.model.state_dict(), model.state_dict()
    frozen = ("visual.conv", "visual.bn", "visual.layer1.", "visual.layer2.")
    checked = 0
    for name, value in after.items():
        if name.startswith(frozen):  # weights and BatchNorm running statistics alike
            assert torch.equal(value, before[name]), name
            checked += 1
    assert checked > 10
    assert not torch.equal(
        after["visual.layer3.0.conv1.weight"], before["visual.layer3.0.conv1.weight"]
    )
    assert not torch.equal(
        after["visual.layer3.0.bn1.running_mean"], before["visual.layer3.0.bn1.running_mean"]
    )


def test_accumulation_contrasts_the_whole_effective_batch(tiny_encoder: ClipEncoder) -> None:
    ti, tt, _, _ = split(0, n_train=128, n_test=2)
    steps: list[TrainStep] = []
    cfg = ContrastiveConfig(epochs=1, batch_size=16, accumulate=4, lr=1e-3)
    train_contrastive(tiny_encoder, ti, tt, cfg, on_step=steps.append)
    assert len(steps) == 2  # 128 pairs / (16 x 4)
    # A loss over 64 pairs starts near log(64), one over 16 near log(16).
    assert steps[0].loss > np.log(32)


def test_contrastive_training_that_diverges_fails_before_the_weights_take_it(
    tiny_encoder: ClipEncoder,
) -> None:
    ti, tt, _, _ = split(0, n_train=32, n_test=2)
    before = {k: v.clone() for k, v in tiny_encoder.model.state_dict().items()}
    steps: list[TrainStep] = []
    cfg = ContrastiveConfig(epochs=3, batch_size=16, lr=1e10, warmup_steps=0)
    with pytest.raises(TrainingDiverged, match="the loss was nan"):
        train_contrastive(tiny_encoder, ti, tt, cfg, on_step=steps.append)
    assert all(np.isfinite(s.loss) for s in steps)  # what was reported before it stopped
    after = tiny_encoder.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # a copy was trained


def test_training_stops_when_asked(tiny_encoder: ClipEncoder) -> None:
    ti, tt, _, _ = split(0, n_train=128, n_test=2)
    with pytest.raises(TrainingStopped):
        train_contrastive(
            tiny_encoder,
            ti,
            tt,
            ContrastiveConfig(epochs=3, batch_size=16),
            should_stop=lambda: True,
        )


def test_subspace_alignment_from_unpaired_target_data_beats_the_base(
    tuned_on_a: dict[int, Tuned],
) -> None:
    """A model trained on domain a meets domain b (other shades, textures, noise). Subspace
    alignment fitted on unpaired b images and b texts, with no captions paired to images,
    improves text-to-image Recall@5 on held-out b pairs."""
    gains = []
    for seed, run in tuned_on_a.items():
        base = run.tuned
        unpaired = list(samples(2000, 900 + seed, "b"))
        images = base.encode_images([render(s) for s in unpaired[:1000]])
        texts = base.encode_texts([s.caption for s in unpaired[1000:]])  # other pictures' captions
        fmap = fit_subspace_alignment(images, texts, SubspaceConfig(dims=32))
        test = list(samples(300, 500 + seed, "b"))
        captions = [s.caption for s in test]
        xi, xt = base.encode_images([render(s) for s in test]), base.encode_texts(captions)
        before = retrieval_metrics(xi, xt, groups=captions)["t2i_r5"]
        after = retrieval_metrics(fmap.apply(xi, "image"), fmap.apply(xt, "text"), groups=captions)[
            "t2i_r5"
        ]
        gains.append(after - before)
    assert min(gains) > 0 and np.mean(gains) > 1.5, gains


def test_zero_shot_colour_labels_of_the_tuned_model(tuned_on_a: dict[int, Tuned]) -> None:
    """Zero-shot labels (``app.service.zero_shot``: the default templates, a softmax over
    the labels) of held-out generated pictures with the fine-tuned model: the colour is
    the most probable of the four colour labels for at least 9 pictures in 10; the shape
    is measured and printed (this small model, six epochs on 48-pixel pictures, learns
    colours long before shapes)."""
    from app.service.zero_shot import probabilities, prompts
    from models.synthetic import COLOURS, SHAPES

    def accuracy(
        encoder: ClipEncoder, labels: list[str], truth: list[str], templates: list[str] | None
    ) -> float:
        texts = prompts(labels, templates)
        vectors = encoder.encode_texts(texts).reshape(len(labels), len(texts) // len(labels), -1)
        means = vectors.mean(axis=1)
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        images = encoder.encode_images([render(s, side=48) for s in held_out])
        best = [labels[int(np.argmax(probabilities(v, means)))] for v in images]
        return float(np.mean([b == t for b, t in zip(best, truth, strict=True)]))

    held_out = list(samples(200, 5000, "a"))  # seeds the training never saw
    colours, shapes = sorted(COLOURS["a"]), list(SHAPES)
    # Templates that read as the domain's captions do ("a small red circle ..."), as a
    # shop would give its own; the defaults are measured beside them.
    domain = [f"a {size} {{}} {shape}" for size in ("small", "large") for shape in shapes]
    measured = []
    for run in tuned_on_a.values():
        truth = [s.colour for s in held_out]
        colour = accuracy(run.tuned, colours, truth, domain)
        default = accuracy(run.tuned, colours, truth, None)
        shape = accuracy(run.tuned, shapes, [s.shape for s in held_out], None)
        base = accuracy(run.base, colours, truth, domain)
        measured.append((colour, default, shape, base))
    print(f"\nzero-shot (colour, colour with default templates, shape, base) per seed: {measured}")
    assert min(m[0] for m in measured) >= 0.9, measured
    assert max(m[3] for m in measured) < 0.6, measured  # the base model guesses


def test_the_occlusion_map_points_at_the_shape(tuned_on_a: dict[int, Tuned]) -> None:
    """With the fine-tuned model and a held-out picture's own caption (its colour and
    shape) as the query, the map's strongest cell (``app.service.explain``, 7 x 7) falls
    inside the shape's box at least three times as often as a cell drawn at random would
    (the chance rate: the share of cells whose centre lies in the box)."""
    from app.service.explain import occluded, occlusion_map
    from models.synthetic import shape_box

    grid, side = 7, 48
    held_out = list(samples(120, 7000, "a"))
    centres = (np.arange(grid) + 0.5) / grid
    rates = []
    for run in tuned_on_a.values():
        hits = chance = 0.0
        for s in held_out:
            left, top, right, bottom = (v / side for v in shape_box(s, side))
            pixels = run.tuned.preprocess(render(s, side=side))
            vectors = run.tuned.encode_image_tensors(occluded(pixels, grid))
            query = run.tuned.encode_texts([s.caption])[0]
            cells = occlusion_map(vectors, query, grid)
            row, col = np.unravel_index(int(np.argmax(cells)), cells.shape)
            hits += left <= centres[col] <= right and top <= centres[row] <= bottom
            inside_x = (centres >= left) & (centres <= right)
            inside_y = (centres >= top) & (centres <= bottom)
            chance += inside_x.sum() * inside_y.sum() / grid**2
        rates.append((hits / len(held_out), chance / len(held_out)))
    print(f"\nocclusion map: strongest cell in the box, chance rate, per seed: {rates}")
    assert all(rate >= 3 * chance for rate, chance in rates), rates
