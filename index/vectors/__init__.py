"""The vector side: the backend protocol, FAISS (indexes, specs, dumps to disk, advice and
re-indexing) and Milvus (indexes, specs, filters as its expressions)."""
