"""Fine-tune jobs: from a source of pairs to a versioned, evaluated model in the registry.

A fine-tune job reads image-caption pairs from a source under the import root, holds out
an evaluation split (a separate source, or a fixed-seed fraction), evaluates the serving
model on it, adapts it with the chosen method (``models.adapt``), evaluates the result on
the same split and stores it in the model registry with both reports side by side. This
module only orders those steps and reports them on the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from app.service.config import Settings
from index import Job, JobStore
from models.adapt.distill import text_speed
from models.adapt.methods import (
    MIN_PAIRS,
    QUERY_SIDE,
    TrainingStopped,
    TrainStep,
    check_hyperparameters,
)
from models.adapt.pairs import Pairs, load_pairs
from models.adapt.run import RunModel, adapt, direct, evaluate, open_version
from models.encoder import Encoder
from models.registry import ModelRegistry, ModelVersion
from models.sources import SourceError
from models.student import teacher_of

log = logging.getLogger(__name__)

FINETUNE_JOB = "finetune"


class FineTuner:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        jobs: JobStore,
        run_model: RunModel = direct,
        image_side: int | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.jobs = jobs
        # Inference goes through the engine's one model thread, in turn with the requests.
        self.run_model = run_model
        self.image_side = image_side  # training images are kept this large at most

    def load_pairs(self, source: str) -> Pairs:
        s = self.settings
        return load_pairs(
            s.import_root_dir,
            source,
            s.max_upload_bytes,
            s.max_image_pixels,
            s.decode_workers,
            side=self.image_side,
        )

    def encoder_for(self, version: str, loaded: dict[str, Encoder]) -> Encoder:
        return open_version(
            self.registry, version, loaded, self.settings.device, self.settings.model_cache_dir
        )

    def evaluate_source(
        self, source: str, version: str, loaded: dict[str, Encoder]
    ) -> dict[str, Any]:
        """What ``/v1/evaluate`` and ``xmodal eval`` report: ``version`` on ``source``."""
        encoder = self.encoder_for(version, loaded)
        pairs = self.load_pairs(source)
        return {
            "model": encoder.version,
            "source": source,
            "metrics": evaluate(
                encoder, pairs.files, pairs.texts, self.settings.max_image_pixels, self.run_model
            ),
            "skipped": pairs.skipped[:20],
        }

    def run(self, job: Job, encoder: Encoder, should_stop: Callable[[], bool]) -> ModelVersion:
        params = job.params
        method = params["method"]
        hyper = check_hyperparameters(method, params.get("hyperparameters", {}))
        train = self.load_pairs(params["source"])
        if params.get("eval_source"):
            held = self.load_pairs(params["eval_source"])
            train.skipped += held.skipped
        else:
            train, held = train.hold_out(
                float(params.get("eval_fraction", 0.1)), params.get("seed", 0)
            )
        if len(train) < MIN_PAIRS:
            raise SourceError(
                f"{len(train)} training pairs; fine-tuning needs at least {MIN_PAIRS}"
            )
        target = self.load_pairs(params["target_source"]) if params.get("target_source") else None
        data = {
            "source": params["source"],
            "target_source": params.get("target_source"),
            "target_items": None if target is None else len(target),
            "eval_source": params.get("eval_source"),
            "eval_fraction": None
            if params.get("eval_source")
            else params.get("eval_fraction", 0.1),
            "train_pairs": len(train),
            "eval_pairs": len(held),
            "skipped": len(train.skipped),
        }
        history: list[dict[str, float]] = []
        detail: dict[str, Any] = {
            "phase": "evaluating base",
            "data": data,
            "skipped": train.skipped[:20],
        }
        self.jobs.report(job.id, detail, done=0)
        if method in QUERY_SIDE:
            encoder = teacher_of(encoder)  # a student is measured against its teacher
        pixels = self.settings.max_image_pixels
        base_metrics = evaluate(encoder, held.files, held.texts, pixels, self.run_model)
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
        adapted = adapt(
            method,
            hyper,
            encoder,
            train.images,
            train.texts,
            version_name,
            self.run_model,
            on_step=on_step,
            should_stop=should_stop,
            target=None if target is None else (target.images, target.texts),
        )
        detail["phase"] = "evaluating result"
        self.jobs.report(job.id, detail)
        result_metrics = evaluate(adapted.encoder, held.files, held.texts, pixels, self.run_model)
        metrics = {"base": base_metrics, "result": result_metrics}
        if method in QUERY_SIDE:
            detail["phase"] = "timing"
            self.jobs.report(job.id, detail)
            metrics.update(self._speeds(encoder, adapted.encoder, held.texts + train.texts))
            detail["speed"] = metrics["speed"]
        version = ModelVersion(
            version=version_name,
            architecture=encoder.model_name,
            base=adapted.base,
            method=method,
            artifact=adapted.artifact,
            data=data,
            hyperparameters=hyper,
            metrics=metrics,
            history=history,
        )
        # A cancel answered during the evaluation ends the job here, with no version saved;
        # from here on a cancel is refused (409), so a cancelled job never leaves one.
        detail["phase"] = "saving"
        if not self.jobs.pass_point_of_no_return(job.id, detail):
            raise TrainingStopped
        self.registry.save(version, adapted.write)
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

    def _speeds(self, base: Encoder, new: Encoder, texts: list[str]) -> dict[str, dict[str, float]]:
        """How fast the base and the new version encode query texts, on this machine, in
        turn with the requests (so under load both read slower alike)."""
        sample = texts[:256]
        before = text_speed(base.encode_queries, sample, self.run_model)
        after = text_speed(new.encode_queries, sample, self.run_model)
        speed = {f"base_{k}": v for k, v in before.items()}
        speed.update({f"result_{k}": v for k, v in after.items()})
        speed["speedup"] = round(after["texts_per_second"] / before["texts_per_second"], 3)
        return {"speed": speed}


def thin(points: list[dict[str, float]], most: int) -> list[dict[str, float]]:
    """At most ``most`` points spread over the whole run, the first and the last included."""
    if len(points) <= most:
        return list(points)
    stride = (len(points) - 1) / (most - 1)
    return [points[round(i * stride)] for i in range(most)]
