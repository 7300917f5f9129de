"""OpenAI's embeddings API, as Infinity, vLLM and text-embeddings-inference speak it, so
the ``openai`` client (and LangChain, LlamaIndex and scripts built on it) can call xmodal
through ``base_url``. Texts go to the text tower; a ``data:image/...;base64,`` string goes
to the image tower (the convention of multimodal embedding servers). Keys as for
``/v1/embed``."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.auth import ReadAccess
from app.api.bodies import StrictJSONRoute
from app.api.deps import EngineDep, LimitsDep
from app.api.errors import ApiError, bad_request
from app.api.openapi import errors
from app.service.engine import Engine
from app.service.queries import embed_inputs

router = APIRouter(
    route_class=StrictJSONRoute, prefix="/v1", tags=["embed"], dependencies=[ReadAccess]
)

IMAGE_PREFIX = "data:image/"


class EmbeddingsRequest(BaseModel):
    # OpenAI's clients send fields xmodal has no use for (``user``): ignored, as there.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="The serving model (see `GET /v1/models`).")
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    ) = Field(
        description="A text or a list of them; a `data:image/...;base64,` string is an image."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`base64`: each vector as little-endian float32 bytes, base64."
    )
    dimensions: int | None = Field(
        None, ge=1, description="The model's own dimension only (no shortened vectors)."
    )

    @field_validator("input", mode="before")
    @classmethod
    def _text_not_tokens(cls, value: Any) -> Any:
        """Token ids (what LangChain's ``OpenAIEmbeddings`` sends by default) mean
        nothing to another model's tokenizer: say what to send instead."""
        items = value if isinstance(value, list) else [value]
        if any(isinstance(x, int) or (isinstance(x, list) and x) for x in items):
            raise ValueError(
                "token arrays are not taken: send the text itself (this server tokenizes "
                "for its own model); with LangChain, OpenAIEmbeddings(..., "
                "check_embedding_ctx_length=False)"
            )
        return value


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


def served_names(engine: Engine) -> set[str]:
    """What ``model`` may name: the serving version, or its architecture's name."""
    return {engine.version, engine.encoders[engine.version].model_name}


@router.post("/embeddings", responses=errors(400, 404, 413, 415, 429, 504))
async def embeddings(
    body: EmbeddingsRequest, engine: EngineDep, limits: LimitsDep
) -> EmbeddingsResponse:
    """OpenAI-style embeddings of texts and `data:image/...;base64,` images, L2-normalised,
    in the order given."""
    names = served_names(engine)
    if body.model not in names:
        raise ApiError(
            404,
            "model_not_found",
            f"model {body.model!r} is not served here; use {' or '.join(sorted(names))}",
        )
    if body.dimensions is not None and body.dimensions != engine.dim:
        raise bad_request(
            f"dimensions {body.dimensions}: {engine.version} gives {engine.dim}-dimensional "
            "vectors only (it was not trained for shortened ones)",
            code="invalid_dimensions",
        )
    inputs = [body.input] if isinstance(body.input, str) else body.input
    images = [i for i, x in enumerate(inputs) if x.startswith(IMAGE_PREFIX)]
    texts = [i for i, x in enumerate(inputs) if not x.startswith(IMAGE_PREFIX)]
    text_vectors, image_vectors, tokens = await embed_inputs(
        engine,
        limits,
        [inputs[i] for i in texts],
        [inputs[i] for i in images],
        [f"input[{i}]" for i in images],
        "input",
    )
    vectors = np.zeros((len(inputs), engine.dim), np.float32)
    vectors[texts] = text_vectors
    vectors[images] = image_vectors
    data = [
        Embedding(index=i, embedding=_encoded(v, body.encoding_format))
        for i, v in enumerate(vectors)
    ]
    return EmbeddingsResponse(
        data=data, model=body.model, usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
    )


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    out: list[float] = vector.tolist()
    return out
