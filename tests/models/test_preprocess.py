from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.decoding import DecodeTask, decode_files
from models.encoder import ClipEncoder
from models.images import decode_image
from models.ingest import IngestLimits, IngestPipeline
from models.preprocess import decode_jpegs_on_device, normalise
from models.sources import FileRef, open_source
from tests.corpus import write_folder
from tests.helpers import image_bytes


class MemorySink:
    """A blob sink in memory that records which files were made durable."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        self.durable: list[str] = []

    def put(self, data: bytes, digest: str | None = None, durable: bool = True) -> str:
        assert digest is not None and not durable
        self.stored.setdefault(digest, data)
        return digest

    def make_durable(self, digests: Sequence[str]) -> None:
        self.durable += digests


def test_split_pipeline_equals_the_openclip_preprocessing(tiny_encoder: ClipEncoder) -> None:
    spec = tiny_encoder.pixels
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    whole = tiny_encoder.preprocess(img)
    split = normalise(spec, spec.fit(img)[None], "cpu")[0]
    # One uint8 level at most apart (the crop's offset, in floating point), on a few pixels.
    torch.testing.assert_close(split, whole, atol=1.01 / 255 / min(spec.std), rtol=0)
    assert (split != whole).float().mean() < 0.01


def test_decode_files_isolates_bad_files_and_skips_unchanged(
    tmp_path: Path, tiny_encoder: ClipEncoder
) -> None:
    spec = tiny_encoder.pixels
    good = image_bytes(seed=1, fmt="PNG")
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "bad.png").write_bytes(b"nope")
    sink = MemorySink()
    tasks = [
        DecodeTask(FileRef(str(tmp_path / "good.png"), str(tmp_path))),
        DecodeTask(FileRef(str(tmp_path / "bad.png"), str(tmp_path))),
        DecodeTask(FileRef(str(tmp_path / "absent.png"), str(tmp_path))),
    ]
    out = decode_files(tasks, spec, 10**6, 10**7, sink=sink)
    assert out[0].pixels is not None and out[0].pixels.shape == (spec.size, spec.size, 3)
    assert out[0].media_type == "image/png" and sink.stored == {out[0].sha256: good}
    assert sink.durable == [out[0].sha256]  # the kept file, made durable once
    assert "not a supported image" in (out[1].error or "")
    assert out[2].error == "file not found"
    again = decode_files(
        [DecodeTask(tasks[0].ref, expect_sha256=out[0].sha256)], spec, 10**6, 10**7
    )
    assert again[0].unchanged and again[0].pixels is None


def test_device_decoder_matches_pil_and_leaves_rotated_jpegs_to_pil(
    tiny_encoder: ClipEncoder,
) -> None:
    spec = tiny_encoder.pixels
    photo = image_bytes((10, 120, 200), seed=3, size=(120, 90), fmt="JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(buf, format="JPEG", exif=exif.tobytes())
    rotated = buf.getvalue()
    png = image_bytes(seed=4, fmt="PNG")
    out = decode_jpegs_on_device([photo, rotated, png, b"\xff\xd8 junk"], spec, "cpu", 10**7)
    assert out[1] is None and out[2] is None and out[3] is None
    assert out[0] is not None
    via_pil = spec.fit(decode_image(photo, 10**7).image).astype(int)
    assert np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - via_pil).mean() < 4


def test_device_decode_path_gives_the_same_neighbours(
    tmp_path: Path, tiny_encoder: ClipEncoder
) -> None:
    """The ingest pipeline's nvJPEG path (run here with torchvision's CPU decoder) gives
    vectors that find the same images as the PIL path's vectors do; PNGs and WebPs fall
    back to PIL."""
    corpus = write_folder(tmp_path, "pics")
    records = [r for r in open_source(tmp_path, "pics", None).records() if r.id in corpus.images]

    def vectors(device_decode: bool) -> tuple[list[str], np.ndarray]:
        pipeline = IngestPipeline(
            tiny_encoder.pixels,
            tiny_encoder.device,
            IngestLimits(10**7, 10**8, workers=1),
            lambda fn, *args: fn(*args),
            device_decode=device_decode,
        )
        try:
            decoded = pipeline.finish(pipeline.start(records, {}))
            assert all(d.error is None for _, d in decoded), decoded
            pixels = [d.pixels for _, d in decoded]
            return [r.id for r, _ in decoded], pipeline.encode_pixels(tiny_encoder, pixels)
        finally:
            pipeline.close()

    ids, on_device = vectors(True)
    pil_ids, with_pil = vectors(False)
    assert ids == pil_ids and sorted(ids) == sorted(corpus.images)
    # Each device-path vector's nearest PIL-path vector is its own image's.
    scores = on_device @ with_pil.T
    assert list(scores.argmax(axis=1)) == list(range(len(ids)))
    assert np.diag(scores) == pytest.approx(1.0, abs=0.02)
