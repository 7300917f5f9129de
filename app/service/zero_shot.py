"""Zero-shot labels: how well each of a list of labels describes a picture, from the
serving version's two towers, with no training (CLIP's recipe).

Each label is written into prompt templates ("a photo of {}."), the texts embedded with
the text tower, and their mean (normalised) is the label's vector; a picture's
probabilities are the softmax of its cosines to the labels, times ``TEMPERATURE`` (the
logit scale CLIP's training ends at, 100). The caller may give its own templates: a
template holds ``{}`` once, where the label goes (nothing else in it is read as a
format). Labels and templates are bounded in count and length (422 beyond, in the API);
every label text counts against the texts a request may embed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.service.engine import Engine
from app.service.errors import Invalid
from app.service.limits import Limits

TEMPLATES = ("a photo of {}.", "a picture of {}.", "{}")
TEMPERATURE = 100.0
MAX_LABELS = 100
MAX_LABEL_CHARS = 200
MAX_TEMPLATES = 16


def prompts(labels: Sequence[str], templates: Sequence[str] | None) -> list[str]:
    """Every label in every template, label by label (``Invalid`` for a bad one)."""
    chosen = list(templates) if templates else list(TEMPLATES)
    if len(set(labels)) != len(labels):
        raise Invalid("labels must be distinct", code="invalid_labels")
    for t in chosen:
        if t.count("{}") != 1:
            raise Invalid(f"a template holds {{}} exactly once: {t!r}", code="invalid_labels")
    return [t.replace("{}", label.strip()) for label in labels for t in chosen]


async def label_vectors(
    engine: Engine,
    limits: Limits,
    labels: Sequence[str],
    templates: Sequence[str] | None,
    space: str | None = None,
) -> np.ndarray:
    """One normalised vector per label: the mean of its templates' text vectors."""
    texts = prompts(labels, templates)
    limits.check_texts(texts)
    vectors = await engine.embed_texts(texts, space)
    per = len(texts) // len(labels)
    means = vectors.reshape(len(labels), per, -1).mean(axis=1)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return np.asarray(means / np.maximum(norms, 1e-12), dtype=np.float32)


def probabilities(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Softmax over the labels of the picture's cosines to them, times ``TEMPERATURE``."""
    logits = TEMPERATURE * (labels @ image.astype(np.float32))
    logits -= logits.max()
    weights = np.exp(logits)
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def ranked(labels: Sequence[str], probs: np.ndarray) -> list[tuple[str, float]]:
    """Labels with their probability, most probable first (ties in the order given)."""
    order = sorted(range(len(labels)), key=lambda i: -float(probs[i]))
    return [(labels[i], float(probs[i])) for i in order]
