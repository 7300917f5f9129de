"""Resolving OpenCLIP weights: pretrained tags, local checkpoints, or seeded random weights.

OpenCLIP's own download path retries for close to a minute when there is no network. We
look in the cache first, then probe the download host with a short timeout, so that an
offline machine fails in seconds with a message that says what to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from models.errors import ModelLoadError

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "model_configs"
RANDOM_WEIGHTS = "none"
OFFLINE_HINT = (
    "Download the checkpoint on a machine with network access and set "
    "XMODAL_PRETRAINED=/path/to/weights (or XMODAL_PRETRAINED=none for random weights)."
)
NO_WEIGHTS_HINT = (
    "Without these weights: `make demo` trains a small model offline and serves meaningful "
    "searches of a generated gallery; `make run-tiny` serves random weights (to try the API; "
    "its results mean nothing)."
)


def offline_hint(cfg: dict[str, Any]) -> str:
    """Which file to fetch for ``cfg``, from where, what to set, and what works without."""
    if cfg.get("hf_hub"):
        repo = str(cfg["hf_hub"]).strip("/")
        where = (
            f"download {HF_SAFE_WEIGHTS_NAME} (or {HF_WEIGHTS_NAME}) from "
            f"https://huggingface.co/{repo}/tree/main"
        )
        file = HF_SAFE_WEIGHTS_NAME
    else:
        url = str(cfg.get("url", ""))
        file = url.rsplit("/", 1)[-1] or "the checkpoint"
        where = f"download {url}"
    return (
        f"On a machine with network access, {where}, copy it to this machine (into "
        f"data/models/, say) and set XMODAL_PRETRAINED=data/models/{file} (any path to the "
        f"file works). {NO_WEIGHTS_HINT}"
    )


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a model's weights come from and the version string that names them."""

    checkpoint: str | None  # local file; None for random weights (or not yet downloaded)
    version: str
    tag_cfg: dict[str, Any]  # preprocessing/quick_gelu settings that belong to a tag


def register_model_configs() -> None:
    """Make our architecture configs (``xmodal-tiny``) known to OpenCLIP's factory."""
    ours = {p.stem for p in CONFIG_DIR.glob("*.json")}
    if not ours.issubset(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


def check_model_name(model_name: str) -> None:
    register_model_configs()
    if model_name not in open_clip.list_models():
        known = ", ".join(m for m in open_clip.list_models() if m.startswith(("ViT-B", "xmodal")))
        raise ModelLoadError(f"unknown model architecture {model_name!r}; for example: {known}")


def resolve_weights(
    model_name: str,
    pretrained: str,
    cache_dir: str | os.PathLike[str],
    seed: int = 0,
    probe_timeout: float = 4.0,
    check_only: bool = False,
) -> ResolvedWeights:
    """Find (or download) the weights ``pretrained`` names, failing fast when offline.

    ``check_only`` stops short of the slow parts (hashing a checkpoint, downloading): it
    only proves the weights are on disk or their host answers, so a server can refuse to
    start in seconds and leave the real loading to its readiness phase.
    """
    check_model_name(model_name)
    if pretrained.strip().lower() == RANDOM_WEIGHTS:
        return ResolvedWeights(None, f"{model_name}@random-seed{seed}", {})

    path = Path(pretrained).expanduser()
    if path.is_file():
        digest = "unhashed" if check_only else _file_digest(path)
        return ResolvedWeights(str(path), f"{model_name}@{path.stem}-{digest}", {})

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        if os.sep in pretrained or path.suffix in {".pt", ".pth", ".bin", ".safetensors"}:
            raise ModelLoadError(f"checkpoint file {pretrained!r} does not exist")
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ModelLoadError(
            f"{pretrained!r} is neither a file nor a pretrained tag of {model_name}; "
            f"known tags: {', '.join(tags) or 'none'}; or set XMODAL_PRETRAINED=/path/to/weights"
        )
    tag_cfg = {
        k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode", "quick_gelu") if k in cfg
    }
    version = f"{model_name}@{pretrained}"
    cache_dir = Path(cache_dir)

    cached = _cached_checkpoint(cfg, cache_dir)
    if cached:
        return ResolvedWeights(cached, version, tag_cfg)

    host, port = _download_host(cfg)
    reason = _unreachable(host, port, probe_timeout)
    if reason:
        raise ModelLoadError(
            f"weights for {model_name} tag {pretrained!r} are not cached under {cache_dir} "
            f"and {host} cannot be reached ({reason}). {offline_hint(cfg)}"
        )
    if check_only:
        return ResolvedWeights(None, version, tag_cfg)
    log.info("downloading %s weights %r into %s", model_name, pretrained, cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        downloaded = open_clip.download_pretrained(cfg, cache_dir=str(cache_dir))
    except Exception as exc:  # OpenCLIP raises several types for a failed download
        raise ModelLoadError(
            f"download of {model_name} tag {pretrained!r} failed: {exc}. {offline_hint(cfg)}"
        ) from exc
    if not downloaded:
        raise ModelLoadError(
            f"tag {pretrained!r} of {model_name} has no download source. {OFFLINE_HINT}"
        )
    return ResolvedWeights(downloaded, version, tag_cfg)


def _cached_checkpoint(cfg: dict[str, Any], cache_dir: Path) -> str | None:
    if cfg.get("file"):
        return str(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS_NAME
        candidates = [filename]
        if filename == HF_WEIGHTS_NAME:
            candidates.insert(0, HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        for name in candidates:
            found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache_dir))
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = cfg.get("url", "")
    if url:
        target = cache_dir / os.path.basename(urlparse(url).path)
        if target.is_file():
            return str(target)
    return None


def _download_host(cfg: dict[str, Any]) -> tuple[str, int]:
    """The host and port the weights of ``cfg`` would come from."""
    if cfg.get("hf_hub"):
        url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    else:
        url = urlparse(cfg.get("url", ""))
    return url.hostname or "?", url.port or (80 if url.scheme == "http" else 443)


def _unreachable(host: str, port: int, timeout: float) -> str | None:
    """Return why ``host:port`` cannot be reached within ``timeout`` s, or None."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return "HF_HUB_OFFLINE is set"
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(None)
        except OSError as exc:
            outcome.append(str(exc) or type(exc).__name__)

    # Name resolution ignores socket timeouts, so the whole probe runs in a thread we
    # stop waiting for.
    probe = threading.Thread(target=connect, daemon=True, name="xmodal-net-probe")
    probe.start()
    probe.join(timeout + 1.0)
    if not outcome:
        return f"no answer within {timeout + 1.0:.0f} s"
    return outcome[0]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]
