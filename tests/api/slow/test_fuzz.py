"""Property-based fuzzing of the whole API against its own ``/openapi.json`` (schemathesis):
no 5xx, every status code and body as documented, and the schema saying what the
validators check: a request the schema allows is never refused as malformed (422; a 400
for what a schema cannot say, such as a source that does not exist, is counted, not
failed), and one it forbids is never accepted (2xx; unknown query parameters aside, which
the API ignores, and "invalid" JSON bodies that the schema allows after all, checked with
jsonschema: the fuzzer's mutation sometimes leaves a body valid). Seeded state (a
collection with items, an import folder) so that generated requests reach more than
404s. A fixed seed; 28 valid and 28 invalid examples per operation by default (over 1,000
cases), more with ``XMODAL_FUZZ_EXAMPLES``."""

from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    CheckContext,
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import has_only_additional_properties_in_non_body_parameters

from app.api.main import create_app
from app.service.config import Settings
from tests.corpus import good_image, write_jsonl
from tests.helpers import TINY, AppServer

# The schema's own string format: text without NUL (a pattern there costs the fuzzer dearly).
schemathesis.openapi.format(
    "text-without-nul",
    st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"])),
)

EXAMPLES = int(os.environ.get("XMODAL_FUZZ_EXAMPLES", "28"))
COUNT_FILE = os.environ.get("XMODAL_FUZZ_COUNT_FILE")
SEEDED = "fuzz"  # the collection half of the generated {name}s are pointed at


@schemathesis.check
def valid_is_well_formed(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A request the schema allows is not refused as malformed."""
    if case.meta is not None and case.meta.generation.mode.is_positive:
        assert response.status_code != 422, f"the schema allows it, the API says: {response.text}"
    return None


@schemathesis.check
def invalid_is_refused(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A request the schema forbids is not accepted."""
    if (
        case.meta is not None
        and case.meta.generation.mode.is_negative
        and response.status_code < 300
        and not has_only_additional_properties_in_non_body_parameters(case)
        and not _only_harmless_breaks(case)
        and not _mutation_missed(case)
    ):
        raise AssertionError(f"the schema forbids it, the API answered {response.status_code}")
    return None


def _only_harmless_breaks(case: Case) -> bool:
    """A negative case whose every mutation is one the API may ignore: unknown query
    parameters, and anything in the headers (a header carries no type, none is required,
    and the key header is the fixture's own, sent over whatever the fuzzer made of it)."""
    assert case.meta is not None
    mutations = getattr(case.meta.phase.data, "mutations", None)
    return bool(mutations) and all(
        m.parameter_location is ParameterLocation.HEADER
        or (
            m.parameter_location is ParameterLocation.QUERY
            and tuple(m.keywords) == ("additionalProperties",)
        )
        for m in mutations
    )


def _mutation_missed(case: Case) -> bool:
    """A negative case whose only input is a body the schema allows after all (the
    fuzzer's mutation did not break it): a JSON body checked here with jsonschema, formats
    included; a multipart form whose required fields are there and whose fields other
    than files validate (a form carries no types: any value of a binary field is a file)."""
    if case.query or case.path_parameters and not case.body:
        return False
    if case.media_type not in ("application/json", "multipart/form-data"):
        return False
    document = case.operation.schema.raw_schema
    operation = document["paths"][case.operation.path][case.method.lower()]
    body = operation.get("requestBody", {}).get("content", {}).get(case.media_type)
    if body is None:
        return False
    components = document.get("components", {})
    checker = jsonschema.FormatChecker()
    checker.checks("text-without-nul")(lambda v: not isinstance(v, str) or "\x00" not in v)

    def valid(schema: dict[str, Any], value: Any) -> bool:
        root = {"allOf": [schema], "components": components}
        validator = jsonschema.Draft202012Validator(root, format_checker=checker)
        return bool(validator.is_valid(value))

    if case.media_type == "application/json":
        return valid(body["schema"], case.body)
    schema = body["schema"]
    if "$ref" in schema:
        schema = components["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    properties = schema.get("properties", {})
    if not isinstance(case.body, dict) or not set(schema.get("required", [])) <= case.body.keys():
        return False
    for field, value in case.body.items():
        if value in (None, []) and field not in schema.get("required", []):
            continue  # a form cannot send null or an empty list: the field is left out
        prop = properties.get(field)
        if prop is None:
            return False
        if "binary" in (prop.get("format"), prop.get("items", {}).get("format")):
            continue
        if not valid(prop, value):
            return False
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    valid_is_well_formed,
    invalid_is_refused,
]


KEY = "a-fuzzing-administrator-key-0123"


@pytest.fixture(scope="module", params=["keyless", "keyed"])
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[AppServer]:
    """The keyless default, and a server whose every route needs a key (sent)."""
    keys = {"api_keys": KEY, "auth_reads": "true"}
    server = AppServer(
        tmp_path_factory.mktemp("fuzz") / "data",
        max_request_bytes=2_000_000,
        max_upload_bytes=500_000,
        max_queued_jobs=8,
        max_text_chars=2000,  # past 65,536 the fuzzer cannot make a string one too long
        **(keys if request.param == "keyed" else {}),
    ).start()
    server.headers = {"Authorization": f"Bearer {KEY}"} if request.param == "keyed" else {}  # type: ignore[attr-defined]
    write_jsonl(server.data_dir / "import", SEEDED, 4)
    try:
        yield server
    finally:
        server.stop()


def seed(server: AppServer) -> None:
    """The collection the fuzzer is pointed at, with an image and a text (again, if a
    generated request deleted them)."""
    headers = server.headers  # type: ignore[attr-defined]
    with httpx.Client(base_url=server.url, timeout=30, headers=headers) as c:
        if c.get(f"/v1/collections/{SEEDED}").status_code == 404:
            c.post("/v1/collections", json={"name": SEEDED})
        if c.get(f"/v1/collections/{SEEDED}/items/i1").status_code == 404:
            c.post(
                f"/v1/collections/{SEEDED}/images",
                files=[("files", ("i1.png", good_image(1)))],
                data={"ids": ["i1"], "metadata": ['{"kind": "photo"}']},
            )
        if c.get(f"/v1/collections/{SEEDED}/items/t1").status_code == 404:
            c.post(
                f"/v1/collections/{SEEDED}/texts",
                json={"items": [{"id": "t1", "text": "a photo", "metadata": {"kind": "text"}}]},
            )


@pytest.fixture(scope="module")
def api(fuzz_server: AppServer) -> schemathesis.BaseSchema:
    seed(fuzz_server)
    return schemathesis.openapi.from_url(
        fuzz_server.url + "/openapi.json",
        headers=fuzz_server.headers,  # type: ignore[attr-defined]
    )


def _cases() -> list[tuple[str, GenerationMode]]:
    """Every operation, read from the app's schema when the tests are collected, with
    valid inputs and (where it takes any) invalid ones."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = create_app(Settings(**{**TINY, "data_dir": tmp})).openapi()["paths"]
    out = []
    for path, operations in paths.items():
        for method, op in operations.items():
            label = f"{method.upper()} {path}"
            out.append((label, GenerationMode.POSITIVE))
            # A path parameter of any string cannot be made invalid: negative cases need a
            # body or a query to break.
            if op.get("requestBody") or any(p["in"] != "path" for p in op.get("parameters", [])):
                out.append((label, GenerationMode.NEGATIVE))
    return out


CASES = _cases()


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{x}-{m.value}" for x, m in CASES])
def test_api_answers_as_documented(
    label: str, mode: GenerationMode, api: schemathesis.BaseSchema, fuzz_server: AppServer
) -> None:
    method, path = label.split(" ", 1)
    operation = api[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Case) -> None:
        params = case.path_parameters or {}
        if "name" in params and zlib.crc32(repr(case.body).encode()) % 2:
            params["name"] = SEEDED  # half the cases reach a collection that exists
            seed(fuzz_server)
        if "item_id" in params and zlib.crc32(repr(case.query).encode()) % 2:
            params["item_id"] = "i1"
        if COUNT_FILE:  # a long run counts its cases: one line each
            with open(COUNT_FILE, "a") as out:
                out.write(f"{label} {mode.value}\n")
        case.call_and_validate(checks=CHECKS, timeout=60, headers=fuzz_server.headers)  # type: ignore[attr-defined]

    run()


def test_the_fuzz_run_is_big_enough() -> None:
    assert len(CASES) * EXAMPLES >= 1000, len(CASES)
