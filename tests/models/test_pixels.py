"""The model's pixels without torch: the same as OpenCLIP's torchvision preprocessing, at a
cost bounded by the output, whatever the image's shape."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

from bench.ingest import photo_jpeg
from models.decoding import pixels_of
from models.encoder import ClipEncoder
from models.images import decode_image
from models.pixels import PixelSpec

SHAPES = [(640, 480), (480, 640), (224, 224), (300, 224), (225, 700), (90, 130), (641, 479)]


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def assert_same_pixels(ours: np.ndarray, theirs: np.ndarray) -> None:
    """At most one level apart: Pillow places the filter's taps from the box's corners in
    floating point, so a rounding can land the other way (a wrong offset, filter or pass
    order is off by many levels on many pixels)."""
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.2, (diff.max(), diff.mean())


@pytest.mark.parametrize("size", SHAPES)
def test_fit_equals_torchvision_resize_then_crop(tiny_encoder: ClipEncoder, size: tuple) -> None:
    spec = tiny_encoder.pixels
    assert spec.custom is None and spec.shorter_side == spec.size
    img = noise(*size)
    theirs = np.asarray(Compose(list(tiny_encoder.preprocess.transforms)[:2])(img))
    assert_same_pixels(spec.fit(img), theirs)


def test_a_resize_larger_than_the_crop_is_read_as_such() -> None:
    steps = [Resize(256, interpolation=InterpolationMode.BILINEAR), CenterCrop(224)]
    spec = PixelSpec.from_preprocess(Compose([*steps, _ToTensor(), _normalise()]))
    assert (spec.size, spec.shorter_side, spec.resample, spec.custom) == (
        224,
        256,
        Image.Resampling.BILINEAR,
        None,
    )
    assert spec.draft_side == 256
    for size in SHAPES:
        img = noise(*size, seed=1)
        assert_same_pixels(spec.fit(img), np.asarray(Compose(steps)(img)))


def test_other_preprocessing_runs_as_it_is() -> None:
    """A squashing resize is not resize-shorter-side-and-crop: its own steps run."""
    steps = [Resize((224, 224)), CenterCrop(224)]
    spec = PixelSpec.from_preprocess(Compose([*steps, _ToTensor(), _normalise()]))
    assert spec.custom is not None and spec.draft_side == 448
    img = noise(300, 200)
    assert np.array_equal(spec.fit(img), np.asarray(Compose(steps)(img)))


def test_a_long_thin_image_costs_only_its_output(tiny_encoder: ClipEncoder) -> None:
    """30,000 x 2 pixels pass any pixel limit; resizing it whole first would make a
    3.4 million pixel wide intermediate (about 2.5 GB at OpenCLIP's 224)."""
    spec = PixelSpec(224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    img = noise(30_000, 2)
    started = time.perf_counter()
    out = spec.fit(img)
    assert out.shape == (224, 224, 3)
    assert time.perf_counter() - started < 5  # a guard against the intermediate, not a timing


def test_pixels_of_decodes_jpegs_at_a_reduced_scale_only_down_to_the_side(
    tiny_encoder: ClipEncoder,
) -> None:
    """A 640x480 JPEG decodes at 320x240 for a side of 224 (not below it), and gives
    nearly the pixels the full decode would."""
    spec = PixelSpec(224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    data = photo_jpeg(5)
    assert decode_image(data, 10**7, draft_size=spec.draft_side).image.size == (320, 240)
    assert decode_image(data, 10**7, draft_size=241).image.size == (640, 480)
    pixels, media_type = pixels_of(data, spec, 10**7)
    assert media_type == "image/jpeg" and pixels.shape == (224, 224, 3)
    full = spec.fit(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.abs(pixels.astype(int) - full.astype(int)).mean() < 3


class _ToTensor:
    """Stands for OpenCLIP's MaybeToTensor: from_preprocess cuts at its name."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image


def _normalise() -> object:
    from torchvision.transforms import Normalize

    return Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
