"""Errors raised by the store. The HTTP layer maps each to one status code."""


class StoreError(Exception):
    """Base class for store errors."""


class UnknownCollection(StoreError):
    pass


class DataDirInUse(StoreError):
    """Another process has the data dir open: two stores on one dir would each keep
    indexes the other never sees."""


class CollectionExists(StoreError):
    pass


class CollectionBroken(StoreError):
    """A stored collection whose index cannot be built (a spec from before the grammar, an
    index FAISS refuses): it is listed and can be deleted, nothing else."""


class UnknownItem(StoreError):
    pass


class InvalidIndexSpec(StoreError):
    """A FAISS factory string that cannot be built for this dimension or metric."""


class DimensionMismatch(StoreError):
    pass


class ModelMismatch(StoreError):
    """The collection's vectors came from another model version than the one offered."""


class CollectionMoved(ModelMismatch):
    """Another server replaced or deleted the collection since this one read it (a shared
    catalogue): the write is refused before anything lands, a search's answer is not
    given; the caller follows and tries again (with the version it holds now)."""


class InvalidFilter(StoreError):
    pass


class Interrupted(StoreError):
    """A read stopped at its caller's deadline (SQLite interrupted between steps)."""


class CatalogueUnavailable(StoreError):
    """The catalogue's database server cannot be reached (or refused the schema): the
    request needing it gets 503 with the reason; the next call connects again."""
