"""Snapshots of a collection: taken as a job, listed, downloaded, deleted, and restored
into a new collection from an upload or a file under the import root (as a job)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.auth import AdminAccess, ReadAccess, WriteAccess
from app.api.bodies import StrictJSONRoute
from app.api.deps import JobsDep, StackDep
from app.api.errors import ApiError
from app.api.openapi import errors
from app.api.schemas import JobCreated, RequestBody, accepted
from app.service.jobs.snapshots import RESTORE_JOB, SNAPSHOT_JOB, Archives
from app.service.stack import Stack

router = APIRouter(
    route_class=StrictJSONRoute,
    prefix="/v1/collections/{name}/snapshots",
    tags=["snapshots"],
    dependencies=[ReadAccess],
)


class SnapshotOut(BaseModel):
    name: str
    size: int
    created: float
    items: int | None = Field(None, description="Items the archive holds (from its header).")


class SnapshotList(BaseModel):
    snapshots: list[SnapshotOut]


class RestoreRequest(RequestBody):
    source: str = Field(min_length=1, description="The archive, relative to the import root.")
    reembed: bool = Field(
        False,
        description="Encode the archive's images and texts again with the serving model "
        "when it comes from another embedding space (else such an archive is refused).",
    )


def _archives(stack: Stack, name: str) -> Archives:
    """The server's snapshot folder, once ``name`` is a collection that exists (404
    otherwise: no request names a path of the data dir)."""
    stack.store.get(name)
    return stack.archives


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[WriteAccess],
    responses=errors(404, 409, 429),
)
async def take_snapshot(name: str, jobs: JobsDep, response: Response) -> JobCreated:
    """Write the collection to one archive, as a job: its items and metadata, vectors,
    stored images, index spec and model version, with a manifest of checksums."""
    job = await run_in_threadpool(jobs.submit, SNAPSHOT_JOB, name, {})
    return accepted(job, response)


@router.get("", responses=errors(404))
async def list_snapshots(name: str, stack: StackDep) -> SnapshotList:
    """The collection's snapshots, oldest first."""
    listed = await run_in_threadpool(_archives(stack, name).listed, name)
    return SnapshotList(snapshots=[SnapshotOut(**vars(s)) for s in listed])


def _snapshot_path(stack: Stack, name: str, snapshot: str) -> Any:
    archives = _archives(stack, name)
    try:
        return archives.path(name, snapshot)
    except FileNotFoundError:
        raise ApiError(
            404, "snapshot_not_found", f"collection {name!r} has no snapshot {snapshot!r}"
        ) from None


@router.get(
    "/{snapshot}",
    responses={200: {"content": {"application/x-tar": {}}}, **errors(404)},
    response_class=FileResponse,
)
async def download_snapshot(name: str, snapshot: str, stack: StackDep) -> FileResponse:
    """The archive file."""
    path = _snapshot_path(stack, name, snapshot)
    return FileResponse(path, media_type="application/x-tar", filename=snapshot)


@router.delete(
    "/{snapshot}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[WriteAccess],
    responses=errors(404),
)
async def delete_snapshot(name: str, snapshot: str, stack: StackDep) -> Response:
    path = _snapshot_path(stack, name, snapshot)
    await run_in_threadpool(path.unlink, True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_RESTORE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": RestoreRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "reembed": {"type": "boolean", "default": False},
                    },
                }
            },
        },
    }
}


@router.post(
    "/restore",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminAccess],
    responses=errors(400, 409, 413, 429),
    openapi_extra=_RESTORE_BODY,
)
async def restore_snapshot(
    name: str, request: Request, stack: StackDep, response: Response
) -> JobCreated:
    """Create the collection ``name`` (which must not exist) from an archive, as a job:
    uploaded as the multipart field ``file``, or ``{"source": path under the import
    root}``. The archive is verified before anything is written; one from another
    embedding space is refused unless ``reembed``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    params: dict[str, Any]
    if kind == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "invalid_request", "send the archive as the multipart field file")
        reembed = str(form.get("reembed") or "false").lower()
        if reembed not in ("true", "false"):
            raise ApiError(400, "invalid_request", "reembed is true or false")
        upload_id, path = stack.uploads.new()
        try:
            await run_in_threadpool(_save, upload, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        params = {"upload": upload_id, "reembed": reembed == "true"}
    else:
        try:
            body = RestoreRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        params = {"source": body.source, "reembed": body.reembed}
    try:
        job = await run_in_threadpool(stack.jobs.submit, RESTORE_JOB, name, params)
    except BaseException:
        if "upload" in params:
            stack.uploads.remove(params["upload"])
        raise
    return accepted(job, response)


def _save(upload: UploadFile, path: Any) -> None:
    with open(path, "wb") as out:
        while block := upload.file.read(1 << 20):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
