"""``/openapi.json`` that tells the truth: every status an operation can answer, each error
in the one shape, the limits of this server's settings, security as configured.

Routes declare what they answer themselves (``errors(404, 409)``); what every route can
answer is added here: 408 and 413 (the body's deadline and size), 422 where a request has
parameters or a body, 429 and 503 on the API (admission, readiness), 401 where this
server's keys make a key necessary. FastAPI's default 422 body is replaced by ours.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.api.auth import Requirement
from app.api.route_table import routes
from app.service.config import Settings
from app.service.queries import BASE64

DESCRIPTIONS = {
    304: "Not modified (the `If-None-Match` tag matches).",
    400: "The request is well-formed but cannot be done as asked.",
    401: "A key is needed, or the one sent is not valid.",
    403: "The key sent does not open this collection, or may not do this (a key of "
    "`XMODAL_API_KEYS_FILE`, scoped to collections, read or write).",
    404: "No such collection, item, job or model.",
    408: "The request body did not arrive in time (`XMODAL_BODY_TIMEOUT_S`).",
    409: "The request conflicts with the current state.",
    413: "Over a size or count limit.",
    415: "Not an image the server can decode.",
    422: "The request does not match its schema.",
    429: "Too busy (a full queue, too many requests at once or from this client): retry.",
    503: "The model or the store is not ready (loading, failed, or shutting down).",
    504: "The model did not get to the request before its deadline.",
}
_NO_ADMISSION = frozenset({"/healthz", "/readyz", "/metrics"})


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error the service answers with."""

    error: ErrorDetail


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the error statuses it can answer besides the common ones."""
    return {s: {"model": ErrorBody, "description": DESCRIPTIONS[s]} for s in statuses}


def binary(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that answers bytes."""
    schema = {"type": "string", "format": "binary"}
    return {200: {"description": description, "content": {media_type: {"schema": schema}}}}


def install_openapi(app: FastAPI, settings: Settings, keys_enabled: bool) -> None:
    """Replace ``app.openapi`` with one that documents this server as configured."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _build(app, settings, keys_enabled)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _build(app: FastAPI, settings: Settings, keys_enabled: bool) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
        separate_input_output_schemas=False,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components.update(components["ErrorBody"].pop("$defs", {}))
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    _apply_limits(components, settings)
    _state_json_rules(components)
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, route in routes(app):
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in route.methods or ():
            op = schema["paths"][path][method.lower()]
            responses = op.setdefault("responses", {})
            common = [408, 413]
            if path not in _NO_ADMISSION:
                common += [429, 503]
            if op.get("parameters") or op.get("requestBody") or "422" in responses:
                common.append(422)
            needs_key = keys_enabled and _needs_key(route, settings)
            if needs_key:
                common.append(401)
            else:
                op.pop("security", None)
            if settings.api_keys_file is not None and _guarded(route):
                common.append(403)
            for status in common:
                responses[str(status)] = {
                    "description": DESCRIPTIONS[status],
                    "content": {"application/json": {"schema": error_ref}},
                }
    if not keys_enabled:
        schema["components"].pop("securitySchemes", None)
    return schema


def _needs_key(route: APIRoute, settings: Settings) -> bool:
    """Whether this server asks ``route`` for a key (its access rules and the settings)."""
    for dependency in _walk(route.dependant):
        call = dependency.call
        if isinstance(call, Requirement) and call.asks_key(settings):
            return True
    return False


def _guarded(route: APIRoute) -> bool:
    """Whether ``route`` checks keys at all (a scoped key can then be refused, 403)."""
    return any(isinstance(d.call, Requirement) for d in _walk(route.dependant))


def _walk(dependant: Any) -> list[Any]:
    out = []
    for dep in dependant.dependencies:
        out.append(dep)
        out.extend(_walk(dep))
    return out


def _apply_limits(components: dict[str, Any], settings: Settings) -> None:
    """Write this server's limits into the request schemas they apply to."""

    def prop(model: str, field: str) -> dict[str, Any]:
        properties: dict[str, Any] = components.get(model, {}).get("properties", {})
        value: dict[str, Any] = properties.get(field, {})
        return value

    def set_limits(target: dict[str, Any], **limits: Any) -> None:
        # Optional fields are ``anyOf: [{type}, {type: null}]``: the limit goes on the type.
        for option in target.get("anyOf", [target]):
            if option.get("type") != "null":
                option.update(limits)

    set_limits(prop("SearchRequest", "k"), minimum=1, maximum=settings.max_k)
    set_limits(prop("SearchRequest", "text"), maxLength=settings.max_text_chars)
    set_limits(prop("TextItemIn", "text"), maxLength=settings.max_text_chars)
    set_limits(prop("TextItemsIn", "items"), maxItems=settings.max_texts_per_request)
    set_limits(prop("EmbedRequest", "texts"), maxItems=settings.max_texts_per_request)
    set_limits(prop("EmbedRequest", "images_base64"), maxItems=settings.max_files_per_request)
    # What the validators check that the models' own schemas leave out.
    for model, field in (
        ("SearchRequest", "image_base64"),
        ("QueryPart", "image_base64"),
        ("ClassifyRequest", "image_base64"),
        ("ExplainRequest", "image_base64"),
    ):
        set_limits(prop(model, field), pattern=BASE64)
    set_limits(prop("KnnRequest", "image"), pattern=BASE64)
    for option in prop("EmbedRequest", "images_base64").get("anyOf", []):
        if option.get("type") == "array":
            option["items"] = {"type": "string", "pattern": BASE64, "minLength": 1}
    targets = prop("IndexAdviceRequest", "targets")
    targets.pop("propertyNames", None)
    targets["properties"] = {
        "recall_at_1": {"type": "number", "minimum": 0, "maximum": 1},
        "recall_at_10": {"type": "number", "minimum": 0, "maximum": 1},
        "p50_ms": {"type": "number", "exclusiveMinimum": 0},
    }
    targets["additionalProperties"] = False
    for name, model in components.items():
        if not name.startswith("Body_"):
            continue
        # Multipart forms: at least one file; a field left out is the null (a form cannot
        # send one).
        for field, value in model.get("properties", {}).items():
            if field == "files" and value.get("type") == "array":
                value["minItems"] = 1
            if field in ("labels", "templates"):  # /v1/classify/image: as the JSON body's
                rules = prop("ClassifyRequest", field)
                for option in rules.get("anyOf", [rules]):
                    if option.get("type") == "array":
                        value.pop("anyOf", None)
                        value.update({k: v for k, v in option.items() if k != "description"})
            if field == "ids":  # what the upload route checks of each id
                for option in value.get("anyOf", [value]):
                    if option.get("type") == "array":
                        option["items"] = {"type": "string", "minLength": 1, "maxLength": 512}
            options = [o for o in value.get("anyOf", []) if o.get("type") != "null"]
            if len(options) == 1 and len(value["anyOf"]) == 2:
                del value["anyOf"]
                value.update(options[0])


INT64 = {"minimum": -(2**63), "maximum": 2**63 - 1}
# A string without NUL: a format of our own (with its pattern in the description), as a
# pattern on every string made schema-driven fuzzing several times slower.
TEXT = {"format": "text-without-nul"}
KEY = {"minLength": 1, "maxLength": 256, **TEXT}
JSON_VALUE = {"$ref": "#/components/schemas/JsonValue"}


def _state_json_rules(components: dict[str, Any]) -> None:
    """Say in the schemas what every JSON body is held to (``app.api.bodies``): object keys
    of 1 to 256 characters and strings, both without NUL; integers within 64 bits; and
    free-form values (metadata, filters, hyperparameters, what clip back's clients send
    beyond what is read) of those kinds."""
    components["JsonValue"] = {
        "description": "Any JSON value the store can keep. (Format `text-without-nul`: a "
        "string without the character U+0000, pattern `^[^\\u0000]*$`.)",
        "anyOf": [
            {"type": "string", **TEXT},
            {"type": "integer", **INT64},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
            {"type": "array", "items": JSON_VALUE},
            {"type": "object", "propertyNames": KEY, "additionalProperties": JSON_VALUE},
        ],
    }

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for child in node:
                walk(child)
            return
        if not isinstance(node, dict):
            return
        if node.get("type") == "integer":
            for bound, value in INT64.items():
                node.setdefault(bound, value)
        # A pattern does not exclude NUL (`\S` matches it, as does a data URL header):
        # the format goes beside it.
        if node.get("type") == "string" and not {"enum", "format"} & node.keys():
            node.update(TEXT)
        if node.get("type") == "object" and node.get("additionalProperties") is not False:
            node.setdefault("propertyNames", KEY)  # (with only named keys: nothing to say)
            if node.get("additionalProperties", True) in (True, {}):
                node["additionalProperties"] = JSON_VALUE
        for key, child in node.items():
            if key != "additionalProperties" or child is not JSON_VALUE:
                walk(child)

    for name, model in components.items():
        if name != "JsonValue":
            walk(model)
