"""A collection's label set: the labels its pictures are tagged with (``app.service.tagging``).
Setting or removing it re-tags the collection's pictures as a job."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.auth import AdminAccess, ReadAccess
from app.api.bodies import StrictJSONRoute
from app.api.deps import JobsDep, LimitsDep, RetrievalDep
from app.api.errors import ApiError
from app.api.openapi import errors
from app.api.picture_schemas import LabelSetIn, LabelSetOut
from app.api.schemas import JobCreated, accepted
from app.service.jobs.retag import RETAG_JOB
from app.service.tagging import LabelSet, read_label_set, write_label_set
from app.service.threads import run_in_threadpool

router = APIRouter(
    route_class=StrictJSONRoute,
    prefix="/v1/collections/{name}/labels",
    tags=["collections"],
    dependencies=[ReadAccess],
)


@router.get("", responses=errors(404))
async def get_labels(name: str, retrieval: RetrievalDep) -> LabelSetOut:
    """The collection's label set (404 when it has none)."""
    retrieval.space_of(name)
    labels = await run_in_threadpool(read_label_set, retrieval.store.db, name)
    if labels is None:
        raise ApiError(404, "label_set_not_found", f"collection {name!r} has no label set")
    return LabelSetOut(**labels.__dict__)


@router.put(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminAccess],
    responses=errors(400, 404, 409, 429),
)
async def put_labels(
    name: str,
    body: LabelSetIn,
    retrieval: RetrievalDep,
    jobs: JobsDep,
    limits: LimitsDep,
    response: Response,
) -> JobCreated:
    """Tag every picture of the collection with its most probable labels, under
    `"labels"` in its metadata: those written from now on as they are written, those
    stored already by the job this starts."""
    retrieval.space_of(name)
    labels = LabelSet(body.labels, body.threshold, body.top, body.templates)
    labels.check(limits.max_texts)
    await run_in_threadpool(write_label_set, retrieval.store.db, name, labels)
    job = await run_in_threadpool(jobs.submit, RETAG_JOB, name, {})
    return accepted(job, response)


@router.delete(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminAccess],
    responses=errors(404, 429),
)
async def delete_labels(
    name: str, retrieval: RetrievalDep, jobs: JobsDep, response: Response
) -> JobCreated:
    """Stop tagging, and remove the tags from the stored pictures as a job."""
    retrieval.space_of(name)
    await run_in_threadpool(write_label_set, retrieval.store.db, name, None)
    job = await run_in_threadpool(jobs.submit, RETAG_JOB, name, {})
    return accepted(job, response)
