"""Vector storage and the durable state beside it: vector indexes, SQLite, snapshots.

NumPy in, NumPy out; no torch and no web imports.
"""

from index.backend import BackendFactory, SearchResult, VectorBackend
from index.collections import COLLECTION_NAME, CollectionStore
from index.db import DB_FILE, Database
from index.errors import (
    CollectionBroken,
    CollectionExists,
    DataDirInUse,
    DimensionMismatch,
    Interrupted,
    InvalidFilter,
    InvalidIndexSpec,
    ModelMismatch,
    StoreError,
    UnknownCollection,
    UnknownItem,
)
from index.faiss_backend import FaissIndex, gpu_count
from index.faiss_backends import FaissBackends
from index.jobs import (
    Job,
    JobFinished,
    JobNotCancellable,
    JobState,
    JobStore,
    Progress,
    UnknownJob,
)
from index.migration import Migration
from index.milvus_backend import BackendUnavailable, MilvusBackends
from index.types import CollectionInfo, Hit, Item, Modality, NewItem, StoredItem, StoredVersion
from index.values import InvalidValue

__all__ = [
    "COLLECTION_NAME",
    "DB_FILE",
    "BackendFactory",
    "CollectionBroken",
    "CollectionExists",
    "CollectionInfo",
    "DataDirInUse",
    "CollectionStore",
    "Database",
    "DimensionMismatch",
    "FaissBackends",
    "MilvusBackends",
    "BackendUnavailable",
    "FaissIndex",
    "Hit",
    "Interrupted",
    "InvalidFilter",
    "InvalidIndexSpec",
    "InvalidValue",
    "Item",
    "Job",
    "JobFinished",
    "JobNotCancellable",
    "JobState",
    "JobStore",
    "Migration",
    "ModelMismatch",
    "Modality",
    "NewItem",
    "Progress",
    "SearchResult",
    "StoreError",
    "StoredItem",
    "StoredVersion",
    "UnknownCollection",
    "UnknownItem",
    "UnknownJob",
    "VectorBackend",
    "gpu_count",
]
