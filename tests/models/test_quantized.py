"""int8 text encoding on the CPU: the float model untouched, texts close to the float
ones, images and checkpoints float, and a server that serves with it."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import torch

from models.encoder import ClipEncoder, load_encoder
from tests.helpers import AppServer

TEXTS = [
    f"a {c} {s} on a {b} background"
    for c in ("red", "blue")
    for s in ("circle", "cross")
    for b in ("plain", "striped")
]


def test_int8_texts_are_close_to_float_and_the_float_model_is_kept(tmp_path: Path) -> None:
    enc = load_encoder("xmodal-tiny", "none", "cpu", tmp_path)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    float_texts = enc.encode_texts(TEXTS)
    image = enc.encode_image_tensors(torch.zeros(1, 3, 64, 64))
    enc.enable_int8_text()
    assert enc.int8_text and enc.version.endswith("random-seed0")
    int8 = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, int8) for m in enc._text_model.modules()) >= 4  # 2 blocks x MLP
    int8_texts = enc.encode_texts(TEXTS)
    cos = np.sum(int8_texts * float_texts, axis=1)
    assert cos.min() > 0.98 and not np.array_equal(int8_texts, float_texts), cos
    np.testing.assert_array_equal(enc.encode_image_tensors(torch.zeros(1, 3, 64, 64)), image)
    after = enc.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # training sees floats
    path = enc.save_checkpoint(tmp_path / "ckpt.pt")
    reloaded = load_encoder("xmodal-tiny", str(path), "cpu", tmp_path)
    np.testing.assert_allclose(reloaded.encode_texts(TEXTS), float_texts, atol=1e-5)


def test_a_server_with_int8_texts_embeds_them_so(tmp_path: Path, tiny_encoder: ClipEncoder) -> None:
    server = AppServer(tmp_path / "data", quantize_text=True).start()
    try:
        r = httpx.post(f"{server.url}/v1/embed", json={"texts": TEXTS}, timeout=30)
        assert r.status_code == 200, r.text
        got = np.array(r.json()["vectors"], dtype=np.float32)
        assert server.app.state.services.stack.engine.encoder.int8_text
        float_texts = tiny_encoder.encode_texts(TEXTS)
        cos = np.sum(got * float_texts, axis=1)
        assert cos.min() > 0.98 and not np.allclose(got, float_texts, atol=1e-6)
    finally:
        server.stop()
