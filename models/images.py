"""Turning uploaded bytes into RGB images, safely.

Only a fixed set of raster formats is accepted (no EPS/PDF-style formats that call out to
external programs), the pixel count is checked from the header before any pixel is
decoded, EXIF orientation is applied and every mode ends up as RGB.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from models.errors import ImageDecodeError, ImageTooLarge

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


def media_type_of(data: bytes) -> str | None:
    """The media type of image bytes from their header alone (None: not an accepted
    image), for serving stored bytes with the type they really have."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
                return MEDIA_TYPES.get(img.format or "")
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image
    format: str

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None) -> DecodedImage:
    """Decode ``data`` into an RGB image, refusing non-images and decompression bombs.

    ``draft_size`` lets JPEG decode at a reduced scale whose shorter side is still at least
    that many pixels: the DCT does the first downscale, far cheaper than decoding every
    pixel of a 12 MP photo only to resize it to 224.
    """
    if not data:
        raise ImageDecodeError("empty file: expected an image")
    try:
        with warnings.catch_warnings():
            # Our own pixel cap below is the guard; PIL's global one only warns. Corrupt
            # EXIF and TIFF tags warn as well: the image either decodes or is refused.
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            fmt = img.format or ""
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLarge(
                    f"image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels} pixels"
                )
            if draft_size and fmt == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)  # animated GIF/WebP/TIFF: the first frame stands for the image
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img))
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"not a supported image (accepted: {', '.join(ACCEPTED_FORMATS)})"
        ) from exc
    except Exception as exc:
        # Truncated or corrupt files surface as almost any exception type from PIL's
        # decoders (OSError, SyntaxError, EOFError, and also IndexError from a GIF's
        # palette, TypeError from a TIFF without dimensions): each is a bad file.
        raise ImageDecodeError(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
    if fmt not in MEDIA_TYPES:
        raise ImageDecodeError(f"unsupported image format {fmt!r}")
    return DecodedImage(image=rgb, format=fmt)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Flatten onto white rather than dropping alpha, which would expose whatever
        # colour the transparent pixels happen to carry.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")
