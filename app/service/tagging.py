"""Label sets: a collection's labels, and the tags every picture indexed into it gets.

``PUT /v1/collections/{name}/labels`` stores a label set (labels, a probability
threshold, how many tags at most, templates) in the catalogue. Every image written into
the collection from then on (uploads, index jobs, an activation re-embedding it) gets in
its metadata, under ``"labels"``, the labels whose zero-shot probability
(``app.service.zero_shot``) is at least the threshold, most probable first, ``top`` at
most: a list of strings, so filters (``{"labels": "red"}``), facets and the page use
them. Changing the set re-tags the collection's pictures as a job (``retag``), from their
stored vectors: nothing is embedded again but the labels.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from app.service.engine import Engine
from app.service.errors import Invalid
from app.service.zero_shot import TEMPERATURE, prompts
from index import CollectionStore, Modality, NewItem
from index.catalogue.base import Catalogue

TAGS_KEY = "labels"  # the metadata key tags are written under
MAX_TOP = 20
CACHED = 32  # label sets whose vectors are kept, per version


@dataclass(frozen=True)
class LabelSet:
    labels: list[str]
    threshold: float = 0.1
    top: int = 3
    templates: list[str] | None = None

    def check(self, max_texts: int) -> None:
        texts = prompts(self.labels, self.templates)  # Invalid for a bad label or template
        if len(texts) > max_texts:
            raise Invalid(
                f"{len(self.labels)} labels in {len(texts) // len(self.labels)} templates make "
                f"{len(texts)} texts; at most {max_texts} (XMODAL_MAX_TEXTS_PER_REQUEST)",
                code="invalid_labels",
            )
        if not 1 <= self.top <= MAX_TOP:
            raise Invalid(f"top must be between 1 and {MAX_TOP}", code="invalid_labels")


def read_label_set(db: Catalogue, collection: str) -> LabelSet | None:
    row = (
        db.reader()
        .execute("SELECT spec FROM label_sets WHERE collection = ?", (collection,))
        .fetchone()
    )
    return None if row is None else LabelSet(**json.loads(row[0]))


def write_label_set(db: Catalogue, collection: str, labels: LabelSet | None) -> None:
    with db.transaction() as conn:
        conn.execute("DELETE FROM label_sets WHERE collection = ?", (collection,))
        if labels is not None:
            conn.execute(
                "INSERT INTO label_sets (collection, spec) VALUES (?, ?)",
                (collection, json.dumps(asdict(labels))),
            )


class Tagger:
    def __init__(self, store: CollectionStore, engine: Engine) -> None:
        self.store = store
        self.engine = engine
        self._vectors: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def label_set(self, collection: str) -> LabelSet | None:
        return read_label_set(self.store.db, collection)

    def tags(self, labels: LabelSet, space: str, images: np.ndarray) -> list[list[str]]:
        """Each picture's tags (a blocking call: label vectors on the model thread)."""
        vectors = self._label_vectors(labels, space)
        logits = TEMPERATURE * (np.asarray(images, np.float32) @ vectors.T)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        out = []
        for row in probs:
            order = sorted(range(len(labels.labels)), key=lambda i: -float(row[i]))
            kept = [labels.labels[i] for i in order if row[i] >= labels.threshold]
            out.append(kept[: labels.top])
        return out

    def tagged(
        self, collection: str, space: str, items: Sequence[NewItem], vectors: np.ndarray
    ) -> list[NewItem]:
        """``items`` with their pictures tagged, if the collection has a label set."""
        labels = self.label_set(collection)
        pictures = [i for i, it in enumerate(items) if it.modality is Modality.IMAGE]
        if labels is None or not pictures:
            return list(items)
        tags = self.tags(labels, space, vectors[pictures])
        out = list(items)
        for i, found in zip(pictures, tags, strict=True):
            out[i] = replace(out[i], metadata={**out[i].metadata, TAGS_KEY: found})
        return out

    def _label_vectors(self, labels: LabelSet, space: str) -> np.ndarray:
        key = (space, json.dumps([labels.labels, labels.templates]))
        with self._lock:
            cached = self._vectors.get(key)
        if cached is not None:
            return cached
        texts = prompts(labels.labels, labels.templates)
        encoder = self.engine.encoder_of(space)
        vectors = self.engine.run_model(encoder.encode_texts, texts)
        means = vectors.reshape(len(labels.labels), len(texts) // len(labels.labels), -1)
        means = means.mean(axis=1)
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        with self._lock:
            if len(self._vectors) >= CACHED:
                self._vectors.pop(next(iter(self._vectors)))
            self._vectors[key] = means
        return np.asarray(means, np.float32)
