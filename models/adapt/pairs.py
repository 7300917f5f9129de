"""Image-caption pairs for training and evaluation: read from a source, decoded, split."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from models.errors import ImageDecodeError, ImageTooLarge
from models.images import decode_image
from models.sources import FileRef, Source, open_source


@dataclass
class Pairs:
    """Decoded pairs: ``images`` to train on (no larger than training needs), ``files``
    to read each image's bytes again (evaluation encodes them the way indexing does)."""

    images: list[Image.Image] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<id>: why", for the report
    files: list[Callable[[], bytes]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: list[int]) -> Pairs:
        return Pairs(
            [self.images[i] for i in rows],
            [self.texts[i] for i in rows],
            files=[self.files[i] for i in rows],
        )

    def hold_out(self, fraction: float, seed: int) -> tuple[Pairs, Pairs]:
        """(training, evaluation): a fixed-seed ``fraction`` of the pairs, at least two, is
        held out; the skipped list stays with the training part."""
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        cut = max(2, round(len(order) * fraction))
        train = self.subset(order[cut:])
        train.skipped = self.skipped
        return train, self.subset(sorted(order[:cut]))


@dataclass(frozen=True)
class Pair:
    """An image and its caption, for training and evaluation."""

    id: str
    image: FileRef
    text: str


def read_pairs(source: Source) -> tuple[list[Pair], list[str]]:
    """The image-caption pairs of ``source`` (a caption names its image by ``image_id``),
    and a reason for every record that could not be paired."""
    images: dict[str, FileRef] = {}
    pairs: list[Pair] = []
    skipped: list[str] = []
    for record in source.records():
        if record.error is not None:
            skipped.append(record.error)
        elif record.kind == "image" and record.image is not None:
            images[record.id] = record.image
        elif record.kind == "text" and record.text:
            image_id = record.metadata.get("image_id")
            if image_id in images:
                pairs.append(Pair(str(image_id), images.pop(str(image_id)), record.text))
            else:
                skipped.append(f"{record.id}: a text without an image")
    skipped += [f"{image_id}: an image without a caption" for image_id in images]
    return pairs, skipped


def load_pairs(
    root: Path,
    source: str,
    max_bytes: int,
    max_pixels: int,
    workers: int = 2,
    side: int | None = None,
) -> Pairs:
    """The decoded pairs of ``source`` (a path under ``root``); what cannot be read or
    decoded is skipped and said. With ``side``, images are kept no larger than needed: the
    shorter side scaled down to ``side`` (the model's resize does the same, later), so
    a training set of photos does not sit in memory at full resolution."""
    records, skipped = read_pairs(open_source(root, source))
    pairs = Pairs(skipped=skipped)

    def decode(pair: Pair) -> Image.Image | str:
        try:
            image = decode_image(pair.image.read(max_bytes), max_pixels, draft_size=side).image
            return image if side is None else shrink(image, side)
        except FileNotFoundError:
            return "file not found"
        except (OSError, ValueError, ImageDecodeError, ImageTooLarge) as exc:
            return str(exc)

    with ThreadPoolExecutor(max(2, workers)) as pool:
        for pair, image in zip(records, pool.map(decode, records), strict=True):
            if isinstance(image, str):
                pairs.skipped.append(f"{pair.id}: {image}")
            else:
                pairs.images.append(image)
                pairs.texts.append(pair.text)
                pairs.files.append(functools.partial(pair.image.read, max_bytes))
    return pairs


def shrink(image: Image.Image, side: int) -> Image.Image:
    """``image`` with its shorter side at most ``side`` pixels, aspect kept."""
    w, h = image.size
    if min(w, h) <= side:
        return image
    scale = side / min(w, h)
    size = (max(side, round(w * scale)), max(side, round(h * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)
