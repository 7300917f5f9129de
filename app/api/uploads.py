"""Reading request payloads within their limits."""

from __future__ import annotations

import base64
import binascii

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


# What ``base64.b64decode(validate=True)`` takes, after an optional data URL's header.
BASE64 = "^(data:[^,]*,)?([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def decode_base64(value: str, limit: int, what: str = "image_base64") -> bytes:
    # Decoded size is about 3/4 of the text: refuse early without decoding a huge string.
    if len(value) * 3 // 4 > limit + 3:
        raise too_large(f"{what} decodes to more than the limit of {limit} bytes")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]  # accept data URLs as browsers produce them
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, "invalid_request", f"{what} is not valid base64") from exc
    if len(data) > limit:
        raise too_large(f"{what} is {len(data)} bytes; the limit is {limit}")
    if not data:
        raise ApiError(400, "empty_query", f"{what} is empty")
    return data
