"""Fine-tuning jobs and evaluation: from a manifest of pairs to a versioned, evaluated model.

A fine-tune job reads image-caption pairs from a source under the import root, holds out
an evaluation split (a separate source, or a fixed-seed fraction), evaluates the serving
model on it, trains with the chosen method, evaluates the result on the same split and
stores the result in the model registry with both reports side by side.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.config import Settings
from index import Job, JobStore
from models import ClipEncoder, Encoder, MappedEncoder, decode_image
from models.encoder import load_encoder
from models.errors import ImageDecodeError, ImageTooLarge, InvalidParameters
from models.evaluate import retrieval_metrics
from models.feature_map import FeatureMap
from models.finetune import (
    ContrastiveConfig,
    LinearConfig,
    SubspaceConfig,
    TrainStep,
    fit_linear,
    fit_subspace_alignment,
    train_contrastive,
)
from models.registry import ModelRegistry, ModelVersion
from models.sources import Pair, SourceError, open_source, read_pairs

log = logging.getLogger(__name__)

FINETUNE_JOB = "finetune"
CONFIGS: dict[str, type[ContrastiveConfig] | type[LinearConfig] | type[SubspaceConfig]] = {
    "contrastive": ContrastiveConfig,
    "linear": LinearConfig,
    "subspace_alignment": SubspaceConfig,
}
MIN_PAIRS = 4
_ENCODE_BATCH = 256


def check_hyperparameters(method: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The method's full configuration, or ``InvalidParameters`` naming what is wrong."""
    if method not in CONFIGS:
        raise InvalidParameters(f"unknown method {method!r}; one of {', '.join(CONFIGS)}")
    config = CONFIGS[method]
    known = {f.name: f.type for f in fields(config)}
    unknown = sorted(set(hyperparameters) - set(known))
    if unknown:
        raise InvalidParameters(
            f"{method} takes no {', '.join(unknown)}; it takes {', '.join(known)}"
        )
    try:
        return config(**hyperparameters).as_dict()
    except TypeError as exc:
        raise InvalidParameters(f"bad hyperparameters for {method}: {exc}") from exc


class FineTuner:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        jobs: JobStore,
        run_model: Callable[..., Any] = lambda fn, *args: fn(*args),
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.jobs = jobs
        # Inference goes through the engine's one model thread, in turn with the requests.
        self.run_model = run_model

    # --- evaluation -----------------------------------------------------------------------------
    def load_pairs(self, source: str) -> tuple[list[Image.Image], list[str], list[str]]:
        """Decoded images and captions of ``source``; the third list says what was skipped."""
        pairs, skipped = read_pairs(open_source(self.settings.import_root_dir, source))
        images, texts = [], []
        with ThreadPoolExecutor(max(2, self.settings.decode_workers)) as pool:
            for pair, image in zip(pairs, pool.map(self._decode, pairs), strict=True):
                if isinstance(image, str):
                    skipped.append(f"{pair.id}: {image}")
                else:
                    images.append(image)
                    texts.append(pair.text)
        return images, texts, skipped

    def _decode(self, pair: Pair) -> Image.Image | str:
        try:
            data = pair.image.read(self.settings.max_upload_bytes)
            return decode_image(data, self.settings.max_image_pixels).image
        except FileNotFoundError:
            return "file not found"
        except (OSError, ValueError, ImageDecodeError, ImageTooLarge) as exc:
            return str(exc)

    def evaluate(
        self, encoder: Encoder, images: Sequence[Image.Image], texts: Sequence[str]
    ) -> dict[str, float]:
        if len(images) < 2:
            raise SourceError("evaluation needs at least two image-caption pairs")
        xi = self._embed(encoder.encode_images, images)
        xt = self._embed(encoder.encode_texts, texts)
        # Identical captions are interchangeable: a retrieval of either counts.
        return retrieval_metrics(xi, xt, groups=texts)

    def encoder_for(self, version: str, loaded: Mapping[str, Encoder]) -> Encoder:
        """An encoder for ``version``: one already loaded, or one built from the registry
        (a mapped version on top of an encoder for its base)."""
        if version in loaded:
            return loaded[version]
        record = self.registry.get(version)
        path = self.registry.artifact_path(record)
        device = str(next(iter(loaded.values())).device) if loaded else self.settings.device
        if record.method == "contrastive":
            return load_encoder(
                record.architecture,
                str(path),
                device,
                self.settings.model_cache_dir,
                version=record.version,
            )
        base = self.encoder_for(record.base, loaded)
        return MappedEncoder(base, FeatureMap.load(path), record.version)

    # --- training -------------------------------------------------------------------------------
    def run(self, job: Job, encoder: Encoder, should_stop: Callable[[], bool]) -> ModelVersion:
        params = job.params
        method = params["method"]
        hyper = check_hyperparameters(method, params.get("hyperparameters", {}))
        images, texts, skipped = self.load_pairs(params["source"])
        if params.get("eval_source"):
            eval_images, eval_texts, eval_skipped = self.load_pairs(params["eval_source"])
            skipped += eval_skipped
        else:
            order = list(range(len(images)))
            random.Random(params.get("seed", 0)).shuffle(order)
            cut = max(2, round(len(order) * float(params.get("eval_fraction", 0.1))))
            held, kept = set(order[:cut]), order[cut:]
            eval_images = [images[i] for i in sorted(held)]
            eval_texts = [texts[i] for i in sorted(held)]
            images, texts = [images[i] for i in kept], [texts[i] for i in kept]
        if len(images) < MIN_PAIRS:
            raise SourceError(
                f"{len(images)} training pairs; fine-tuning needs at least {MIN_PAIRS}"
            )
        data = {
            "source": params["source"],
            "eval_source": params.get("eval_source"),
            "eval_fraction": None
            if params.get("eval_source")
            else params.get("eval_fraction", 0.1),
            "train_pairs": len(images),
            "eval_pairs": len(eval_images),
            "skipped": len(skipped),
        }
        history: list[dict[str, float]] = []
        detail: dict[str, Any] = {"phase": "evaluating base", "data": data, "skipped": skipped[:20]}
        self.jobs.report(job.id, detail, done=0)
        base_metrics = self.evaluate(encoder, eval_images, eval_texts)
        detail["base_metrics"] = base_metrics

        last = time.monotonic()

        def on_step(step: TrainStep) -> None:
            nonlocal last
            point = {
                "epoch": step.epoch,
                "step": step.step,
                "loss": round(step.loss, 5),
                "lr": step.lr,
            }
            history.append(point)
            now = time.monotonic()
            if now - last > 0.5 or step.step + 1 == step.steps:
                detail.update(
                    phase="training",
                    progress={**point, "samples_per_second": round(step.samples_per_second, 1)},
                )
                detail["loss_curve"] = thin(history, 200)
                self.jobs.report(
                    job.id, detail, done=step.step + 1, total=step.steps, seconds=now - last
                )
                last = now

        version_name = f"{encoder.model_name}@{method}-{job.id[:8]}"
        detail["phase"] = "training"
        self.jobs.report(job.id, detail)
        result: Encoder
        write: Callable[[Path], object]
        if method == "contrastive":
            cfg = ContrastiveConfig(**hyper)
            # A mapped version trains the OpenCLIP model under its map, as it always did.
            clip = encoder.clip if isinstance(encoder, MappedEncoder) else encoder
            assert isinstance(clip, ClipEncoder)
            model = train_contrastive(
                clip, images, texts, cfg, on_step=on_step, should_stop=should_stop
            )
            tuned = ClipEncoder(
                model, clip.preprocess, clip.tokenizer, clip.device, clip.model_name, version_name
            )
            result = tuned
            artifact = "checkpoint.pt"
            write = tuned.save_checkpoint
        else:
            xi = self._embed(encoder.encode_images, images)
            xt = self._embed(encoder.encode_texts, texts)
            if method == "linear":
                fmap = fit_linear(xi, xt, LinearConfig(**hyper), on_step=on_step)
            else:
                # Unsupervised: the pairing is deliberately thrown away.
                shuffled = xt[np.random.default_rng(0).permutation(len(xt))]
                fmap = fit_subspace_alignment(xi, shuffled, SubspaceConfig(**hyper))
            result = MappedEncoder(encoder, fmap, version_name)
            artifact = "map.npz"
            write = fmap.save
        detail["phase"] = "evaluating result"
        self.jobs.report(job.id, detail)
        result_metrics = self.evaluate(result, eval_images, eval_texts)
        version = ModelVersion(
            version=version_name,
            architecture=encoder.model_name,
            base=encoder.version,
            method=method,
            artifact=artifact,
            data=data,
            hyperparameters=hyper,
            metrics={"base": base_metrics, "result": result_metrics},
            history=history,
        )
        self.registry.save(version, write)
        detail.update(
            phase="done",
            version=version_name,
            result_metrics=result_metrics,
            beats_base=version.beats_base,
        )
        self.jobs.report(job.id, detail, seconds=time.monotonic() - last)
        log.info(
            "job %s: %s -> %s (beats base: %s)",
            job.id,
            encoder.version,
            version_name,
            version.beats_base,
        )
        return version

    def _embed(self, fn: Callable[[Sequence[Any]], np.ndarray], items: Sequence[Any]) -> np.ndarray:
        return np.concatenate(
            [
                self.run_model(fn, items[i : i + _ENCODE_BATCH])
                for i in range(0, len(items), _ENCODE_BATCH)
            ]
        )


def thin(points: list[dict[str, float]], most: int) -> list[dict[str, float]]:
    """At most ``most`` points spread over the whole run, the first and the last included."""
    if len(points) <= most:
        return list(points)
    stride = (len(points) - 1) / (most - 1)
    return [points[round(i * stride)] for i in range(most)]
