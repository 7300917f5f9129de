"""Encoders and everything around them: OpenCLIP loading, image decoding, batching.

No web imports here: the HTTP layer lives in ``app``.
"""

from models.batching import DynamicBatcher
from models.encoder import ClipEncoder, Encoder, MappedEncoder, load_encoder
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
    "Encoder",
    "ImageDecodeError",
    "ImageTooLarge",
    "ModelError",
    "MappedEncoder",
    "ModelLoadError",
    "QueueFull",
    "decode_image",
    "load_encoder",
]
