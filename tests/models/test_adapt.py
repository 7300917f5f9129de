"""The adaptation layer without a real model: method settings, held-out splits, the
re-embedding plan of an activation, and opening stored versions (a fake encoder)."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.cli.parser import build_parser
from index.types import Modality, StoredItem
from models.adapt.distill import student_cfg
from models.adapt.linear import fit_linear
from models.adapt.methods import METHODS, DistillConfig, LinearConfig, check_hyperparameters
from models.adapt.pairs import Pairs
from models.adapt.reembed import StoredContent, reembed
from models.adapt.run import adapt, evaluate, open_version
from models.decoding import pixels_of
from models.derived import MappedEncoder
from models.errors import InvalidParameters, TrainingDiverged
from models.evaluate import retrieval_metrics
from models.feature_map import FeatureMap
from models.registry import ModelRegistry, ModelVersion, UnknownModel
from models.sources import SourceError
from models.stored import encode_pixels
from models.student import DistilledEncoder, Student
from models.synthetic import as_file
from tests.fakes import FakeEncoder

D = 16


def random_map(seed: int) -> FeatureMap:
    rng = np.random.default_rng(seed)
    return FeatureMap(
        rng.standard_normal((D, D)).astype(np.float32),
        rng.standard_normal((D, D)).astype(np.float32),
        rng.standard_normal(D).astype(np.float32) * 0.1,
        rng.standard_normal(D).astype(np.float32) * 0.1,
    )


def image(i: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (i * 40 % 256, i * 17 % 256, i * 3 % 256))


# --- methods ----------------------------------------------------------------------------------
def test_hyperparameters_are_completed_and_mistakes_named() -> None:
    full = check_hyperparameters("linear", {"epochs": 3})
    assert full["epochs"] == 3 and set(full) == {
        "epochs",
        "lr",
        "weight_decay",
        "batch_size",
        "seed",
    }
    with pytest.raises(InvalidParameters, match="one of contrastive, linear, subspace_alignment"):
        check_hyperparameters("lora", {})
    with pytest.raises(InvalidParameters, match="takes no learning_rate"):
        check_hyperparameters("contrastive", {"learning_rate": 1e-3})


@pytest.mark.parametrize(
    ("method", "hyperparameters", "named"),
    [
        ("linear", {"lr": 1e30}, "lr must be above 0 and at most 1"),
        ("adversarial", {"lr": -1}, "lr must be above 0"),
        ("contrastive", {"lr": 0}, "lr must be above 0"),
        ("contrastive", {"batch_size": 0}, "batch_size must be at least 2"),
        ("linear", {"epochs": True}, "epochs must be an integer"),
        ("linear", {"epochs": 2.5}, "epochs must be an integer"),
        ("distill", {"epochs": 10**9}, "epochs must be at least 1 and at most 10000"),
        ("contrastive", {"lock_image": 1}, "lock_image must be true or false"),
        ("cca", {"reg": "a lot"}, "reg must be a number"),
        ("adversarial", {"warmup_fraction": 2}, "warmup_fraction must be at least 0 and at most 1"),
        ("contrastive", {"seed": -1}, "seed must be at least 0"),
    ],
)
def test_hyperparameters_are_checked_by_type_and_range_at_submit(
    method: str, hyperparameters: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidParameters, match=named):
        check_hyperparameters(method, hyperparameters)


def test_a_diverging_run_fails_with_its_reason_and_nan_scores_are_misses() -> None:
    rng = np.random.default_rng(0)
    xi, xt = rng.standard_normal((64, D)), rng.standard_normal((64, D))
    with pytest.raises(TrainingDiverged, match="the loss was nan"):
        fit_linear(xi.astype(np.float32), xt.astype(np.float32), LinearConfig(lr=1e30, epochs=20))
    # An encoder whose vectors are NaN is no perfect retriever: every pair is a miss...
    nan = np.full((8, D), np.nan, np.float32)
    metrics = retrieval_metrics(nan, nan)
    assert metrics["t2i_r1"] == metrics["t2i_r10"] == metrics["i2t_r10"] == 0.0
    assert metrics["t2i_mrr"] < 0.2
    half = rng.standard_normal((8, D)).astype(np.float32)
    half[::2] = np.nan
    assert retrieval_metrics(half, half)["t2i_r1"] == 50.0
    # ... and evaluating it fails rather than scoring it.
    w = np.full((D, D), np.nan, np.float32)
    broken = MappedEncoder(FakeEncoder(dim=D), FeatureMap(w, w, nan[0], nan[0]), "x")
    with pytest.raises(TrainingDiverged, match="non-finite vectors"):
        evaluate(
            broken, [as_file(image(i)) for i in range(4)], [f"t{i}" for i in range(4)], MAX_PIXELS
        )


def test_the_cli_offers_exactly_the_methods() -> None:
    args = build_parser().parse_args(["finetune", "data", "--method", "subspace_alignment"])
    assert args.method == "subspace_alignment"
    for name in METHODS:
        assert build_parser().parse_args(["finetune", "data", "--method", name]).method == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "data", "--method", "lora"])


# --- pairs ------------------------------------------------------------------------------------
def test_hold_out_is_a_fixed_disjoint_split() -> None:
    files = [as_file(image(i)) for i in range(30)]
    pairs = Pairs([image(i) for i in range(30)], [f"t{i}" for i in range(30)], ["x: bad"], files)
    train, held = pairs.hold_out(0.2, seed=3)
    assert len(held) == 6 and len(train) == 24
    # Each held-out caption keeps its own image's file, for evaluation.
    assert [files.index(f) for f in held.files] == [int(t[1:]) for t in held.texts]
    assert sorted(train.texts + held.texts) == sorted(pairs.texts)
    assert train.skipped == ["x: bad"] and held.skipped == []
    again_train, again_held = pairs.hold_out(0.2, seed=3)
    assert again_held.texts == held.texts and again_train.texts == train.texts
    assert pairs.hold_out(0.2, seed=4)[1].texts != held.texts
    five = Pairs([image(0)] * 5, ["a"] * 5, files=[as_file(image(0))] * 5)
    assert len(five.hold_out(0.01, seed=0)[1]) == 2  # at least two


# --- re-embedding plan ------------------------------------------------------------------------
MAX_PIXELS = 1_000_000


def png(i: int) -> bytes:
    out = io.BytesIO()
    image(i).save(out, "PNG")
    return out.getvalue()


def road(encoder: Any, data: bytes) -> np.ndarray:
    """An image file's vector the way uploads and index jobs make it."""
    return encode_pixels(encoder, [pixels_of(data, encoder.pixels, MAX_PIXELS)[0]])[0]


def stored(encoder: Any, raw: Any = None, n: int = 6) -> tuple[list[StoredItem], dict[str, bytes]]:
    """Items as ``encoder`` stored them: texts and images alternate; ``raw`` gives the
    vectors before its map, if it has one."""
    out, pictures = [], {}
    for i in range(n):
        modality = Modality.TEXT if i % 2 else Modality.IMAGE
        text = f"caption {i}" if modality is Modality.TEXT else None
        if modality is Modality.IMAGE:
            pictures[f"id{i}"] = png(i)
            vec = road(encoder, png(i))
            raw_vec = road(raw, png(i)) if raw else None
        else:
            vec = encoder.encode_texts([text])[0]
            raw_vec = raw.encode_texts([text])[0] if raw else None
        out.append(
            StoredItem(i, f"id{i}", modality, {}, text, None, None, vec, raw_vec, time.time())
        )
    return out, pictures


def loader(pictures: dict[str, bytes]) -> Any:
    def load(item: StoredContent) -> bytes:
        assert isinstance(item, StoredItem)
        return pictures[item.id]

    return load


def what_encoding_gives(
    encoder: Any, items: list[StoredItem], pictures: dict[str, bytes]
) -> np.ndarray:
    return np.stack(
        [
            encoder.encode_texts([it.text])[0]
            if it.modality is Modality.TEXT
            else road(encoder, pictures[it.id])
            for it in items
        ]
    )


def test_a_map_over_the_serving_version_maps_the_stored_vectors_without_encoding() -> None:
    base = FakeEncoder("base")
    new = MappedEncoder(base, random_map(0), "base@linear")
    items, pictures = stored(base)
    base.calls.clear()
    vectors, raws = reembed(items, base, new, loader(pictures), MAX_PIXELS)
    assert not base.calls
    np.testing.assert_allclose(vectors, what_encoding_gives(new, items, pictures), atol=1e-5)
    np.testing.assert_array_equal(np.stack(raws), np.stack([it.embedding for it in items]))


def test_a_sibling_map_and_a_rollback_to_the_base_use_the_kept_raw_vectors() -> None:
    base = FakeEncoder("base")
    current = MappedEncoder(base, random_map(1), "base@a")
    sibling = MappedEncoder(base, random_map(2), "base@b")
    items, pictures = stored(current, raw=base)
    base.calls.clear()
    to_sibling, sibling_raws = reembed(items, current, sibling, loader(pictures), MAX_PIXELS)
    to_base, base_raws = reembed(items, current, base, loader(pictures), MAX_PIXELS)
    assert not base.calls  # neither route encoded anything
    np.testing.assert_allclose(to_sibling, what_encoding_gives(sibling, items, pictures), atol=1e-5)
    np.testing.assert_allclose(to_base, what_encoding_gives(base, items, pictures), atol=1e-6)
    assert all(r is not None for r in sibling_raws) and base_raws == [None] * len(items)


def test_another_model_encodes_the_stored_content_again() -> None:
    old, new = FakeEncoder("old"), FakeEncoder("new")
    items, pictures = stored(old)
    vectors, raws = reembed(items, old, new, loader(pictures), MAX_PIXELS)
    assert new.calls == {"texts": 3, "images": 3}
    np.testing.assert_allclose(vectors, what_encoding_gives(new, items, pictures), atol=1e-6)
    assert raws == [None] * len(items)


def test_missing_raw_vectors_fall_back_to_encoding_and_a_missing_image_is_said() -> None:
    base = FakeEncoder("base")
    current = MappedEncoder(base, random_map(1), "base@a")
    items, pictures = stored(current, raw=None)  # added before raw vectors were kept
    base.calls.clear()
    vectors, _ = reembed(items, current, base, loader(pictures), MAX_PIXELS)
    assert base.calls == {"texts": 3, "images": 3}
    np.testing.assert_allclose(vectors, what_encoding_gives(base, items, pictures), atol=1e-6)

    def no_image(item: StoredContent) -> bytes:
        raise LookupError("no stored image")

    with pytest.raises(LookupError, match="no stored image"):
        reembed(items, current, FakeEncoder("other"), no_image, MAX_PIXELS)


def distilled(teacher: FakeEncoder, version: str) -> DistilledEncoder:
    cfg = student_cfg("xmodal-tiny", DistillConfig())
    return DistilledEncoder(teacher, Student("xmodal-tiny", teacher.dim, cfg), version)


def test_plans_compare_embedding_spaces_so_a_student_counts_as_its_teacher() -> None:
    """A student writes its teacher's vectors: a map over the teacher, from a serving
    student, maps the stored vectors; from a map back to the student, the kept raw vectors
    are the answer; and what is stored under a student is encoded by its teacher."""
    base = FakeEncoder("base")
    student = distilled(base, "base@distill")
    items, pictures = stored(base)
    mapped = MappedEncoder(base, random_map(3), "base@linear")
    base.calls.clear()
    vectors, raws = reembed(items, student, mapped, loader(pictures), MAX_PIXELS)
    assert not base.calls
    np.testing.assert_allclose(vectors, what_encoding_gives(mapped, items, pictures), atol=1e-5)
    mapped_items, _ = stored(mapped, raw=base)
    base.calls.clear()
    back, _ = reembed(mapped_items, mapped, student, loader(pictures), MAX_PIXELS)
    assert not base.calls
    np.testing.assert_allclose(back, what_encoding_gives(base, items, pictures), atol=1e-6)
    other = FakeEncoder("other")
    items, pictures = stored(other)
    base.calls.clear()
    moved, _ = reembed(items, other, student, loader(pictures), MAX_PIXELS)
    assert base.calls == {"texts": 3, "images": 3}  # the teacher's, not the student's
    np.testing.assert_allclose(moved, what_encoding_gives(base, items, pictures), atol=1e-6)


# --- evaluate, adapt, open ----------------------------------------------------------------------
def test_evaluation_runs_every_model_call_through_run_model() -> None:
    enc = FakeEncoder()
    calls: list[str] = []

    def run_model(fn: Any, *args: Any) -> Any:
        calls.append(fn.__name__)
        return fn(*args)

    files = [as_file(image(i)) for i in range(5)]
    metrics = evaluate(enc, files, [f"t{i}" for i in range(5)], MAX_PIXELS, run_model)
    assert calls == ["encode_pixels", "encode_texts"] and metrics["pairs"] == 5
    with pytest.raises(SourceError, match="at least two"):
        evaluate(enc, [as_file(image(0))], ["t0"], MAX_PIXELS)


@pytest.mark.parametrize("method", ["linear", "subspace_alignment", "cca", "adversarial"])
def test_a_mapped_version_is_stored_and_opened_over_its_base(tmp_path: Path, method: str) -> None:
    base = FakeEncoder("base")
    images, texts = [image(i) for i in range(40)], [f"caption {i}" for i in range(40)]
    small = {"linear": {"epochs": 2}, "adversarial": {"epochs": 2}}
    hyper = check_hyperparameters(method, small.get(method, {"dims": 8}))
    adapted = adapt(method, hyper, base, images, texts, "base@" + method)
    assert adapted.artifact == "map.npz" and isinstance(adapted.encoder, MappedEncoder)
    registry = ModelRegistry(tmp_path)
    registry.save(
        ModelVersion("base@" + method, "fake", "base", method, adapted.artifact), adapted.write
    )
    opened = open_version(registry, "base@" + method, {"base": base}, "cpu", tmp_path)
    assert isinstance(opened, MappedEncoder) and opened.inner is base
    np.testing.assert_allclose(
        opened.encode_texts(texts[:5]), adapted.encoder.encode_texts(texts[:5]), atol=1e-6
    )
    assert open_version(registry, "base", {"base": base}, "cpu", tmp_path) is base
    with pytest.raises(UnknownModel):
        open_version(registry, "nothing", {"base": base}, "cpu", tmp_path)
