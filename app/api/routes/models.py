from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.api.auth import AdminAccess, ReadAccess
from app.api.bodies import ControlJSONRoute
from app.api.deps import EngineDep, JobsDep, StackDep
from app.api.openapi import errors
from app.api.schemas import JobCreated, RequestBody, accepted
from app.service.activation import ACTIVATE_JOB
from app.service.engine import Engine
from app.service.finetune import FINETUNE_JOB
from models.adapt.methods import METHODS
from models.registry import ModelVersion

router = APIRouter(route_class=ControlJSONRoute, tags=["models"], dependencies=[ReadAccess])


class FinetuneRequest(RequestBody):
    source: str = Field(
        min_length=1, description="Manifest or folder of image-caption pairs under the import root."
    )
    method: str = Field(
        "contrastive",
        description="The adaptation method (see the README's method table).",
        json_schema_extra={"enum": list(METHODS)},
    )
    eval_source: str | None = Field(
        None, description="Separate evaluation pairs (else a held-out fraction)."
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="Held-out share of the pairs (fixed seed)."
    )
    target_source: str | None = Field(
        None,
        description="Images and texts of the domain to adapt to, pairing ignored: the "
        "domain discriminator of `adversarial`, the target of `subspace_alignment`.",
    )
    seed: int = 0
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="The method's settings; see the README."
    )


class EvaluateRequest(RequestBody):
    model: str | None = Field(None, description="A model version (default: the one serving).")
    source: str = Field(
        min_length=1, description="Manifest or folder of image-caption pairs under the import root."
    )


class ModelOut(BaseModel):
    version: str
    base: str | None
    method: str
    metrics: dict[str, dict[str, float]]
    active: bool
    beats_base: bool | None = None
    architecture: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    created_at: float | None = None


class OpenAIModel(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "xmodal"


class ModelList(BaseModel):
    models: list[ModelOut]
    # The same versions as OpenAI's model list has them, for its clients.
    object: str = "list"
    data: list[OpenAIModel] = Field(default_factory=list)


@router.post(
    "/v1/finetune",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminAccess],
    responses=errors(400),
)
async def start_finetune(body: FinetuneRequest, jobs: JobsDep, response: Response) -> JobCreated:
    """Fine-tune the serving model on pairs from the import root; poll `GET /v1/jobs/{id}`."""
    job = await run_in_threadpool(jobs.submit, FINETUNE_JOB, None, body.model_dump())
    return accepted(job, response)


@router.post("/v1/evaluate", dependencies=[AdminAccess], responses=errors(400, 404))
async def evaluate(body: EvaluateRequest, stack: StackDep) -> dict[str, Any]:
    """Recall@1/5/10 both ways, mean reciprocal rank and median rank on a set of pairs."""
    engine = stack.engine
    return await run_in_threadpool(
        stack.finetuner.evaluate_source, body.source, body.model or engine.version, engine.encoders
    )


def _model_out(v: ModelVersion, active_version: str) -> ModelOut:
    """A version as the listing shows it; the single-version route adds its lineage."""
    return ModelOut(
        version=v.version,
        base=v.base,
        method=v.method,
        metrics=v.metrics,
        active=v.version == active_version,
        beats_base=v.beats_base,
    )


@router.get("/v1/models")
async def list_models(stack: StackDep, engine: EngineDep) -> ModelList:
    """The serving model and every fine-tuned version, oldest first."""
    versions = await run_in_threadpool(stack.registry.versions)
    out = [_model_out(v, engine.version) for v in versions]
    out.insert(0, _configured_out(engine))
    created = {v.version: int(v.created_at or 0) for v in versions}
    data = [OpenAIModel(id=m.version, created=created.get(m.version, 0)) for m in out]
    return ModelList(models=out, data=data)


def _configured_out(engine: Engine) -> ModelOut:
    """The configured model: the base every fine-tuned version builds on."""
    configured = engine.configured_version
    return ModelOut(
        version=configured,
        base=None,
        method="pretrained",
        metrics={},
        active=configured == engine.version,
        architecture=engine.encoders[configured].model_name,
    )


@router.get("/v1/models/{version:path}", responses=errors(404))
async def get_model(version: str, stack: StackDep, engine: EngineDep) -> ModelOut:
    """One version with its lineage (base, method, data, hyperparameters) and evaluation."""
    if version == engine.configured_version:  # listed by GET /v1/models, so found here too
        return _configured_out(engine)
    v = await run_in_threadpool(stack.registry.get, version)
    return _model_out(v, engine.version).model_copy(
        update={
            "architecture": v.architecture,
            "data": v.data,
            "hyperparameters": v.hyperparameters,
            "created_at": v.created_at,
        }
    )


class ActivateRequest(RequestBody):
    force: bool = Field(False, description="Activate even if the version did not beat its base.")


@router.post(
    "/v1/models/{version:path}/activate",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminAccess],
    responses=errors(404, 409),
)
async def activate_model(
    version: str, jobs: JobsDep, response: Response, body: ActivateRequest | None = None
) -> JobCreated:
    """Re-embed every collection with ``version`` in the background, then switch to it at
    once; refused unless the version beat its base on its evaluation (or ``force``)."""
    params = {"version": version, "force": bool(body and body.force)}
    job = await run_in_threadpool(jobs.submit, ACTIVATE_JOB, None, params)
    return accepted(job, response)


@router.post(
    "/v1/models/{version:path}/rollback",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminAccess],
    responses=errors(404, 409),
)
async def rollback_model(version: str, jobs: JobsDep, response: Response) -> JobCreated:
    """Go back to the version that was active before ``version`` (the active one)."""
    params = {"version": version, "rollback": True}
    job = await run_in_threadpool(jobs.submit, ACTIVATE_JOB, None, params)
    return accepted(job, response)
