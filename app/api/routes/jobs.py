from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, Strict
from starlette.concurrency import run_in_threadpool

from app.api.auth import ReadAccess, WriteAccess, check_collection, grant_of
from app.api.bodies import ControlJSONRoute
from app.api.deps import JobsDep, StackDep
from app.api.openapi import errors
from app.api.schemas import JobCreated, RequestBody, accepted
from app.service.access import ADMIN, WRITE, opens
from app.service.jobs import DUPLICATES_JOB, INDEX_JOB, REINDEX_JOB, job_summary
from index import Modality, UnknownJob
from models.sources import Format

router = APIRouter(route_class=ControlJSONRoute, tags=["jobs"], dependencies=[ReadAccess])


class IndexJobCreate(RequestBody):
    source: str = Field(
        min_length=1,
        description="Path relative to the import root: a JSONL/CSV/Parquet manifest, a folder "
        "of images, or WebDataset .tar shards (a file or a folder of them).",
    )
    format: Format | None = Field(None, description="The source's format (default: from the path).")
    engine: Literal["local", "ray"] = Field(
        "local",
        description="`local`: decoding threads and the server's model; `ray`: Ray tasks "
        "decode and an actor pool encodes, on the cluster XMODAL_RAY_ADDRESS names.",
    )


class DuplicatesJobCreate(RequestBody):
    threshold: float = Field(
        0.95, gt=0, le=1, description="Cosine at or above which two items are near-duplicates."
    )
    modality: Annotated[Modality, Strict(False)] = Field(
        Modality.IMAGE, description="Which items to compare."
    )


class ReindexJobCreate(RequestBody):
    index: str = Field(
        min_length=1,
        max_length=200,
        description="The FAISS index spec to move to (the grammar of a collection's `index`).",
    )


class JobOut(BaseModel):
    id: str
    kind: str
    state: str
    collection: str | None
    params: dict[str, Any]
    total: int | None
    done: int
    failed: int
    items_per_second: float | None
    eta_seconds: float | None
    errors: list[dict[str, Any]]
    message: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    detail: dict[str, Any]
    server: str | None = Field(
        None, description="The id of the server that runs the job, or ran it last."
    )


class JobList(BaseModel):
    jobs: list[JobOut]


@router.post(
    "/v1/collections/{name}/jobs/index",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[WriteAccess],
    responses=errors(400, 404, 409),
)
async def start_index_job(
    name: str, body: IndexJobCreate, jobs: JobsDep, response: Response, request: Request
) -> JobCreated:
    """Index a corpus from the import root in the background; poll `GET /v1/jobs/{id}`.
    A key that is not an administrator's names a source under `<import root>/<name>/`,
    relative to that folder."""
    grant = grant_of(request)
    params = {
        "source": body.source,
        "format": body.format,
        "engine": body.engine,
        "scoped": grant is not None and grant.level < ADMIN,
    }
    job = await run_in_threadpool(jobs.submit, INDEX_JOB, name, params)
    return accepted(job, response)


@router.post(
    "/v1/collections/{name}/jobs/duplicates",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[WriteAccess],
    responses=errors(400, 404, 409, 429),
)
async def start_duplicates_job(
    name: str, body: DuplicatesJobCreate, jobs: JobsDep, response: Response
) -> JobCreated:
    """Find the groups of near-duplicate items of one modality in the background; the
    groups are at `GET /v1/jobs/{id}/result` once it has succeeded."""
    params = {"threshold": body.threshold, "modality": body.modality.value}
    job = await run_in_threadpool(jobs.submit, DUPLICATES_JOB, name, params)
    return accepted(job, response)


@router.post(
    "/v1/collections/{name}/jobs/reindex",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[WriteAccess],
    responses=errors(400, 404, 409, 429),
)
async def start_reindex_job(
    name: str, body: ReindexJobCreate, jobs: JobsDep, response: Response
) -> JobCreated:
    """Move the collection to another index spec without re-embedding: built and measured
    from the stored vectors while the old index serves, then switched at once; the report
    (recall against exact search, latency, bytes per vector) is on the job and the
    collection. Re-index to `previous_index` to switch back."""
    job = await run_in_threadpool(jobs.submit, REINDEX_JOB, name, {"index": body.index})
    return accepted(job, response)


@router.get(
    "/v1/jobs/{job_id}/result",
    responses={200: {"content": {"application/json": {}}}, **errors(404)},
    response_class=FileResponse,
)
async def job_result(job_id: str, jobs: JobsDep, stack: StackDep, request: Request) -> FileResponse:
    """What a finished duplicates job found: `{"collection", "modality", "threshold",
    "groups": [{"ids": [...]}]}`, largest groups first, ids in the order they were added."""
    job = await run_in_threadpool(jobs.jobs.get, job_id)
    check_collection(request, job.collection)
    path = stack.duplicates.result_path(job.id)
    if job.kind != DUPLICATES_JOB or job.state.value != "succeeded" or not path.exists():
        raise UnknownJob(f"job {job_id!r} has no result (only a succeeded duplicates job has)")
    return FileResponse(path, media_type="application/json", filename=f"duplicates-{job.id}.json")


@router.get("/v1/jobs")
async def list_jobs(jobs: JobsDep, request: Request) -> JobList:
    """The 100 most recent jobs, newest first (those of the key's collections)."""
    listed = await run_in_threadpool(jobs.jobs.recent)
    grant = grant_of(request)
    shown = [j for j in listed if opens(grant, j.collection)]
    return JobList(jobs=[JobOut(**job_summary(j)) for j in shown])


@router.get("/v1/jobs/{job_id}", responses=errors(403, 404))
async def get_job(job_id: str, jobs: JobsDep, request: Request) -> JobOut:
    """State and progress: counts, rate, ETA and the first failures with their reasons."""
    job = await run_in_threadpool(jobs.jobs.get, job_id)
    check_collection(request, job.collection)
    return JobOut(**job_summary(job))


@router.delete("/v1/jobs/{job_id}", dependencies=[WriteAccess], responses=errors(403, 404, 409))
async def cancel_job(job_id: str, jobs: JobsDep, request: Request) -> JobOut:
    """Cancel a queued or running job; what it already stored stays. A job of a collection
    takes a key that may write it; one of no collection (fine-tuning, activation), admin."""
    job = await run_in_threadpool(jobs.jobs.get, job_id)
    check_collection(request, job.collection, WRITE if job.collection else ADMIN)
    return JobOut(**job_summary(await run_in_threadpool(jobs.jobs.cancel, job_id)))
