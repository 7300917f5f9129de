"""Encoders and everything around them: OpenCLIP loading, image decoding, batching.

No web imports here: the HTTP layer lives in ``app``.
"""

from models.batching import DynamicBatcher
from models.encoder import ClipEncoder, load_encoder
from models.errors import (
    DeadlineExceeded,
    ImageDecodeError,
    ImageTooLarge,
    ModelError,
    ModelLoadError,
    QueueFull,
)
from models.images import decode_image

__all__ = [
    "ClipEncoder",
    "DeadlineExceeded",
    "DynamicBatcher",
    "ImageDecodeError",
    "ImageTooLarge",
    "ModelError",
    "ModelLoadError",
    "QueueFull",
    "decode_image",
    "load_encoder",
]
