"""What a query or an input arrives as, turned into vectors: base64 images (or data
URLs), vectors given as numbers, and mixed lists of texts and images. Every API that takes
them (xmodal's own, clip back's, OpenAI's) comes here, so each is checked the same way."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import numpy as np

from app.service.engine import Engine
from app.service.errors import Invalid, TooLarge, Unprocessable
from app.service.limits import Limits
from app.service.search.retrieval import Query
from app.service.threads import run_in_threadpool
from index import Modality

# What ``base64.b64decode(validate=True)`` takes, after an optional data URL's header.
BASE64 = "^(data:[^,]*,)?([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def decode_base64(value: str, limit: int, what: str = "image_base64") -> bytes:
    """The bytes of a base64 string or data URL of at most ``limit`` bytes; errors name
    the input as ``what``."""
    # Decoded size is about 3/4 of the text: refuse early without decoding a huge string.
    if len(value) * 3 // 4 > limit + 3:
        raise TooLarge(f"{what} decodes to more than the limit of {limit} bytes")
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]  # accept data URLs as browsers produce them
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Unprocessable(f"{what} is not valid base64") from exc
    if len(data) > limit:
        raise TooLarge(f"{what} is {len(data)} bytes; the limit is {limit}")
    if not data:
        raise Invalid(f"{what} is empty", code="empty_query")
    return data


async def embed_base64_images(
    engine: Engine, limits: Limits, images: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    """Vectors of base64 images (or data URLs) within the request limits; errors name
    each image by its label."""
    limits.check_files(len(images))
    blobs = [
        decode_base64(b, limits.max_upload_bytes, label)
        for b, label in zip(images, labels, strict=True)
    ]
    prepared = await engine.prepare_images(blobs, list(labels))
    return await engine.embed_prepared(prepared)


async def embed_inputs(
    engine: Engine,
    limits: Limits,
    texts: Sequence[str],
    images: Sequence[str],
    labels: Sequence[str],
    field: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Texts and base64 images (each named by its label in errors) embedded in one
    request, both limits checked before any work: the texts' vectors, the images'
    vectors and the tokens the texts took. ``field`` names the whole input."""
    limits.check_files(len(images))
    limits.check_texts(list(texts))
    if any(not t.strip() for t in texts):
        raise Invalid(f"{field} holds a blank text", code="empty_query")
    text_vectors = np.zeros((0, engine.dim), np.float32)
    tokens = 0
    if texts:
        text_vectors = await engine.embed_texts(list(texts))
        tokens = await run_in_threadpool(engine.count_tokens, list(texts))
    image_vectors = np.zeros((0, engine.dim), np.float32)
    if images:
        image_vectors = await embed_base64_images(engine, limits, images, labels)
    return text_vectors, image_vectors, tokens


def vector_query(values: Sequence[float], dim: int, what: str = "the vector") -> Query:
    """A query given as a vector (``dim`` finite numbers, not all zero), searched by its
    direction: scaled to unit length."""
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (dim,) or not np.all(np.isfinite(vector)):
        raise Invalid(
            f"{what} must be {dim} finite numbers, the collection's dimension",
            code="invalid_query",
        )
    # Scaled by its largest part first: the direction is what counts, and the norm of
    # large finite numbers (3e38 is a float32) must not overflow to infinity.
    peak = float(np.max(np.abs(vector)))
    if peak == 0:
        raise Invalid(f"{what} is all zeros", code="empty_query")
    vector /= peak
    row = (vector / np.linalg.norm(vector)).astype(np.float32)[None, :]

    async def encode(version: str) -> np.ndarray:
        return row

    return Query(Modality.TEXT, encode)
