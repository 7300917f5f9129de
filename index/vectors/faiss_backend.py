"""The FAISS vector backend: inner-product search over caller-chosen int64 labels.

A ``FaissIndex`` wraps a FAISS index in ``IndexIDMap2`` so results come back as the
store's labels. The default spec is exact (``Flat``). A spec that needs training (IVF,
PQ, ...) starts as an exact index and is swapped for the trained one once enough vectors
have arrived, so results are exact until then. Index types that cannot remove vectors
(HNSW, any GPU index) delete softly: the labels are filtered out of results and the index
asks to be compacted once they pile up.

No locking here: the store serialises writers and decides who may search concurrently.
"""

from __future__ import annotations

import json
import logging
import struct
from typing import Any

import faiss as _faiss
import numpy as np

from index.errors import DimensionMismatch, InvalidIndexSpec
from index.filter_tree import Node
from index.vectors.backend import SearchResult
from index.vectors.faiss_specs import parse_spec

log = logging.getLogger(__name__)

# FAISS's bundled type stubs lag its SWIG API (search parameters, IndexIDMap2 fields), so
# the module is typed loosely here; the tests check these calls against real FAISS.
faiss: Any = _faiss

GPU_MAX_K = 2048  # FAISS GPU k-selection limit
# Query batches below this many rows are searched on one OpenMP thread: FAISS splits a
# flat search by query, so one query leaves the second thread spinning (twice the CPU for
# the same answer) and a few gain little on a busy machine; the server's search workers
# run batches side by side instead. Larger batches (and jobs) use every thread.
SMALL_QUERY_BATCH = 20
_OMP_THREADS = faiss.omp_get_max_threads()
# Version 2: snapshots of version 1 may hold IVF indexes whose labels a delete had shifted
# (see ``can_remove``); they are rebuilt from SQLite, once, instead of trusted.
_MAGIC = b"XMIDX2\n"
_BEFORE_IVF_FIX = b"XMIDX1\n"


def _omp_threads(n: int) -> None:
    """OpenMP threads for this thread's next FAISS calls (the setting is per thread)."""
    if faiss.omp_get_max_threads() != n:
        faiss.omp_set_num_threads(n)


def gpu_count() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def new_gpu_resources() -> Any:
    return faiss.StandardGpuResources()


def build_index(d: int, spec: str) -> faiss.Index:
    try:
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise InvalidIndexSpec(f"FAISS cannot build {spec!r} for dimension {d}: {msg}") from exc
    return index


def training_size(index: faiss.Index) -> int:
    """How many vectors ``index`` should see before it is trained (0: needs none)."""
    if index.is_trained:
        return 0
    need = 1000
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        need = max(need, 39 * int(ivf.nlist))  # FAISS warns below 39 points per centroid
    inner = faiss.downcast_index(ivf if ivf is not None else index)
    pq = getattr(inner, "pq", None)
    if pq is not None:
        need = max(need, 39 * (1 << int(pq.nbits)))
    return need


class FaissIndex:
    """One modality's vectors in FAISS (a ``VectorBackend``)."""

    native_filters = False
    max_allowed = 2**62  # any number: FAISS takes them as a selector
    persistent = False

    def __init__(
        self,
        d: int,
        spec: str | None = None,
        *,
        gpu_resources: Any = None,
        nprobe: int | None = None,
    ) -> None:
        self.d = int(d)
        self.spec = parse_spec(spec, self.d)  # only the grammar's families reach FAISS
        self._gpu_resources = gpu_resources
        template = build_index(self.d, self.spec)
        self.train_size = training_size(template)
        self.nprobe = nprobe
        self.soft_deleted: set[int] = set()
        self._gpu = False
        if self.train_size == 0:
            self.trained = True
            self._cpu_index_kind = faiss.downcast_index(template)
            self._index = self._place(faiss.IndexIDMap2(template))
        else:
            self.trained = False
            self._cpu_index_kind = faiss.IndexFlatIP(self.d)
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.d))  # exact until trained
        self._index_ref = template  # keep the wrapped index alive alongside its IDMap

    # --- state ------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Vectors that searches can return (soft-deleted ones excluded)."""
        return int(self._index.ntotal) - len(self.soft_deleted)

    @property
    def on_gpu(self) -> bool:
        return self._gpu

    @property
    def exclusive_search(self) -> bool:
        return self._gpu  # FAISS CPU indexes take concurrent searches; GPU resources do not

    @property
    def can_remove(self) -> bool:
        """Only a flat index removes in place: ``IndexIDMap2`` renumbers its ids to match
        the positions a flat index shifts down, but an IVF index keeps its internal ids,
        so removing from one left every later label pointing at its neighbour's vector."""
        return not self.on_gpu and isinstance(self._cpu_index_kind, faiss.IndexFlat)

    def needs_training(self) -> bool:
        return not self.trained and self._index.ntotal >= self.train_size

    def needs_compaction(self) -> bool:
        return len(self.soft_deleted) > max(1024, int(self._index.ntotal) // 10)

    # --- writes -----------------------------------------------------------------------------
    def add(self, labels: np.ndarray, xb: np.ndarray) -> None:
        labels, xb = self._check_add(labels, xb)
        if len(labels):
            self._index.add_with_ids(xb, labels)

    def remove(self, labels: np.ndarray) -> None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
        if not len(labels):
            return
        if self.can_remove:
            self._index.remove_ids(labels)
        else:
            self.soft_deleted.update(int(x) for x in labels)

    def train(self) -> None:
        if self.needs_training():
            self.install_trained(self.train_template(self.training_sample(self.sample_cap)))

    def training_sample(self, max_points: int | None = None) -> np.ndarray:
        """A copy of the exact staging vectors to train the real index on."""
        inner = faiss.downcast_index(self._index.index)
        n = int(inner.ntotal)
        xb = inner.reconstruct_n(0, n)
        if max_points is not None and n > max_points:
            rng = np.random.default_rng(0)
            xb = xb[rng.choice(n, max_points, replace=False)]
        return np.ascontiguousarray(xb, dtype=np.float32)

    def train_template(self, sample: np.ndarray) -> faiss.Index:
        """Train a fresh index of this spec on ``sample``; touches no state, so it can run
        without the store's lock."""
        template = build_index(self.d, self.spec)
        template.train(np.ascontiguousarray(sample, dtype=np.float32))
        return template

    def install_trained(self, template: faiss.Index) -> None:
        """Move every staged vector into the trained ``template`` and serve from it."""
        if self.trained:
            return
        staging = self._index
        labels = faiss.vector_to_array(staging.id_map).astype(np.int64)
        xb = faiss.downcast_index(staging.index).reconstruct_n(0, int(staging.ntotal))
        self._cpu_index_kind = faiss.downcast_index(template)
        self._set_nprobe(template)
        mapped = faiss.IndexIDMap2(template)
        if len(labels):
            mapped.add_with_ids(np.ascontiguousarray(xb, dtype=np.float32), labels)
        self._index_ref = template
        self._index = self._place(mapped)
        self.trained = True
        log.info("trained %s on %d vectors", self.spec, len(labels))

    @classmethod
    def build(
        cls,
        d: int,
        spec: str | None,
        labels: np.ndarray,
        xb: np.ndarray,
        *,
        gpu_resources: Any = None,
        nprobe: int | None = None,
    ) -> FaissIndex:
        """A new index holding exactly these vectors, trained if there are enough of them
        (start-up without a snapshot, compaction)."""
        index = cls(d, spec, gpu_resources=gpu_resources, nprobe=nprobe)
        index.add(labels, xb)
        index.train()
        return index

    @property
    def sample_cap(self) -> int:
        """Training points worth using: more adds time, not accuracy."""
        return max(self.train_size * 8, 65536)

    # --- search -----------------------------------------------------------------------------
    def search(
        self,
        xq: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        where: Node | None = None,
    ) -> list[SearchResult]:
        """Top-``k`` labels per query by inner product, best first; ``allowed`` restricts
        the candidates to those labels."""
        if where:
            raise ValueError("FAISS takes filters as allowed labels")
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        if xq.ndim != 2 or xq.shape[1] != self.d:
            raise DimensionMismatch(f"query must have shape (n, {self.d}), got {xq.shape}")
        if k < 1:
            raise ValueError("k must be >= 1")
        empty = SearchResult(np.zeros(0, np.int64), np.zeros(0, np.float32))
        total = int(self._index.ntotal)
        if total == 0 or (allowed is not None and len(allowed) == 0):
            return [empty for _ in range(len(xq))]
        allowed_set: np.ndarray | None = None
        params = None
        k_eff = k + len(self.soft_deleted)
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            if self.on_gpu or not self._takes_selector():
                # GPU indexes and IndexPQ take no selectors: over-fetch, then filter
                allowed_set = allowed
                k_eff = total
            else:
                params = self._params(faiss.IDSelectorBatch(allowed), k_eff)
        if params is None and not self.on_gpu:
            params = self._params(None, k_eff)
        k_eff = min(k_eff, total, GPU_MAX_K if self.on_gpu else total)
        if not self.on_gpu:
            _omp_threads(1 if len(xq) < SMALL_QUERY_BATCH else _OMP_THREADS)
        D, I = self._index.search(xq, k_eff, params=params)
        deleted = np.fromiter(self.soft_deleted, np.int64, len(self.soft_deleted))
        out = []
        for d_row, i_row in zip(D, I, strict=True):
            keep = i_row >= 0
            if len(deleted):
                keep &= ~np.isin(i_row, deleted)
            if allowed_set is not None:
                keep &= np.isin(i_row, allowed_set)
            out.append(
                SearchResult(i_row[keep][:k].astype(np.int64), d_row[keep][:k].astype(np.float32))
            )
        return out

    def _searched_index(self) -> Any:
        inner = self._cpu_index_kind
        while isinstance(inner, faiss.IndexPreTransform):
            # A pre-transform hands plain (non-pre-transform) parameters to its index.
            inner = faiss.downcast_index(inner.index)
        return inner

    def _takes_selector(self) -> bool:
        return not isinstance(self._searched_index(), faiss.IndexPQ)

    def _params(self, sel: Any, k_eff: int) -> Any:
        inner = self._searched_index()
        if isinstance(inner, faiss.IndexPQ):
            return None  # IndexPQ refuses every other kind of parameters
        if isinstance(inner, faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=sel, nprobe=self._nprobe_for(inner))
        if isinstance(inner, faiss.IndexHNSW):
            return faiss.SearchParametersHNSW(sel=sel, efSearch=max(64, k_eff))
        if sel is None:
            return None
        return faiss.SearchParameters(sel=sel)

    def _nprobe_for(self, ivf: Any) -> int:
        nlist = int(ivf.nlist)
        return max(1, min(nlist, self.nprobe or max(8, nlist // 16)))

    def _set_nprobe(self, template: faiss.Index) -> None:
        ivf = faiss.try_extract_index_ivf(template)
        if ivf is not None:
            ivf.nprobe = self._nprobe_for(ivf)

    def drop(self) -> None:
        pass  # nothing outside this process

    # --- persistence ------------------------------------------------------------------------
    def to_bytes(self, meta: dict[str, Any]) -> bytes:
        """Serialise the index (copied back from the GPU if it lives there) with ``meta``."""
        cpu = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
        header = json.dumps(
            {
                **meta,
                "d": self.d,
                "spec": self.spec,
                "trained": self.trained,
                "soft_deleted": sorted(self.soft_deleted),
            }
        ).encode()
        blob = faiss.serialize_index(cpu).tobytes()
        return _MAGIC + struct.pack("<Q", len(header)) + header + blob

    @staticmethod
    def read_meta(data: bytes) -> dict[str, Any]:
        if data.startswith(_BEFORE_IVF_FIX):
            raise ValueError("a snapshot from before the IVF delete fix")
        if not data.startswith(_MAGIC):
            raise ValueError("not an xmodal index snapshot")
        (n,) = struct.unpack_from("<Q", data, len(_MAGIC))
        meta: dict[str, Any] = json.loads(data[len(_MAGIC) + 8 : len(_MAGIC) + 8 + n])
        return meta

    @classmethod
    def from_bytes(
        cls, data: bytes, *, gpu_resources: Any = None, nprobe: int | None = None
    ) -> tuple[FaissIndex, dict[str, Any]]:
        meta = cls.read_meta(data)
        (n,) = struct.unpack_from("<Q", data, len(_MAGIC))
        blob = np.frombuffer(data, dtype=np.uint8, offset=len(_MAGIC) + 8 + n)
        cpu = faiss.deserialize_index(np.ascontiguousarray(blob))
        if not isinstance(cpu, faiss.IndexIDMap2):
            raise ValueError("snapshot does not hold an IndexIDMap2")
        self = cls(int(meta["d"]), meta["spec"], gpu_resources=gpu_resources, nprobe=nprobe)
        inner = faiss.downcast_index(cpu.index)
        self.trained = bool(meta["trained"])
        self.soft_deleted = {int(x) for x in meta.get("soft_deleted", [])}
        self._cpu_index_kind = inner
        self._index_ref = inner
        if self.trained:
            self._set_nprobe(inner)
            self._index = self._place(cpu)
        else:
            self._index = cpu
        return self, meta

    # --- helpers ----------------------------------------------------------------------------
    def _place(self, mapped: faiss.IndexIDMap2) -> faiss.Index:
        """Serve from the GPU when we have one and FAISS can put this index type there."""
        if self._gpu_resources is None:
            return mapped
        inner = self._searched_index()
        if not _gpu_servable(inner):
            log.info("%s is served from the CPU: FAISS has no safe GPU form of it", self.spec)
            return mapped
        options = faiss.GpuClonerOptions()
        # float16 lookup tables: IVF-PQ with many sub-quantizers needs them to fit the
        # H100's shared memory per block.
        options.useFloat16 = isinstance(inner, faiss.IndexIVFPQ)
        try:
            placed = faiss.index_cpu_to_gpu(self._gpu_resources, 0, mapped, options)
        except (RuntimeError, AttributeError) as exc:
            log.warning("%s stays on the CPU: %s", self.spec, exc)
            return mapped
        self._gpu = True
        return placed

    def _check_add(self, labels: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = np.ascontiguousarray(labels, dtype=np.int64).reshape(-1)
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        if xb.ndim != 2 or xb.shape[1] != self.d:
            raise DimensionMismatch(f"vectors must have shape (n, {self.d}), got {xb.shape}")
        if len(labels) != len(xb):
            raise ValueError(f"{len(labels)} labels for {len(xb)} vectors")
        return labels, xb


def _gpu_servable(index: Any) -> bool:
    """Whether FAISS serves this kind of index from the GPU safely. Measured on an H100 with
    FAISS 1.15.1 (bench/gpu_specs.py, BENCHMARKS.md): flat, IVF-Flat, float16 scalar
    quantizers and IVF-PQ with 8-bit codes work; IVF with 4-, 6- or 8-bit scalar
    quantizers is cloned but its first search aborts the whole process; HNSW, PQ and the
    other flat quantizers have no GPU form. Only the first list goes to the GPU."""
    if isinstance(index, faiss.IndexIVFPQ):
        return int(index.pq.nbits) == 8
    if isinstance(index, faiss.IndexIVFScalarQuantizer):
        return int(index.sq.qtype) == faiss.ScalarQuantizer.QT_fp16
    if isinstance(index, faiss.IndexScalarQuantizer):
        return int(index.sq.qtype) == faiss.ScalarQuantizer.QT_fp16
    return isinstance(index, (faiss.IndexFlat, faiss.IndexIVFFlat))
