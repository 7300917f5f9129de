"""Fine-tune and activation jobs: thin runners over the fine-tuner and the activator."""

from __future__ import annotations

from typing import Any

from app.service.activation import ACTIVATE_JOB, Activator
from app.service.config import Settings
from app.service.engine import Engine
from app.service.errors import Conflict
from app.service.finetune import FINETUNE_JOB, FineTuner
from app.service.jobs.loop import JobContext
from index import JobStore
from models.adapt.distill import free_memory, student_cfg
from models.adapt.methods import TARGETED, DistillConfig, TrainingStopped, check_hyperparameters
from models.errors import InvalidParameters
from models.registry import ModelRegistry
from models.sources import open_source
from models.student import teacher_of


class FinetuneRunner:
    kind = FINETUNE_JOB

    def __init__(
        self, settings: Settings, jobs: JobStore, engine: Engine, finetuner: FineTuner
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.engine = engine
        self.finetuner = finetuner

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        root = self.settings.import_root_dir
        open_source(root, params["source"])  # 400 now for a bad source
        if params.get("eval_source"):
            open_source(root, params["eval_source"])
        if params.get("target_source"):
            if params["method"] not in TARGETED:
                raise InvalidParameters(
                    f"target_source is for {' and '.join(sorted(TARGETED))}, not {params['method']}"
                )
            open_source(root, params["target_source"])
        params["hyperparameters"] = check_hyperparameters(
            params["method"], params.get("hyperparameters") or {}
        )
        if params["method"] == "distill":  # the student's shape against the teacher's
            teacher = teacher_of(self.engine.encoder)
            config = DistillConfig(**params["hyperparameters"])
            student_cfg(teacher.model_name, config, free_memory(self.engine.encoder.device))
        return params

    def run(self, ctx: JobContext) -> None:
        try:
            self.finetuner.run(ctx.job, self.engine.encoder, ctx.should_stop)
        except TrainingStopped:  # a server stopping: the job starts over after the restart
            ctx.interrupted()


class ActivateRunner:
    """Activation and rollback jobs. The gate is here, so that every door (the API, the
    CLI) refuses the same versions: an activation needs a version that beat its base on
    its evaluation (or ``force``); a rollback names the active version and goes back to
    the one active before it."""

    kind = ACTIVATE_JOB

    def __init__(self, jobs: JobStore, activator: Activator, registry: ModelRegistry) -> None:
        self.jobs = jobs
        self.activator = activator
        self.registry = registry

    def check(self, collection: str | None, params: dict[str, Any]) -> dict[str, Any]:
        engine = self.activator.engine
        version = params["version"]
        if params.get("rollback"):
            if version != engine.version:
                raise Conflict(
                    f"{version} is not the active version ({engine.version} is)", "not_active"
                )
            history = self.activator.state.history
            if not history:
                raise Conflict(f"no version was active before {version}", "no_previous")
            return {"version": history[-1], "rollback": True}
        if version == engine.version:
            raise Conflict(f"{version} is already active", "already_active")
        if version != engine.configured_version:
            record = self.registry.get(version)  # 404 for an unknown version
            if not record.beats_base and not params.get("force"):
                raise Conflict(
                    f"{version} did not beat its base on its evaluation;"
                    " pass force=true to activate it anyway",
                    "not_better",
                )
        return {"version": version, "rollback": False}

    def run(self, ctx: JobContext) -> None:
        try:
            self.activator.run(ctx.job, ctx.should_stop)
        except TrainingStopped:
            ctx.interrupted()
