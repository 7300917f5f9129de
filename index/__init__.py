"""Vector storage and the durable state beside it: vector indexes, SQLite, snapshots.

NumPy in, NumPy out; no torch and no web imports.
"""

from index.catalogue.base import Catalogue
from index.catalogue.db import DB_FILE, SqliteDatabase
from index.catalogue.jobs import (
    Job,
    JobFinished,
    JobNotCancellable,
    JobState,
    JobStore,
    LeaseLost,
    Progress,
    UnknownJob,
)
from index.catalogue.opening import open_catalogue
from index.collections import COLLECTION_NAME, CollectionStore
from index.errors import (
    CatalogueUnavailable,
    CollectionBroken,
    CollectionExists,
    CollectionMoved,
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
from index.migration import Migration
from index.types import CollectionInfo, Hit, Item, Modality, NewItem, StoredItem, StoredVersion
from index.values import InvalidValue
from index.vectors.backend import BackendFactory, SearchResult, VectorBackend
from index.vectors.faiss_backend import FaissIndex, gpu_count
from index.vectors.faiss_backends import FaissBackends
from index.vectors.milvus_backend import BackendUnavailable, MilvusBackends

__all__ = [
    "COLLECTION_NAME",
    "DB_FILE",
    "BackendFactory",
    "CollectionBroken",
    "CatalogueUnavailable",
    "CollectionMoved",
    "CollectionExists",
    "CollectionInfo",
    "DataDirInUse",
    "CollectionStore",
    "Catalogue",
    "SqliteDatabase",
    "open_catalogue",
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
    "LeaseLost",
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
