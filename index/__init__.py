"""Vector storage and the durable state beside it: FAISS indexes, SQLite, snapshots.

NumPy in, NumPy out; no torch and no web imports.
"""

from index.errors import (
    CollectionExists,
    DimensionMismatch,
    InvalidFilter,
    InvalidIndexSpec,
    ModelMismatch,
    StoreError,
    UnknownCollection,
    UnknownItem,
)
from index.jobs import Job, JobFinished, JobState, JobStore, Progress, UnknownJob
from index.store import CollectionStore
from index.types import CollectionInfo, Hit, Item, Modality, NewItem, StoredVersion
from index.vector_index import VectorIndex, gpu_count

__all__ = [
    "CollectionExists",
    "CollectionInfo",
    "CollectionStore",
    "DimensionMismatch",
    "Hit",
    "InvalidFilter",
    "InvalidIndexSpec",
    "Item",
    "Job",
    "JobFinished",
    "JobState",
    "JobStore",
    "ModelMismatch",
    "Modality",
    "NewItem",
    "Progress",
    "StoreError",
    "StoredVersion",
    "UnknownCollection",
    "UnknownItem",
    "UnknownJob",
    "VectorIndex",
    "gpu_count",
]
