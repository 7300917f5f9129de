"""The encoder contract: PIL images or strings in, L2-normalised float32 vectors out."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from models.errors import ModelLoadError
from models.fast_paths import patch_embedding_as_matmul
from models.loading import ResolvedWeights, resolve_weights
from models.pixels import PixelSpec
from models.preprocess import normalise

log = logging.getLogger(__name__)

# Very long strings only cost tokenizer time: the tokenizer truncates to the context anyway.
_CHARS_PER_TOKEN_BOUND = 24


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """What inference runs in: bf16 (or fp16) on a GPU, float32 elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"invalid device {device!r}: {exc}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return resolved


@runtime_checkable
class Encoder(Protocol):
    """What the service asks of a model version: preprocess an image (``pixels`` says how
    large its image tower's input is), encode image tensors and texts into L2-normalised
    float32 rows of ``dim`` columns, and count the tokens its text tower reads.

    ``space`` names the embedding space its vectors live in: its own version, except for a
    distilled query encoder, which writes its teacher's vectors and only encodes queries
    differently (``encode_queries``; ``separate_queries`` says whether it does)."""

    version: str
    model_name: str
    dim: int
    device: torch.device
    pixels: PixelSpec  # what its image tower takes

    @property
    def device_name(self) -> str: ...

    def preprocess_image(self, image: Image.Image) -> torch.Tensor: ...

    def encode_image_tensors(self, pixels: Sequence[torch.Tensor] | torch.Tensor) -> np.ndarray: ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    @property
    def space(self) -> str: ...

    @property
    def separate_queries(self) -> bool: ...

    def count_tokens(self, texts: Sequence[str]) -> int: ...


class ClipEncoder:
    """An OpenCLIP model with its preprocessing and tokenizer behind a narrow contract."""

    separate_queries = False

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        device: torch.device,
        model_name: str,
        version: str,
    ) -> None:
        # OpenCLIP's factories return nn.Module; encode_image/encode_text are its methods.
        self.model: Any = model.eval()
        self.preprocess = preprocess  # OpenCLIP's transforms, read once into ``pixels``
        self.pixels = PixelSpec.from_preprocess(preprocess)
        self.tokenizer = tokenizer
        self.device = device
        self.model_name = model_name
        self.version = version
        cfg = open_clip.get_model_config(model_name) or {}
        self.dim = int(cfg["embed_dim"])
        self.context_length = int(getattr(tokenizer, "context_length", 77))
        self.autocast_dtype = autocast_dtype(device)
        self._text_model: Any = self.model  # what encodes texts (see enable_int8_text)
        # On a GPU, a ViT's patch convolution as a matrix multiply (cuDNN's kernel for it
        # is slow). A convolutional tower (a ResNet) in channels-last layout, everywhere:
        # the GPU's tensor cores and the CPU's oneDNN kernels both run faster on it
        # (xmodal-tiny's tower 1.5-1.9x on this project's 2-core CPU).
        if device.type == "cuda":
            patch_embedding_as_matmul(self.model)
        visual: Any = self.model.visual
        convs = sum(isinstance(m, torch.nn.Conv2d) for m in visual.modules())
        self._channels_last = convs > 1
        if self._channels_last:
            visual.to(memory_format=torch.channels_last)

    @property
    def space(self) -> str:
        return self.version

    @property
    def int8_text(self) -> bool:
        return self._text_model is not self.model

    def enable_int8_text(self) -> None:
        """Encode texts with a copy of the model whose linear layers are int8 (PyTorch's
        dynamic quantisation: int8 weights, activations quantised per batch), on the CPU.
        The float model stays for images, fine-tuning and checkpoints; the version name
        does not change (the same weights, computed at lower precision, as bf16 autocast
        on a GPU)."""
        if self.device.type != "cpu":
            raise ModelLoadError("int8 text quantisation runs on the CPU only")
        if self.int8_text:
            return
        visual = getattr(self.model, "visual", None)
        if visual is not None:
            self.model.visual = torch.nn.Identity()  # not copied: texts never need it
        try:
            clone = copy.deepcopy(self.model)
        finally:
            if visual is not None:
                self.model.visual = visual
        with warnings.catch_warnings():
            # PyTorch marks torch.ao.quantization deprecated (torchao is its successor); in
            # this version it is what runs its CPU int8 kernels.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.ao.quantization import quantize_dynamic

            quantised = quantize_dynamic(clone, {torch.nn.Linear}, dtype=torch.qint8)
        for module in quantised.modules():
            if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
                # OpenCLIP asks a block's first linear layer for the dtype to cast inputs
                # to; an int8 layer answers with this (OpenCLIP's hook for int8 layers).
                setattr(module, "int8_original_dtype", torch.float32)  # noqa: B010
        self._text_model = quantised

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return "cpu"

    # --- images -------------------------------------------------------------------------
    def preprocess_image(self, image: Image.Image) -> torch.Tensor:
        """Resize/crop/normalise one RGB image into a (3, H, W) tensor (CPU, any thread)."""
        return normalise(self.pixels, self.pixels.fit(image)[None], "cpu")[0]

    def encode_image_tensors(self, pixels: Sequence[torch.Tensor] | torch.Tensor) -> np.ndarray:
        batch = pixels if isinstance(pixels, torch.Tensor) else torch.stack(list(pixels))
        if batch.ndim != 4 or batch.shape[0] == 0:
            raise ValueError(
                f"expected a non-empty (n, 3, H, W) batch, got shape {tuple(batch.shape)}"
            )
        batch = batch.to(self.device, non_blocking=True)
        if self._channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device):
            features = self.model.encode_image(batch)
        return normalised(features)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_image_tensors([self.preprocess_image(im) for im in images])

    # --- texts --------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, self.context_length, texts)

    def encode_token_batch(self, tokens: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device):
            features = self._text_model.encode_text(tokens.to(self.device, non_blocking=True))
        return normalised(features)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_token_batch(self.tokenize(texts))

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_texts(texts)

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the text tower reads: its context at most per text, start and end
        included (what OpenAI's ``usage`` reports)."""
        if not texts:
            return 0
        return int((self.tokenize(texts) != 0).sum())

    # --- checkpoints --------------------------------------------------------------------
    def with_model(self, model: torch.nn.Module, version: str) -> ClipEncoder:
        """Another version of this architecture (fine-tuned weights), with this one's
        preprocessing, tokenizer and device."""
        return ClipEncoder(
            model, self.preprocess, self.tokenizer, self.device, self.model_name, version
        )

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write the weights atomically in the layout ``XMODAL_PRETRAINED=path`` loads."""
        return save_weights(self.model, path, model_name=self.model_name)


def tokenize(tokenizer: Any, context_length: int, texts: Sequence[str]) -> torch.Tensor:
    """Token ids of ``texts``; very long strings are cut first (they would only cost the
    tokenizer time: it truncates to the context anyway)."""
    bound = context_length * _CHARS_PER_TOKEN_BOUND
    tokens: torch.Tensor = tokenizer([t[:bound] for t in texts])
    return tokens


def save_weights(module: torch.nn.Module, path: str | os.PathLike[str], **fields: Any) -> Path:
    """``{"state_dict": module's weights on the CPU, **fields}`` written atomically (temp
    file, fsync, rename): complete or absent."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
            torch.save({"state_dict": state, **fields}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def normalised(features: torch.Tensor) -> np.ndarray:
    out = F.normalize(features.float(), dim=-1).cpu().numpy()
    return np.ascontiguousarray(out, dtype=np.float32)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed weight initialisation without disturbing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _drop_random_init_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _random_weights_expected(expected: bool) -> Iterator[None]:
    """OpenCLIP warns on the root logger when a model gets no weights. Random weights asked
    for (``XMODAL_PRETRAINED=none``, the demo) are no news: the load line says so instead."""
    root = logging.getLogger()
    if expected:
        root.addFilter(_drop_random_init_warning)
    try:
        yield
    finally:
        root.removeFilter(_drop_random_init_warning)


def load_encoder(
    model_name: str,
    pretrained: str,
    device: str = "auto",
    cache_dir: str | os.PathLike[str] = "./data/models",
    seed: int = 0,
    weights: ResolvedWeights | None = None,
    version: str | None = None,
) -> ClipEncoder:
    """Build a ready encoder. ``weights`` may be resolved beforehand (see ``resolve_weights``);
    ``version`` names it (a registry version) instead of the name derived from the weights."""
    resolved = weights or resolve_weights(model_name, pretrained, cache_dir, seed=seed)
    torch_device = resolve_device(device)
    kwargs: dict[str, Any] = {}
    if resolved.tag_cfg.get("quick_gelu"):
        kwargs["force_quick_gelu"] = True
    preprocess_cfg = {k: v for k, v in resolved.tag_cfg.items() if k != "quick_gelu"}
    if preprocess_cfg:
        kwargs["force_preprocess_cfg"] = preprocess_cfg
    try:
        with seeded(seed), _random_weights_expected(resolved.checkpoint is None):
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=resolved.checkpoint, device="cpu", **kwargs
            )
    except Exception as exc:  # OpenCLIP signals a bad checkpoint with many types, asserts too
        raise ModelLoadError(f"could not load {resolved.version}: {exc}") from exc
    model = model.to(torch_device)
    tokenizer = open_clip.get_tokenizer(model_name)
    encoder = ClipEncoder(
        model, preprocess, tokenizer, torch_device, model_name, version or resolved.version
    )
    log.info(
        "loaded %s on %s (dim %d%s)",
        encoder.version,
        encoder.device_name,
        encoder.dim,
        ", random weights" if resolved.checkpoint is None else "",
    )
    return encoder
