from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.encoder import ClipEncoder, load_encoder
from models.errors import ModelLoadError
from models.loading import resolve_weights

CLOSED_ENDPOINT = "https://127.0.0.1:9"  # loopback port nothing listens on


def test_tiny_encoder_outputs_normalised_float32(tiny_encoder: ClipEncoder) -> None:
    images = [Image.new("RGB", (64, 48), (255, 0, 0)), Image.new("RGB", (10, 300), (0, 0, 255))]
    iv = tiny_encoder.encode_images(images)
    tv = tiny_encoder.encode_texts(["a red square", "a blue bar"])
    assert tiny_encoder.dim <= 128
    for v in (iv, tv):
        assert v.dtype == np.float32 and v.shape == (2, tiny_encoder.dim)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(iv[0], iv[1])
    assert tiny_encoder.encode_texts([]).shape == (0, tiny_encoder.dim)


def test_tiny_architecture_is_small(tiny_encoder: ClipEncoder) -> None:
    size = tiny_encoder.model.visual.image_size
    assert max(size if isinstance(size, tuple) else (size,)) <= 64


def test_long_texts_are_truncated_not_rejected(tiny_encoder: ClipEncoder) -> None:
    long_text = "a photo of a cat " * 5000
    v = tiny_encoder.encode_texts([long_text])
    assert v.shape == (1, tiny_encoder.dim)
    # Everything past the context is cut, so the tail does not change the vector.
    np.testing.assert_allclose(v, tiny_encoder.encode_texts([long_text + " and a dog"]), atol=1e-6)


def test_batch_results_match_one_at_a_time(tiny_encoder: ClipEncoder) -> None:
    texts = ["one", "two words", "three words here"]
    together = tiny_encoder.encode_texts(texts)
    alone = np.vstack([tiny_encoder.encode_texts([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_random_weights_are_seeded(tmp_path: Path, tiny_encoder: ClipEncoder) -> None:
    again = load_encoder("xmodal-tiny", "none", "cpu", tmp_path, seed=0)
    other = load_encoder("xmodal-tiny", "none", "cpu", tmp_path, seed=1)
    q = ["a small red circle"]
    np.testing.assert_array_equal(again.encode_texts(q), tiny_encoder.encode_texts(q))
    assert not np.allclose(other.encode_texts(q), tiny_encoder.encode_texts(q))
    assert (
        again.version == "xmodal-tiny@random-seed0" and other.version == "xmodal-tiny@random-seed1"
    )


def test_saved_checkpoint_loads_with_the_same_weights(tmp_path: Path) -> None:
    source = load_encoder("xmodal-tiny", "none", "cpu", tmp_path, seed=7)
    path = source.save_checkpoint(tmp_path / "ckpt" / "tuned.pt")
    loaded = load_encoder("xmodal-tiny", str(path), "cpu", tmp_path)
    img = [Image.new("RGB", (40, 40), (0, 128, 255))]
    np.testing.assert_allclose(loaded.encode_images(img), source.encode_images(img), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_texts(["x"]), source.encode_texts(["x"]), atol=1e-6)
    assert loaded.version.startswith("xmodal-tiny@tuned-")
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


def test_checkpoint_of_another_architecture_fails_clearly(
    tmp_path: Path, tiny_encoder: ClipEncoder
) -> None:
    path = tiny_encoder.save_checkpoint(tmp_path / "tiny.pt")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_encoder("RN50", str(path), "cpu", tmp_path)


def test_missing_checkpoint_path_and_unknown_tag_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_weights("xmodal-tiny", str(tmp_path / "nope.pt"), tmp_path)
    with pytest.raises(ModelLoadError, match="known tags"):
        resolve_weights("ViT-B-32", "no_such_tag", tmp_path)
    with pytest.raises(ModelLoadError, match="unknown model architecture"):
        resolve_weights("ViT-Q-99", "none", tmp_path)


def test_offline_pretrained_tag_fails_fast_and_names_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_ENDPOINT)
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_encoder("ViT-B-32", "laion2b_s34b_b79k", "cpu", tmp_path)
    assert time.monotonic() - started < 10
    assert "XMODAL_PRETRAINED=data/models/open_clip_model.safetensors" in str(info.value)
    assert not any(tmp_path.rglob("*.safetensors"))


def test_hf_hub_offline_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k", tmp_path)


def test_cached_weights_are_found_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag whose file is already in the cache resolves with no network at all."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import open_clip

    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
    repo_id = cfg["hf_hub"].rstrip("/")
    # The layout huggingface_hub uses for its cache: refs/main names a snapshot folder.
    repo_dir = tmp_path / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("abc123")
    snapshot = repo_dir / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    resolved = resolve_weights("ViT-B-32", "laion2b_s34b_b79k", tmp_path)
    assert resolved.checkpoint is not None and os.path.samefile(
        resolved.checkpoint, snapshot / "open_clip_model.safetensors"
    )
    assert resolved.version == "ViT-B-32@laion2b_s34b_b79k"
    assert resolved.tag_cfg["interpolation"] == "bicubic"


def test_check_only_proves_availability_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`xmodal serve` checks before binding: a reachable hub is enough, nothing is fetched."""
    import socket

    with socket.socket() as listener:  # a loopback port that accepts, standing in for the hub
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"https://127.0.0.1:{listener.getsockname()[1]}")
        resolved = resolve_weights("ViT-B-32", "laion2b_s34b_b79k", tmp_path, check_only=True)
    assert resolved.checkpoint is None and resolved.version == "ViT-B-32@laion2b_s34b_b79k"
    assert not any(tmp_path.iterdir())
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_ENDPOINT)
    with pytest.raises(ModelLoadError, match="127.0.0.1 cannot be reached"):
        resolve_weights("ViT-B-32", "laion2b_s34b_b79k", tmp_path, check_only=True)
