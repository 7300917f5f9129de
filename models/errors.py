"""Errors raised by the encoder side. The HTTP layer maps each to one status code."""


class ModelError(Exception):
    """Base class for encoder-side errors."""


class InvalidParameters(ModelError):
    """A fine-tune request with an unknown method or hyperparameter."""


class ModelLoadError(ModelError):
    """The model or its weights could not be loaded (unknown name, no network, bad file)."""


class ImageDecodeError(ModelError):
    """The bytes are not an image we can decode."""


class ImageTooLarge(ModelError):
    """The image decodes to more pixels than allowed (decompression bomb guard)."""


class QueueFull(ModelError):
    """The encoder queue has no room for the request."""


class DeadlineExceeded(ModelError):
    """The request waited past its deadline before the encoder produced its result."""


class TrainingDiverged(ModelError):
    """Training produced a non-finite loss, weight or vector: nothing of it is kept."""
