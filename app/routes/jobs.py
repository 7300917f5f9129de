from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.auth import ReadAccess, WriteAccess
from app.bodies import StrictJSONRoute
from app.deps import JobsDep
from app.jobs import INDEX_JOB, job_summary
from app.openapi import errors
from models.sources import Format

router = APIRouter(route_class=StrictJSONRoute, tags=["jobs"], dependencies=[ReadAccess])


class IndexJobCreate(BaseModel):
    source: str = Field(
        min_length=1,
        description="Path relative to the import root: a JSONL/CSV/Parquet manifest, a folder "
        "of images, or WebDataset .tar shards (a file or a folder of them).",
    )
    format: Format | None = Field(None, description="The source's format (default: from the path).")


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


class JobCreated(BaseModel):
    id: str
    state: str


class JobList(BaseModel):
    jobs: list[JobOut]


@router.post(
    "/v1/collections/{name}/jobs/index",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[WriteAccess],
    responses=errors(400, 404, 409),
)
async def start_index_job(
    name: str, body: IndexJobCreate, jobs: JobsDep, response: Response
) -> JobCreated:
    """Index a corpus from the import root in the background; poll `GET /v1/jobs/{id}`."""
    params = {"source": body.source, "format": body.format}
    job = await run_in_threadpool(jobs.submit, INDEX_JOB, name, params)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobCreated(id=job.id, state=job.state.value)


@router.get("/v1/jobs")
async def list_jobs(jobs: JobsDep) -> JobList:
    """The 100 most recent jobs, newest first."""
    listed = await run_in_threadpool(jobs.jobs.recent)
    return JobList(jobs=[JobOut(**job_summary(j)) for j in listed])


@router.get("/v1/jobs/{job_id}", responses=errors(404))
async def get_job(job_id: str, jobs: JobsDep) -> JobOut:
    """State and progress: counts, rate, ETA and the first failures with their reasons."""
    return JobOut(**job_summary(await run_in_threadpool(jobs.jobs.get, job_id)))


@router.delete("/v1/jobs/{job_id}", dependencies=[WriteAccess], responses=errors(404, 409))
async def cancel_job(job_id: str, jobs: JobsDep) -> JobOut:
    """Cancel a queued or running job; what it already stored stays."""
    return JobOut(**job_summary(await run_in_threadpool(jobs.jobs.cancel, job_id)))
