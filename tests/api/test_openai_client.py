"""The official ``openai`` client against ``/v1/embeddings`` and ``/v1/models``, through
``base_url``, as LangChain, LlamaIndex and scripts call embedding servers."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from tests.helpers import AppServer, image_bytes


@pytest.fixture
def oa(server: AppServer) -> Iterator[openai.OpenAI]:
    # No key is configured on the shared server: any api_key is fine (the client needs one).
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def _embed(client: httpx.Client, **body: object) -> np.ndarray:
    r = client.post("/v1/embed", json=body)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["vectors"], np.float32)


def _vector(embedding: list[float] | str) -> np.ndarray:
    if isinstance(embedding, str):  # asked for base64: little-endian float32 bytes
        return np.frombuffer(base64.b64decode(embedding), "<f4")
    return np.asarray(embedding, np.float32)


def test_the_openai_client_embeds_texts_and_images(oa: openai.OpenAI, client: httpx.Client) -> None:
    served = oa.models.list().data
    ids = [m.id for m in served]
    assert ids and all(m.object == "model" for m in served)
    picture = image_bytes(seed=5, size=(40, 30))
    data_url = "data:image/png;base64," + base64.b64encode(picture).decode()
    inputs = ["a red bus", data_url, "two cats on a sofa"]
    want = np.vstack(
        [
            _embed(client, texts=["a red bus"]),
            _embed(client, images_base64=[base64.b64encode(picture).decode()]),
            _embed(client, texts=["two cats on a sofa"]),
        ]
    )
    for fmt in ("float", "base64"):
        answer = oa.embeddings.create(model="xmodal-tiny", input=inputs, encoding_format=fmt)
        assert [d.index for d in answer.data] == [0, 1, 2] and answer.model == "xmodal-tiny"
        got = np.asarray([_vector(d.embedding) for d in answer.data], np.float32)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert answer.usage.prompt_tokens == answer.usage.total_tokens > 4
    # Not told, the client asks for base64 and decodes it itself.
    default = oa.embeddings.create(model=ids[0], input="a red bus")
    np.testing.assert_allclose(default.data[0].embedding, want[0], atol=1e-5)
    dim = want.shape[1]
    same = oa.embeddings.create(model="xmodal-tiny", input="a red bus", dimensions=dim)
    assert len(same.data[0].embedding) == dim


def test_the_openai_client_gets_clear_errors(oa: openai.OpenAI, client: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        oa.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError, match="dimensional vectors only"):
        oa.embeddings.create(model="xmodal-tiny", input="x", dimensions=8)
    # Token arrays (LangChain's OpenAIEmbeddings by default): told what to send instead.
    for tokens in ([[1, 2, 3]], [1, 2, 3]):
        with pytest.raises(openai.UnprocessableEntityError, match="check_embedding_ctx_length"):
            oa.embeddings.create(model="xmodal-tiny", input=tokens)
    with pytest.raises(openai.BadRequestError, match="blank"):
        oa.embeddings.create(model="xmodal-tiny", input=["  "])
    bad = client.post(
        "/v1/embeddings", json={"model": "xmodal-tiny", "input": "data:image/png;base64,@@"}
    )
    assert bad.status_code == 422 and "input[0]" in bad.json()["error"]["message"]
    many = client.post("/v1/embeddings", json={"model": "xmodal-tiny", "input": ["t"] * 17})
    assert many.status_code == 413  # the shared server takes 16 texts a request
    # /v1/models keeps its own shape beside OpenAI's.
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and listed["models"][0]["active"] in (True, False)
    assert [m["id"] for m in listed["data"]] == [m["version"] for m in listed["models"]]
