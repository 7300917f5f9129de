"""Corpora for the batch-indexing tests, written under an import root: good images and
captions plus a known set of bad files, in each source format."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import image_bytes


@dataclass
class Corpus:
    source: str  # relative to the import root
    images: dict[str, bytes] = field(default_factory=dict)  # id -> bytes of each good image
    texts: dict[str, str] = field(default_factory=dict)  # id -> text of each good text
    failed: set[str] = field(default_factory=set)  # ids expected to fail

    @property
    def done(self) -> int:
        return len(self.images) + len(self.texts)

    @property
    def total(self) -> int:
        return self.done + len(self.failed)


def noise_png(side: int, seed: int) -> bytes:
    """A PNG that compresses badly: large on disk for its size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def good_image(i: int) -> bytes:
    """Small PNGs and WebPs; JPEGs large enough to decode at a reduced scale (the job's
    and the request's way to the same pixels)."""
    fmt = ("JPEG", "PNG", "WEBP")[i % 3]
    size = (300, 200) if fmt == "JPEG" else (28, 24)
    return image_bytes((i * 37 % 256, 255 - i * 11 % 256, 90), seed=1000 + i, size=size, fmt=fmt)


def write_folder(root: Path, name: str, n: int = 12) -> Corpus:
    base = root / name
    (base / "nested" / "deeper").mkdir(parents=True)
    corpus = Corpus(name)
    for i in range(n):
        sub = ("", "nested/", "nested/deeper/")[i % 3]
        ext = ("jpg", "png", "webp")[i % 3]
        rel = f"{sub}img{i:03d}.{ext}"
        data = good_image(i)
        (base / rel).write_bytes(data)
        corpus.images[rel] = data
        if i % 2 == 0:
            caption = f"{sub}img{i:03d}.txt"
            (base / caption).write_text(f"picture number {i} of the folder")
            corpus.texts[caption] = f"picture number {i} of the folder"
    bad = {
        "bad/not-image.jpg": b"this is text, not a picture",
        "bad/empty.png": b"",
        "bad/truncated.jpg": image_bytes(size=(64, 64), fmt="JPEG")[:120],
        "bad/too-large.png": noise_png(300, 1),  # over the test server's 200 kB file limit
    }
    for rel, data in bad.items():
        (base / rel).parent.mkdir(exist_ok=True)
        (base / rel).write_bytes(data)
        corpus.failed.add(rel)
    os.symlink(base / "bad" / "gone.jpg", base / "bad" / "missing.jpg")  # a dangling link: absent
    corpus.failed.add("bad/missing.jpg")
    os.symlink("/etc/hostname", base / "bad" / "escape.png")  # resolves outside the root
    corpus.failed.add("bad/escape.png")
    (base / "notes.md").write_text("ignored: not an image")
    return corpus


def _manifest_rows(root: Path, name: str, n: int) -> tuple[list[dict[str, object]], Corpus]:
    files = root / f"{name}-files"
    files.mkdir()
    corpus = Corpus("")
    rows: list[dict[str, object]] = []
    for i in range(n):
        data = good_image(100 + i)
        rel = f"{name}-files/p{i}.img"  # the extension does not matter: contents do
        (root / rel).write_bytes(data)
        row: dict[str, object] = {"id": f"{name}-{i}", "image": rel, "label": f"class-{i % 3}"}
        corpus.images[f"{name}-{i}"] = data
        if i % 2:
            row["text"] = f"manifest caption {name} {i}"
            corpus.texts[f"{name}-{i}#text"] = str(row["text"])
        rows.append(row)
    rows.append({"id": f"{name}-textonly", "text": f"just a sentence in {name}"})
    corpus.texts[f"{name}-textonly"] = f"just a sentence in {name}"
    rows.append({"id": f"{name}-missing", "image": f"{name}-files/absent.jpg"})
    corpus.failed.add(f"{name}-missing")
    rows.append({"id": f"{name}-outside", "image": "../../outside.jpg"})
    corpus.failed.add(f"{name}-outside")
    (root / f"{name}-files" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rows.append({"id": f"{name}-corrupt", "image": f"{name}-files/corrupt.jpg"})
    corpus.failed.add(f"{name}-corrupt")
    return rows, corpus


def write_jsonl(root: Path, name: str, n: int = 10) -> Corpus:
    rows, corpus = _manifest_rows(root, name, n)
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{this line is not json")
    corpus.failed.add(f"{name}.jsonl:4")
    (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    corpus.source = f"{name}.jsonl"
    return corpus


def write_csv(root: Path, name: str, n: int = 10) -> Corpus:
    rows, corpus = _manifest_rows(root, name, n)
    with (root / f"{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "image", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    corpus.source = f"{name}.csv"
    return corpus


def write_parquet(root: Path, name: str, n: int = 10) -> Corpus:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, corpus = _manifest_rows(root, name, n)
    columns = {k: [r.get(k) for r in rows] for k in ("id", "image", "text", "label")}
    pq.write_table(pa.table(columns), root / f"{name}.parquet")
    corpus.source = f"{name}.parquet"
    return corpus


def write_shards(root: Path, name: str, per_shard: int = 6, shards: int = 2) -> Corpus:
    base = root / name
    base.mkdir()
    corpus = Corpus(name)
    for s in range(shards):
        with tarfile.open(base / f"shard-{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                data = good_image(200 + s * per_shard + i)
                members = {f"{key}.jpg": data, f"{key}.json": json.dumps({"shard_no": s}).encode()}
                if i % 2 == 0:
                    members[f"{key}.txt"] = f"shard {s} sample {i}".encode()
                    corpus.texts[f"{key}#text"] = f"shard {s} sample {i}"
                if s == 1 and i == per_shard - 1:
                    members[f"{key}.jpg"] = b"\xff\xd8 broken jpeg"
                    corpus.failed.add(key)
                else:
                    corpus.images[key] = data
                for member, payload in members.items():
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return corpus


def write_many(root: Path, name: str, n: int) -> Corpus:
    """A plain folder of ``n`` small PNGs, for resume and throughput tests."""
    base = root / name
    base.mkdir(parents=True)
    corpus = Corpus(name)
    for i in range(n):
        data = image_bytes((i % 256, (i * 7) % 256, 128), seed=5000 + i, size=(16, 16))
        rel = f"{i:05d}.png"
        (base / rel).write_bytes(data)
        corpus.images[rel] = data
    return corpus


# Captions made of a few words, for the search tests (their exact ranking is computed
# with numpy on the server's own embeddings).
WORDS = [
    *("apple", "river", "stone", "cloud", "forest", "engine"),
    *("violin", "harbor", "desert", "pencil", "garden", "mirror"),
]
TEXTS = {f"t{i:03d}": f"{WORDS[i % 12]} {WORDS[(i * 5 + 1) % 12]} number {i}" for i in range(80)}
BIG = {
    f"b{i:04d}": f"{WORDS[i % 12]} {WORDS[(i * 7 + 3) % 12]} {WORDS[(i // 12) % 12]} {i}"
    for i in range(1040)
}
