from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from models.errors import ImageDecodeError, ImageTooLarge
from models.images import decode_image
from tests.helpers import image_bytes

LIMIT = 10_000_000


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_each_accepted_format_decodes_to_rgb(fmt: str, media_type: str) -> None:
    decoded = decode_image(image_bytes((200, 30, 30), size=(40, 30), fmt=fmt), LIMIT)
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == (40, 30)
    assert decoded.media_type == media_type
    r, g, b = decoded.image.getpixel((20, 15))
    assert r > 150 and g < 80 and b < 80


def test_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    decoded = decode_image(buf.getvalue(), LIMIT)
    r, g, b = decoded.image.getpixel((10, 10))
    assert r > 200 and g < 50 and b < 50


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (60, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    decoded = decode_image(buf.getvalue(), LIMIT)
    assert decoded.image.size == (20, 60)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16"])
def test_other_modes_become_rgb(mode: str) -> None:
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    decoded = decode_image(image_bytes((10, 200, 10), fmt=fmt, mode=mode), LIMIT)
    assert decoded.image.mode == "RGB"


def test_transparent_pixels_flatten_onto_white() -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), LIMIT).image.getpixel((5, 5)) == (255, 255, 255)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = image_bytes((0, 0, 0), size=(5000, 5000), fmt="PNG")  # ~25 MP in a tiny file
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(bomb, max_pixels=4_000_000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, not an image",
        b"%PDF-1.4\n",
        image_bytes(fmt="JPEG")[:60],
        image_bytes(fmt="PNG")[:-40],
    ],
    ids=["empty", "text", "pdf", "truncated-jpeg", "truncated-png"],
)
def test_non_images_and_broken_images_raise_decode_errors(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data, LIMIT)


def test_formats_outside_the_list_are_refused() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")
    with pytest.raises(ImageDecodeError, match="not a supported image"):
        decode_image(buf.getvalue(), LIMIT)


def test_jpeg_draft_keeps_the_shorter_side_at_least_the_draft_size() -> None:
    data = image_bytes((1, 2, 3), size=(1600, 1200), fmt="JPEG")
    decoded = decode_image(data, LIMIT, draft_size=128)
    assert min(decoded.image.size) >= 128
    assert decoded.image.size[0] < 1600
    assert np.asarray(decoded.image).shape[2] == 3


def _noise(fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    frames = [Image.effect_noise((40, 30), 50).convert("RGB") for _ in range(2)]
    if fmt == "GIF":
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    else:
        frames[0].save(buf, format=fmt, **options)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("GIF", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("PNG", {}),
        ("JPEG", {}),
        ("WEBP", {}),
        ("BMP", {}),
    ],
)
def test_every_decoder_failure_is_an_image_decode_error(fmt: str, options: dict) -> None:
    """Mutated files (bytes flipped, cut, inserted) either decode or raise our two errors,
    never whatever the format's decoder happens to raise."""
    data = _noise(fmt, **options)
    rng = np.random.default_rng(0)
    for _ in range(150):
        d = bytearray(data)
        op = rng.integers(3)
        if op == 0:
            for p in rng.integers(0, len(d), rng.integers(1, 5)):
                d[p] = int(rng.integers(256))
        elif op == 1:
            d = d[: int(rng.integers(len(d)))]
        else:
            p = int(rng.integers(len(d)))
            d[p:p] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        try:
            decoded = decode_image(bytes(d), 10_000_000)
        except (ImageDecodeError, ImageTooLarge):
            continue
        assert decoded.image.mode == "RGB"
