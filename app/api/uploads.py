"""Reading request payloads within their limits."""

from __future__ import annotations

from fastapi import UploadFile

from app.api.errors import ApiError, too_large


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    if upload.size is not None and upload.size > limit:
        raise too_large(f"{upload.filename or 'file'} is {upload.size} bytes; the limit is {limit}")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise too_large(f"{upload.filename or 'file'} exceeds the limit of {limit} bytes")
    if not data:
        raise ApiError(400, "empty_file", f"{upload.filename or 'file'} is empty")
    return data
