"""The Milvus vector backend: each modality of each collection is one Milvus collection.

``XMODAL_MILVUS_URI`` is a local file path (Milvus Lite, embedded in this process) or the
``http://host:19530`` address of a Milvus standalone or cluster. Each Milvus collection
(``xmodal_<uid>_<modality>``) holds, per item, the store's label as primary key, the
vector, the item's id, modality, model version and metadata; filtered searches are
answered by Milvus itself from a filter expression (``index.vectors.milvus_specs``).

SQLite stays the source of truth, as on the FAISS backend: an item is committed there
first and then written to Milvus, so what Milvus missed in a crash is written again on
the next start (the snapshot file of this backend holds only the watermarks, written
after a Milvus flush). Writes are upserts and deletes are by primary key, so replaying
them is harmless. Milvus collections whose xmodal collection no longer exists (a delete
or a model switch that died half-way) are dropped on start.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.catalogue.base import Catalogue
from index.catalogue.rows import SQL_CHUNK, dumps
from index.errors import DimensionMismatch, StoreError
from index.filter_tree import Node
from index.types import NewItem
from index.values import InvalidValue
from index.vectors.backend import SearchResult
from index.vectors.milvus_filters import bool_keys, filter_expression, null_keys
from index.vectors.milvus_specs import parse_spec, search_params, spec_params

log = logging.getLogger(__name__)

PREFIX = "xmodal_"
_MAGIC = b"XMMILVUS1\n"
MAX_LIMIT = 16_384  # Milvus's topk limit
MAX_JSON_BYTES = 65_536  # Milvus's default limit on one JSON field value
_VARCHAR = {"item_id": 2048, "modality": 16, "model_version": 1024}


class BackendUnavailable(StoreError):
    """The vector backend (a Milvus server) refused or did not answer."""


def _milvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:  # an optional extra
        raise BackendUnavailable(
            "XMODAL_VECTOR_BACKEND=milvus needs pymilvus (and milvus-lite for a local file):"
            " pip install '.[scale]'"
        ) from exc
    return pymilvus


def collection_name(key: str) -> str:
    return PREFIX + key


class MilvusIndex:
    """One modality's vectors of one collection in Milvus (a ``VectorBackend``)."""

    trained = True
    exclusive_search = False
    native_filters = True
    # Up to this many labels a `label in [...]` beats Milvus's own JSON filter by far (Milvus
    # Lite at 100k items: 0.16 s for 1,000 labels against 8.4 s for the filter itself).
    max_allowed = 16_384
    persistent = True

    def __init__(self, factory: MilvusBackends, name: str, d: int, spec: str) -> None:
        self.factory = factory
        self.name = name
        self.d = d
        self.spec = spec
        self._count: int | None = None

    @property
    def client(self) -> Any:
        return self.factory.client

    @property
    def ntotal(self) -> int:
        if self._count is None:
            rows = self._call(
                "count", self.client.query, self.name, filter="", output_fields=["count(*)"]
            )
            self._count = int(rows[0]["count(*)"])
        return self._count

    def needs_training(self) -> bool:
        return False  # Milvus builds and trains its indexes itself

    def needs_compaction(self) -> bool:
        return False

    def train(self) -> None:
        pass

    # --- writes -----------------------------------------------------------------------------
    def add(self, labels: np.ndarray, xb: np.ndarray) -> None:
        labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        if xb.ndim != 2 or xb.shape[1] != self.d or len(xb) != len(labels):
            raise DimensionMismatch(f"vectors must have shape ({len(labels)}, {self.d})")
        payload = self.factory.payloads(labels)
        rows = []
        for label, vector in zip(labels.tolist(), xb, strict=True):
            p = payload.get(label)
            if p is None:  # deleted since: its tombstone follows
                continue
            rows.append({"label": label, "vector": vector.tolist(), **p})
        for start in range(0, len(rows), 1000):
            self._call("insert", self.client.upsert, self.name, rows[start : start + 1000])
        self._count = None

    def remove(self, labels: np.ndarray) -> None:
        ids = [int(x) for x in np.asarray(labels, dtype=np.int64).reshape(-1)]
        for start in range(0, len(ids), 1000):
            self._call("delete", self.client.delete, self.name, ids=ids[start : start + 1000])
        if ids:
            self._count = None

    def drop(self) -> None:
        self.factory.drop(self.name)

    # --- search -----------------------------------------------------------------------------
    def search(
        self,
        xq: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        where: Node | None = None,
    ) -> list[SearchResult]:
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != self.d:
            raise DimensionMismatch(f"query must have shape (n, {self.d}), got {xq.shape}")
        if k < 1:
            raise ValueError("k must be >= 1")
        clauses = []
        if where:
            clauses.append(filter_expression(where))
        if allowed is not None:
            if not len(allowed):
                return [SearchResult(np.zeros(0, np.int64), np.zeros(0, np.float32))] * len(xq)
            clauses.append(f"label in [{','.join(str(int(x)) for x in allowed)}]")
        limit = min(k, MAX_LIMIT)
        found = self._call(
            "search",
            self.client.search,
            self.name,
            data=xq.tolist(),
            limit=limit,
            filter=" and ".join(f"({c})" for c in clauses),
            output_fields=[],
            search_params={
                "metric_type": "IP",
                "params": search_params(self.spec, limit, self.factory.nprobe),
            },
        )
        out = []
        for hits in found:
            labels = np.array([h["label"] for h in hits], dtype=np.int64)
            scores = np.array([h["distance"] for h in hits], dtype=np.float32)
            order = np.lexsort((labels, -scores))
            out.append(SearchResult(labels[order], scores[order]))
        return out

    # --- persistence ------------------------------------------------------------------------
    def to_bytes(self, meta: dict[str, Any]) -> bytes:
        """Flush Milvus (so the watermarks never run ahead of what it keeps), then the
        watermarks and which Milvus collection this is."""
        self._call("flush", self.client.flush, self.name)
        header = {**meta, "d": self.d, "spec": self.spec, "collection": self.name}
        return _MAGIC + json.dumps(header).encode()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, StoreError):
                raise
            raise BackendUnavailable(f"Milvus {what} on {self.name} failed: {exc}") from exc


class MilvusBackends:
    """The ``BackendFactory`` for Milvus: one client for the whole store."""

    shared = True

    def __init__(
        self, uri: str, token: str | None = None, nprobe: int | None = None, timeout: float = 10.0
    ) -> None:
        self.uri = uri
        self.local = not uri.startswith(("http://", "https://"))
        self.nprobe = nprobe
        self._token = token
        self._timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()
        self.db: Catalogue | None = None

    def attach(self, db: Catalogue) -> None:
        """The store's database, where item payloads are read from."""
        self.db = db

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                pymilvus = _milvus()
                if self.local:
                    Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._client = pymilvus.MilvusClient(
                        uri=self.uri, token=self._token or "", timeout=self._timeout
                    )
                except Exception as exc:
                    raise BackendUnavailable(f"cannot reach Milvus at {self.uri}: {exc}") from exc
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception as exc:  # closing must not stop the rest of a shutdown
                    log.warning("closing the Milvus client: %s", exc)
                self._client = None

    def check(self, d: int, spec: str | None) -> str:
        return parse_spec(spec, d, server=not self.local)

    def check_items(self, items: Sequence[NewItem]) -> None:
        for it in items:
            size = len(dumps(it.metadata).encode())
            if size > MAX_JSON_BYTES:
                raise InvalidValue(
                    f"the metadata of {it.id!r} is {size} bytes as JSON; Milvus keeps at most"
                    f" {MAX_JSON_BYTES}"
                )

    def create(self, d: int, spec: str, key: str = "") -> MilvusIndex:
        name = collection_name(key)
        self.drop(name)
        pymilvus = _milvus()
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("label", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=d)
        for field, length in _VARCHAR.items():
            schema.add_field(field, pymilvus.DataType.VARCHAR, max_length=length)
        schema.add_field("metadata", pymilvus.DataType.JSON)
        schema.add_field("null_keys", pymilvus.DataType.JSON)
        schema.add_field("bool_keys", pymilvus.DataType.JSON)
        kind, params = spec_params(spec)
        index_params = self.client.prepare_index_params()
        index_params.add_index("vector", index_type=kind, metric_type="IP", params=params)
        index = MilvusIndex(self, name, d, spec)
        index._call(
            "create",
            self.client.create_collection,
            name,
            schema=schema,
            consistency_level="Strong",  # an acknowledged write is searchable
        )
        # Not waited for (pymilvus polls every 0.5 s): an empty collection's index is built
        # at once, and later segments are indexed by Milvus as they seal.
        index._call("index", self.client.create_index, name, index_params, sync=False)
        index._call("load", self.client.load_collection, name)
        index._count = 0
        return index

    def build(
        self, d: int, spec: str, labels: np.ndarray, xb: np.ndarray, key: str = ""
    ) -> MilvusIndex:
        index = self.create(d, spec, key)
        index.add(labels, xb)
        return index

    def existing(self, d: int, spec: str, key: str) -> MilvusIndex | None:
        name = collection_name(key)
        if not self.client.has_collection(name):
            return None
        self.client.load_collection(name)
        return MilvusIndex(self, name, d, spec)

    def load(self, data: bytes) -> tuple[MilvusIndex, dict[str, Any]]:
        if not data.startswith(_MAGIC):
            raise ValueError("not a Milvus watermark file")
        meta: dict[str, Any] = json.loads(data[len(_MAGIC) :])
        name = str(meta["collection"])
        if not self.client.has_collection(name):
            raise ValueError(f"Milvus has no collection {name}")
        self.client.load_collection(name)
        index = MilvusIndex(self, name, int(meta["d"]), str(meta["spec"]))
        fields = {f["name"] for f in self.client.describe_collection(name)["fields"]}
        if "bool_keys" not in fields:
            # Made before filters had operators: SQLite answers its filters (exact, slower)
            # until it is built again (a re-index, or a move to another model version).
            index.native_filters = False
        return index, meta

    def drop(self, name: str) -> None:
        try:
            if self.client.has_collection(name):
                self.client.drop_collection(name)
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"Milvus could not drop {name}: {exc}") from exc

    def prune(self, keys: Iterable[str]) -> None:
        """Drop this backend's Milvus collections that belong to none of ``keys``."""
        keep = {collection_name(k) for k in keys}
        for name in self.client.list_collections():
            if name.startswith(PREFIX) and name not in keep:
                log.info("dropping %s: its collection is gone", name)
                self.drop(name)

    def payloads(self, labels: np.ndarray) -> dict[int, dict[str, Any]]:
        """What Milvus keeps beside each vector, read from SQLite by label."""
        assert self.db is not None, "attach the store's database first"
        out: dict[int, dict[str, Any]] = {}
        unique = sorted({int(x) for x in labels})
        for start in range(0, len(unique), SQL_CHUNK):
            chunk = unique[start : start + SQL_CHUNK]
            for label, item_id, modality, metadata, version in self.db.reader().execute(
                "SELECT label, id, modality, metadata, model_version FROM items WHERE label IN"
                f" ({','.join('?' * len(chunk))})",
                chunk,
            ):
                values = json.loads(metadata)
                out[int(label)] = {
                    "item_id": item_id,
                    "modality": modality,
                    "model_version": version,
                    "metadata": values,
                    "null_keys": null_keys(values),
                    "bool_keys": bool_keys(values),
                }
        return out
