"""One entry to the methods: evaluate an encoder on pairs, adapt it with a named method,
and open a stored version (a fine-tuned checkpoint, or a map over its base).

Every model call goes through ``run_model(fn, *args)``: the server passes its engine's
one model thread, so training jobs and evaluations take turns with the requests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.adapt.adversarial import fit_adversarial
from models.adapt.cca import fit_cca
from models.adapt.contrastive import train_contrastive
from models.adapt.distill import fit_distill
from models.adapt.linear import fit_linear
from models.adapt.methods import (
    MAPS,
    AdversarialConfig,
    CcaConfig,
    ContrastiveConfig,
    DistillConfig,
    LinearConfig,
    StepCallback,
    StopCheck,
    SubspaceConfig,
)
from models.adapt.subspace import fit_subspace_alignment
from models.derived import MappedEncoder, clip_of
from models.encoder import Encoder, load_encoder
from models.errors import TrainingDiverged
from models.evaluate import retrieval_metrics
from models.feature_map import FeatureMap
from models.registry import ModelRegistry
from models.sources import SourceError
from models.stored import encode_image_files
from models.student import STUDENT_FILE, DistilledEncoder, Student, teacher_of

RunModel = Callable[..., Any]
ENCODE_BATCH = 256


def direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def embed(
    encode: Callable[[Sequence[Any]], np.ndarray],
    items: Sequence[Any],
    run_model: RunModel = direct,
) -> np.ndarray:
    """``encode`` over ``items`` in batches, each one model call."""
    return np.concatenate(
        [run_model(encode, items[i : i + ENCODE_BATCH]) for i in range(0, len(items), ENCODE_BATCH)]
    )


def evaluate(
    encoder: Encoder,
    files: Sequence[Callable[[], bytes]],
    texts: Sequence[str],
    max_pixels: int,
    run_model: RunModel = direct,
) -> dict[str, float]:
    """Recall@K both ways, mean reciprocal rank and median rank of ``encoder`` on the
    pairs: each image's file (read by its loader) with its caption. Images are encoded
    from their bytes the way uploads and index jobs encode them (``models.stored``), so
    the metrics are those of the vectors a search would find."""
    if len(files) < 2:
        raise SourceError("evaluation needs at least two image-caption pairs")
    xi = encode_image_files(encoder, files, max_pixels, run_model)
    xt = embed(encoder.encode_texts, texts, run_model)
    # Queries: what a text search embeds; stored texts (image-to-text): what an upload does.
    xq = embed(encoder.encode_queries, texts, run_model) if encoder.separate_queries else None
    for what, x in (("images", xi), ("texts", xt), ("queries", xq)):
        if x is not None and not np.all(np.isfinite(x)):
            raise TrainingDiverged(
                f"{encoder.version} gives non-finite vectors for its {what}: it cannot serve"
            )
    # Identical captions are interchangeable: a retrieval of either counts.
    return retrieval_metrics(xi, xt, groups=texts, query_vectors=xq)


@dataclass
class Adapted:
    encoder: Encoder  # serves the new version
    artifact: str  # file name in the version's folder
    write: Callable[[Path], object]  # writes the artifact there
    base: str  # the version it builds on


def adapt(
    method: str,
    hyperparameters: dict[str, Any],
    encoder: Encoder,
    images: Sequence[Image.Image],
    texts: Sequence[str],
    version: str,
    run_model: RunModel = direct,
    on_step: StepCallback | None = None,
    should_stop: StopCheck | None = None,
    target: tuple[Sequence[Image.Image], Sequence[str]] | None = None,
) -> Adapted:
    """``encoder`` adapted to the pairs by ``method`` (checked hyperparameters), as ``version``;
    ``target``: images and texts of the domain to adapt to, their pairing ignored (the
    ``TARGETED`` methods)."""
    if method == "distill":
        # The student learns the teacher's text vectors for the captions; pairs unused.
        teacher = teacher_of(encoder)
        unique = sorted(set(texts))
        targets = embed(teacher.encode_texts, unique, run_model)
        config = DistillConfig(**hyperparameters)
        student = fit_distill(clip_of(teacher), unique, targets, config, on_step, should_stop)
        distilled = DistilledEncoder(teacher, student, version)
        return Adapted(distilled, STUDENT_FILE, student.save, teacher.version)
    if method not in MAPS:
        # A mapped version trains the OpenCLIP model under its map, as it always did.
        clip = clip_of(encoder)
        model = train_contrastive(
            clip,
            images,
            texts,
            ContrastiveConfig(**hyperparameters),
            on_step=on_step,
            should_stop=should_stop,
        )
        tuned = clip.with_model(model, version)
        return Adapted(tuned, "checkpoint.pt", tuned.save_checkpoint, encoder.version)
    xi = embed(encoder.encode_images, images, run_model)
    xt = embed(encoder.encode_texts, texts, run_model)
    if method == "linear":
        fmap = fit_linear(xi, xt, LinearConfig(**hyperparameters), on_step=on_step)
    elif method == "cca":
        fmap, _ = fit_cca(xi, xt, CcaConfig(**hyperparameters))
    else:
        ti, tt = xi, xt
        if target is not None:
            ti = embed(encoder.encode_images, target[0], run_model)
            tt = embed(encoder.encode_texts, target[1], run_model)
        if method == "adversarial":
            fmap, _ = fit_adversarial(
                xi,
                xt,
                AdversarialConfig(**hyperparameters),
                on_step=on_step,
                target_images=None if target is None else ti,
                target_texts=None if target is None else tt,
            )
        else:
            # Unsupervised: the pairing is deliberately thrown away.
            shuffled = tt[np.random.default_rng(0).permutation(len(tt))]
            fmap = fit_subspace_alignment(ti, shuffled, SubspaceConfig(**hyperparameters))
    return Adapted(MappedEncoder(encoder, fmap, version), "map.npz", fmap.save, encoder.version)


def open_version(
    registry: ModelRegistry,
    version: str,
    loaded: Mapping[str, Encoder],
    device: str,
    cache_dir: str | os.PathLike[str],
) -> Encoder:
    """An encoder for ``version``: one already loaded, or one built from the registry (a
    mapped version on top of an encoder for its base), on the device of those loaded."""
    if version in loaded:
        return loaded[version]
    record = registry.get(version)
    path = registry.artifact_path(record)
    if loaded:
        device = str(next(iter(loaded.values())).device)
    if record.method == "distill":
        teacher = open_version(registry, record.base, loaded, device, cache_dir)
        student = Student.load(path, teacher.device)
        return DistilledEncoder(teacher, student, record.version)
    if record.method not in MAPS:
        opened = load_encoder(record.architecture, str(path), device, cache_dir, version=version)
        if any(getattr(e, "int8_text", False) for e in loaded.values()):
            opened.enable_int8_text()  # as the serving encoder runs
        return opened
    base = open_version(registry, record.base, loaded, device, cache_dir)
    return MappedEncoder(base, FeatureMap.load(path), record.version)
