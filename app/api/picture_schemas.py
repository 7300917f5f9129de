"""Request and answer bodies of the routes about what a picture holds and why it matched:
zero-shot labels (``/v1/classify``), label sets and occlusion maps (``explain``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from app.api.schemas import RequestBody
from app.service.explain import DEFAULT_GRID, MAX_GRID
from app.service.zero_shot import MAX_LABEL_CHARS, MAX_LABELS, MAX_TEMPLATES

# --- zero-shot labels ---------------------------------------------------------------------
Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS, pattern=r"\S")]
Template = Annotated[str, Field(min_length=2, max_length=MAX_LABEL_CHARS)]


class ClassifyRequest(RequestBody):
    labels: list[Label] = Field(
        min_length=1, max_length=MAX_LABELS, description="The labels to rank (distinct)."
    )
    image_base64: str | None = Field(None, description="The picture, base64 or a data URL.")
    collection: str | None = Field(None, description="With `item_id`: a stored picture.")
    item_id: str | None = Field(None, min_length=1, max_length=512)
    templates: list[Template] | None = Field(
        None,
        min_length=1,
        max_length=MAX_TEMPLATES,
        description='Prompt templates, each holding `{}` once (default: "a photo of {}.", '
        '"a picture of {}.", "{}").',
    )


class LabelProbability(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    labels: list[LabelProbability] = Field(description="Most probable first; they sum to 1.")
    model: str


# --- why this picture -------------------------------------------------------------------
class ExplainRequest(RequestBody):
    item_id: str = Field(min_length=1, max_length=512, description="The stored picture.")
    text: str | None = Field(None, min_length=1, description="The query, as a text.")
    image_base64: str | None = Field(None, description="The query, as a picture.")
    grid: int = Field(
        DEFAULT_GRID,
        ge=2,
        le=MAX_GRID,
        description="Regions a side: the map is grid x grid, and costs grid ** 2 + 1 "
        "image encodings.",
    )
    format: Literal["json", "png"] = Field(
        "json", description="`png`: the picture with the map over it in red."
    )


class ExplainResponse(BaseModel):
    grid: list[list[float]] = Field(
        description="Rows top to bottom: how much the picture's cosine to the query drops "
        "when that region is hidden (higher: the region carries the match)."
    )
    score: float = Field(description="The picture's cosine to the query.")
    model: str


class LabelSetIn(RequestBody):
    labels: list[Label] = Field(
        min_length=1, max_length=MAX_LABELS, description="The labels pictures are tagged with."
    )
    threshold: float = Field(
        0.1, ge=0, le=1, allow_inf_nan=False, description="The least probability a tag has."
    )
    top: int = Field(3, ge=1, le=20, description="Tags a picture gets at most.")
    templates: list[Template] | None = Field(
        None, min_length=1, max_length=MAX_TEMPLATES, description="As for `/v1/classify`."
    )


class LabelSetOut(BaseModel):
    labels: list[str]
    threshold: float
    top: int
    templates: list[str] | None
