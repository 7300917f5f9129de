"""The one settings object. Every field is read from ``XMODAL_<NAME>`` (nested: ``__``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.service.access import read_key_file

MiB = 1024 * 1024


# Knobs an operator does not turn, kept as constants beside what they tune (the settings
# below are what an operator changes; docs/configuration.md lists them).
MAX_QUEUE = 2048  # inputs waiting per queue (image decoding, each encoder) before 429
# How long the first input of a batch waits for others to join (a request after a quiet
# spell this long, still alone, does not wait).
MAX_WAIT_MS = 5.0


def _default_decode_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="XMODAL_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    # --- model -------------------------------------------------------------------------------
    model: str = Field("ViT-B-32", description="OpenCLIP architecture name (or `xmodal-tiny`).")
    pretrained: str = Field(
        "laion2b_s34b_b79k",
        description="OpenCLIP pretrained tag, a path to a local checkpoint, or `none` for "
        "seeded random weights (only when set explicitly).",
    )
    device: str = Field(
        "auto", description="`auto` (CUDA when present), `cpu`, `cuda`, `cuda:1`, ..."
    )
    quantize_text: bool = Field(
        False,
        description="Encode texts with int8 linear layers (dynamic quantisation) on the CPU: "
        "faster queries for a small loss of recall (BENCHMARKS.md); images, fine-tuning and "
        "checkpoints stay float.",
    )
    data_dir: Path = Field(
        Path("./data"),
        description="This server's own files: its indexes, thumbnails and id; with "
        "`XMODAL_SHARED_DIR` unset, everything else too.",
    )
    shared_dir: Path | None = Field(
        None,
        description="Files every server of one service reaches: image files, model versions, "
        "snapshots, job results, the default import folder and weights cache, and the SQLite "
        "catalogue when `XMODAL_DATABASE_URL` is unset. Set, this server shares them with "
        "others and follows their writes (docs/backends-and-scaling.md); unset: the data dir, "
        "for one server alone.",
    )
    model_cache: Path | None = Field(
        None, description="Where downloaded weights are cached (default: `<shared dir>/models`)."
    )

    # --- server ------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `xmodal serve` binds.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        8000, description="Port `xmodal serve` binds."
    )
    log_level: str = Field("info", description="Python log level.")
    log_format: str = Field(
        "auto",
        description="`json`: one object per line with the request id, method, path, status "
        "and duration of every request; `text`: a line for reading; `auto`: text when "
        "stderr is a terminal, JSON otherwise.",
    )
    graceful_timeout_s: Annotated[float, Field(ge=0)] = Field(
        30.0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    shutdown_drain_s: Annotated[float, Field(ge=0)] = Field(
        0.0,
        description="On SIGTERM, how long `/readyz` answers 503 while still serving, so a load "
        "balancer stops sending before the listener closes.",
    )

    # --- access ------------------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys, each an administrator. When set, every route "
        "that changes state needs `Authorization: Bearer <key>` (401 without).",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A JSON file of API keys scoped to collections with their access (read, "
        "write, admin), beside `XMODAL_API_KEYS` (whose keys stay administrators); read at "
        "start and again on SIGHUP (docs/deployment-and-security.md).",
    )
    auth_reads: bool = Field(
        False,
        description="With keys set, searches, embeddings, listings and `/metrics` need a key "
        "too (under a keys file, `/metrics` needs an administrator's key anyway).",
    )
    image_urls: bool = Field(
        False,
        description="Let clip-retrieval's `image_url` fetch query images from the web (never "
        "from private addresses outside `XMODAL_IMAGE_URL_NETWORKS`).",
    )
    image_url_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated private networks `image_url` may reach anyway "
        "(e.g. `10.1.0.0/16` for an internal image host).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins allowed to call the API from a browser (`*` for "
        "any); none by default. Writes a browser sends from other origins without a key "
        "are refused (403).",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated host names the server answers for besides the loopback "
        "names and the bound address (any IP address too when bound to `0.0.0.0`); other "
        "`Host` headers get 400 (DNS rebinding). `*`: any.",
    )

    # --- batching ----------------------------------------------------------------------------
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = Field(
        64, description="Most inputs in one encoder call."
    )
    request_timeout_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="Deadline for an input's encoding; past it the request gets 504."
    )
    decode_workers: Annotated[int, Field(ge=1)] = Field(
        default_factory=_default_decode_workers,
        description="Threads decoding and preprocessing images, for requests and for batch "
        "jobs alike.",
    )

    # --- limits ------------------------------------------------------------------------------
    max_upload_bytes: Annotated[int, Field(ge=1)] = Field(
        20 * MiB, description="Largest single uploaded image file (413 beyond)."
    )
    max_request_bytes: Annotated[int, Field(ge=1)] = Field(
        100 * MiB, description="Largest request body (413 beyond)."
    )
    max_files_per_request: Annotated[int, Field(ge=1)] = Field(
        64, description="Most images in one upload or embed request (413 beyond)."
    )
    max_texts_per_request: Annotated[int, Field(ge=1)] = Field(
        256, description="Most texts in one indexing or embed request (413 beyond)."
    )
    max_text_chars: Annotated[int, Field(ge=1)] = Field(
        65_536,
        description="Longest text accepted (413 beyond); texts longer than the model's "
        "context are truncated, not refused.",
    )
    max_queued_jobs: Annotated[int, Field(ge=1)] = Field(
        64, description="Jobs queued or running at once; submitting more gets 429."
    )
    max_image_pixels: Annotated[int, Field(ge=1)] = Field(
        64_000_000, description="Most decoded pixels per image (decompression bombs get 413)."
    )
    max_k: Annotated[int, Field(ge=1, le=100_000)] = Field(
        1000, description="Most results one search may ask for (400 beyond)."
    )
    max_search_hits: Annotated[int, Field(ge=1)] = Field(
        20_000,
        description="Most hits one request's searches may ask for together (each query's "
        "offset + k, summed over a batch; 413 beyond). Deepening for ties and `dedup` may "
        "fetch 8 x `XMODAL_MAX_K` more per request.",
    )
    search_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        10.0,
        description="Deadline for a request's searches, from the start of its embedding; past "
        "it the request gets 504.",
    )
    max_concurrent_requests: Annotated[int, Field(ge=1)] = Field(
        256,
        description="Requests served at once, counted once their body has arrived; more get "
        "429 at once (health and metrics are not counted).",
    )
    max_requests_per_client: Annotated[int, Field(ge=0)] = Field(
        128,
        description="Requests one client address may have in progress, bodies still arriving "
        "included (429 beyond; 0: no limit). Behind a proxy every client has its address: "
        "turn on its forwarded headers, or set 0.",
    )
    body_timeout_s: Annotated[float, Field(gt=0)] = Field(
        60.0,
        description="Seconds a request's whole body may take to arrive (408 beyond).",
    )

    # --- batch indexing ------------------------------------------------------------------------
    import_root: Path | None = Field(
        None,
        description="Folder batch jobs read sources from (default: `<data dir>/import`); "
        "paths resolving outside it are refused.",
    )
    import_chunk_size: Annotated[int, Field(ge=1)] = Field(
        512, description="Records per committed chunk of a batch job (the resume granularity)."
    )

    # --- storage -----------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None,
        description="The catalogue (collections, items and their metadata, texts and vectors, "
        "jobs) on a PostgreSQL server: `postgresql://user:password@host:5432/xmodal` or "
        "`postgresql:///xmodal?host=/run/postgresql`; unset: SQLite under the shared dir "
        "(docs/backends-and-scaling.md).",
    )
    vector_backend: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="Where vectors are searched: `faiss` (in this process) or `milvus` "
        "(Milvus Lite in a local file, or a Milvus server; see `XMODAL_MILVUS_URI`).",
    )
    milvus_uri: str | None = Field(
        None,
        description="With `milvus`: a local file path ending in `.db` (Milvus Lite, embedded) "
        "or `http://host:19530` (Milvus standalone or cluster; with auth, "
        "`http://user:password@host:19530`, or an API key as `http://KEY@host:19530`); "
        "unset: `DATA_DIR/milvus.db` (one server alone: Milvus Lite's file serves one "
        "process).",
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster for index jobs with engine `ray` (`auto`, `ray://host:10001`); "
        "unset: a local cluster started in the server's process.",
    )
    store_images: bool = Field(True, description="Keep uploaded image bytes (content-addressed).")
    index_dump_interval_s: Annotated[float, Field(gt=0)] = Field(
        60.0,
        description="How often changed FAISS indexes are dumped to disk (an index is dumped "
        "after 10,000 changes as well).",
    )
    snapshot_bytes_per_collection: Annotated[int, Field(ge=1)] = Field(
        100 * 1024 * MiB,
        description="Most bytes of snapshots kept of one collection (409 beyond); a snapshot "
        "also needs its size and 256 MiB free on the data dir's disk (507 otherwise).",
    )
    faiss_gpu: bool | None = Field(
        None, description="Serve FAISS indexes from the GPU (default: when FAISS reports one)."
    )

    @field_validator("pretrained")
    @classmethod
    def _pretrained_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("set a pretrained tag, a checkpoint path, or `none` explicitly")
        return value.strip()

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            value = [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _keys_file_usable(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_key_file(value)  # its reason, at start, rather than a 401 for every key
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            if len(key.get_secret_value()) < 16:
                raise ValueError("each API key needs at least 16 characters")
        return value

    @property
    def image_url_network_list(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(n, strict=False) for n in self.image_url_networks]

    @field_validator("image_url_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [n.strip() for n in value.split(",") if n.strip()]
        return value

    @field_validator("image_url_networks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net, strict=False)  # ValueError names the bad one
        return value

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            value = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("milvus_uri")
    @classmethod
    def _milvus_uri_kind(cls, value: str | None) -> str | None:
        remote = value is None or value.startswith(("http://", "https://"))
        if not remote and not str(value).endswith(".db"):
            raise ValueError(
                "XMODAL_MILVUS_URI is http(s)://host:port (a Milvus server) or a file path"
                " ending in .db (Milvus Lite)"
            )
        return value

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value.lower() not in {"json", "text", "auto"}:
            raise ValueError("log_format is json, text or auto")
        return value.lower()

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"critical", "error", "warning", "info", "debug"}:
            raise ValueError("log_level is one of critical, error, warning, info, debug")
        return value.lower()

    @model_validator(mode="after")
    def _queue_holds_a_whole_request(self) -> Settings:
        # A request bigger than the queue could never be admitted: it would get 429 forever.
        biggest = max(self.max_files_per_request, self.max_texts_per_request)
        if biggest > MAX_QUEUE:
            raise ValueError(
                f"max_files_per_request and max_texts_per_request are at most {MAX_QUEUE} "
                f"(the inputs a queue holds), got {biggest}"
            )
        return self

    @model_validator(mode="after")
    def _shared_vectors(self) -> Settings:
        # Milvus Lite's file is opened by one process: servers sharing a catalogue would
        # each search a Milvus of their own.
        if self.shared_dir is not None and self.vector_backend == "milvus":
            uri, _ = self.milvus_target
            if not uri.startswith(("http://", "https://")):
                raise ValueError(
                    "with XMODAL_SHARED_DIR, XMODAL_MILVUS_URI is a Milvus server"
                    " (http://host:19530, or `milvus-lite server`): a Milvus Lite file serves"
                    " one process"
                )
        return self

    @property
    def shared_root(self) -> Path:
        """Where what every server reaches lives: ``shared_dir``, else the data dir."""
        return self.shared_dir or self.data_dir

    @property
    def import_root_dir(self) -> Path:
        return self.import_root or self.shared_root / "import"

    @property
    def milvus_target(self) -> tuple[str, str | None]:
        """Milvus's URI without credentials, and its token (``user:password`` or an API
        key) from the URI's user part, if any."""
        uri = self.milvus_uri or str(self.data_dir / "milvus.db")
        parts = urlsplit(uri)
        if not parts.netloc or "@" not in parts.netloc:
            return uri, None
        user, host = parts.netloc.rsplit("@", 1)
        name, _, password = user.partition(":")
        token = unquote(name) + (":" + unquote(password) if password else "")
        return urlunsplit(parts._replace(netloc=host)), token

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache or self.shared_root / "models"
