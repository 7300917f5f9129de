"""Reading a collection archive without believing it (``index.archives`` writes them).

An archive comes from anywhere: an upload, a file someone left under the import root. So
nothing it says is taken on trust:

- members: regular files only (no sparse, link or device members), of the names an archive
  holds, ``collection.json`` first; each no larger than its kind allows (an image no larger
  than an upload may be) and all together no larger than the file itself, checked from the
  tar headers before a byte of their data is read;
- the manifest: every member listed with its SHA-256 and size, and matched, reading each
  member once (stopping within a mebibyte when ``should_stop`` turns true);
- the header: every field typed and bounded (a dimension of this server's space, an index
  spec in one of the vector backends' grammars, counts that are numbers of items);
- each item as the API checks it (``records``): an id, metadata and text the store keeps,
  a creation time that is a finite number, image data only for image items, every image
  hashed again against its name and decoded (its media type taken from its bytes).

Every refusal is an ``ArchiveError`` whose message says what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from index.errors import InvalidIndexSpec, StoreError
from index.types import Modality, NewItem
from index.values import InvalidValue, check_item
from index.vectors import faiss_specs, milvus_specs

FORMAT = "xmodal-collection-archive/1"
CHUNK = 1000  # items a chunk
MAX_DIM = 65_536
MAX_HEADER_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 64 << 20
MAX_LINES_BYTES = 256 << 20  # one chunk's item records
MAX_TEXT_FIELD = 256  # characters of the header's names and spec
MAX_TIME = 1e11  # seconds since 1970: year 5138
_HASH_BLOCK = 1 << 20
_HEX = re.compile(r"[0-9a-f]{64}")
_MEMBER = re.compile(
    r"collection\.json|MANIFEST\.json|items/(\d{6})\.(jsonl|f32)|images/[0-9a-f]{64}"
)
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)


class ArchiveError(StoreError):
    """An archive that cannot be restored, with the reason (damaged, foreign, incomplete)."""


class Stopped(InterruptedError):
    """The job reading the archive was cancelled, or the server is stopping."""


@dataclass(frozen=True)
class ArchiveInfo:
    collection: str
    index_spec: str
    dim: int
    model_version: str
    created_at: float
    items: int
    counts: dict[str, int]
    chunks: int = 0


@dataclass(frozen=True)
class Rules:
    """What a restore holds an archive to, besides its own manifest."""

    max_image_bytes: int  # as an upload
    image_type: Callable[[bytes], str]  # the media type of image bytes (ValueError: none)
    should_stop: Callable[[], bool] = lambda: False


def open_tar(f: IO[bytes]) -> tarfile.TarFile:
    f.seek(0)
    try:
        return tarfile.open(fileobj=f, mode="r:")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"not an archive of a collection: {exc}") from None


def checked_member(m: tarfile.TarInfo, max_image_bytes: int) -> None:
    """Refuse a member no archive holds, before any of its data is read."""
    if not _MEMBER.fullmatch(m.name):
        raise ArchiveError(f"the archive holds {m.name[:200]!r}, which no archive holds")
    if (
        m.type not in _REGULAR
        or m.sparse is not None
        or any(k.startswith("GNU.sparse") for k in m.pax_headers)
    ):
        raise ArchiveError(f"{m.name} is not a plain file (a sparse, link or device member)")
    if m.size > _largest(m.name, max_image_bytes):
        raise ArchiveError(f"{m.name} declares {m.size} bytes, more than such a member holds")


def _largest(name: str, max_image_bytes: int) -> int:
    if name == "collection.json":
        return MAX_HEADER_BYTES
    if name == "MANIFEST.json":
        return MAX_MANIFEST_BYTES
    if name.endswith(".jsonl"):
        return MAX_LINES_BYTES
    if name.endswith(".f32"):
        return CHUNK * MAX_DIM * 4
    return max_image_bytes


def members(tar: tarfile.TarFile, file_size: int, max_image_bytes: int) -> list[tarfile.TarInfo]:
    """The members, each checked from its header; their sizes add up to no more than the
    file holds (a member's data is in the file: what declares more, lies)."""
    out: list[tarfile.TarInfo] = []
    total = 0
    while True:
        try:
            m = tar.next()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArchiveError(f"the archive is damaged: {exc}") from None
        if m is None:
            break
        checked_member(m, max_image_bytes)
        if not out and m.name != "collection.json":
            raise ArchiveError("not an archive of a collection: collection.json is not first")
        total += m.size
        if total > file_size or m.offset_data + m.size > file_size:
            raise ArchiveError(f"{m.name} declares more bytes than the archive holds")
        out.append(m)
    return out


def load_json(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    f = tar.extractfile(member)
    assert f is not None
    try:
        return json.loads(f.read(member.size))
    except (ValueError, RecursionError):
        raise ArchiveError(f"{member.name} is not JSON this format reads") from None


def verify(f: IO[bytes], rules: Rules, dim: int | None) -> tuple[ArchiveInfo, dict[str, Any]]:
    """The archive's header once every member matches the manifest, the member list
    matches it, and the header is sound; ``dim``: the dimension its vectors must have
    (None: any, as when they are encoded again)."""
    file_size = os.fstat(f.fileno()).st_size
    with open_tar(f) as tar:
        listing = members(tar, file_size, rules.max_image_bytes)
        names = [m.name for m in listing]
        if len(set(names)) != len(names):
            raise ArchiveError("the archive holds a member twice")
        by_name = {m.name: m for m in listing}
        if "MANIFEST.json" not in by_name:
            raise ArchiveError("not an archive of a collection: no manifest")
        manifest = load_json(tar, by_name["MANIFEST.json"])
        listed = manifest.get("members") if isinstance(manifest, dict) else None
        if manifest.get("format") != FORMAT or not isinstance(listed, dict):
            raise ArchiveError(f"not an archive of this format ({FORMAT})")
        if set(listed) != set(names) - {"MANIFEST.json"}:
            missing = sorted(set(listed) - set(names))
            extra = sorted(set(names) - set(listed) - {"MANIFEST.json"})
            raise ArchiveError(
                f"the archive does not match its manifest (missing {missing[:3]}, "
                f"not listed {extra[:3]})"
            )
        for m in listing:
            if m.name != "MANIFEST.json":
                _check_digest(tar, m, listed[m.name], rules.should_stop)
        header = load_json(tar, by_name["collection.json"])
    chunks = _chunk_count(names)
    return header_info(header, dim, chunks), header


def _check_digest(
    tar: tarfile.TarFile, m: tarfile.TarInfo, expected: Any, should_stop: Callable[[], bool]
) -> None:
    if not isinstance(expected, dict) or expected.get("size") != m.size:
        raise ArchiveError(f"{m.name} is damaged: its size does not match the manifest")
    digest = hashlib.sha256()
    f = tar.extractfile(m)
    assert f is not None
    left = m.size
    while left > 0:
        if should_stop():
            raise Stopped("stopped")
        block = f.read(min(_HASH_BLOCK, left))
        if not block:
            raise ArchiveError(f"{m.name} is cut short")
        digest.update(block)
        left -= len(block)
    if digest.hexdigest() != expected.get("sha256"):
        raise ArchiveError(f"{m.name} is damaged: its checksum does not match the manifest")


def _chunk_count(names: list[str]) -> int:
    """How many chunks, once every chunk has its records and its vectors, numbered from 0."""
    found: dict[str, set[int]] = {"jsonl": set(), "f32": set()}
    for name in names:
        match = _MEMBER.fullmatch(name)
        if match and match.group(1):
            found[match.group(2)].add(int(match.group(1)))
    if found["jsonl"] != found["f32"] or found["jsonl"] != set(range(len(found["jsonl"]))):
        raise ArchiveError("the archive's chunks are incomplete (records without vectors?)")
    return len(found["jsonl"])


def header_info(header: Any, dim: int | None, chunks: int) -> ArchiveInfo:
    """The header's fields, each of the type and within the bounds this format gives."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ArchiveError(f"collection.json is not a header of this format ({FORMAT})")

    def text(key: str) -> str:
        value = header.get(key)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT_FIELD:
            raise ArchiveError(f"the archive's header has no usable {key}")
        return value

    collection, spec, version = text("collection"), text("index_spec"), text("model_version")
    archived_dim = header.get("dim")
    if not isinstance(archived_dim, int) or isinstance(archived_dim, bool):
        archived_dim = 0
    if not 0 < archived_dim <= MAX_DIM:
        raise ArchiveError(f"the archive's dimension must be a whole number from 1 to {MAX_DIM}")
    if dim is not None and archived_dim != dim:
        raise ArchiveError(
            f"the archive's vectors have {archived_dim} dimensions, this server's space "
            f"{dim}: restore with reembed to encode its images and texts again"
        )
    if not _in_a_grammar(spec, archived_dim):
        raise ArchiveError(f"the archive's index spec {spec[:80]!r} is in no backend's grammar")
    created = header.get("created_at")
    if not _is_time(created):
        raise ArchiveError("the archive's created_at is not a time")
    assert isinstance(created, (int, float))
    counts = header.get("counts")
    if (
        not isinstance(counts, dict)
        or set(counts) != {m.value for m in Modality}
        or not all(_is_int(n) and 0 <= n <= chunks * CHUNK for n in counts.values())
        or sum(counts.values()) > chunks * CHUNK
    ):
        raise ArchiveError("the archive's counts are not counts of the items it holds")
    return ArchiveInfo(
        collection, spec, archived_dim, version, float(created), sum(counts.values()),
        dict(counts), chunks,
    )  # fmt: skip


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value < MAX_TIME
    )


def _in_a_grammar(spec: str, d: int) -> bool:
    for parse in (
        lambda: faiss_specs.parse_spec(spec, d),
        lambda: milvus_specs.parse_spec(spec, d, server=True),
    ):
        try:
            parse()
            return True
        except (InvalidIndexSpec, ValueError):
            continue
    return False


# --- the items ------------------------------------------------------------------------------------
def records(tar: tarfile.TarFile, n: int, rules: Rules, counts: dict[str, int]) -> list[NewItem]:
    """Chunk ``n``'s items, each checked as the API checks a new item; ``counts`` adds up
    the items of each modality read so far."""
    name = f"items/{n:06d}.jsonl"
    f = tar.extractfile(name)
    assert f is not None
    out = []
    for i, line in enumerate(io.TextIOWrapper(f, encoding="utf-8", errors="strict")):
        if rules.should_stop():
            raise Stopped("stopped")
        where = f"{name} line {i + 1}"
        try:
            r = json.loads(line)
        except (ValueError, RecursionError):
            raise ArchiveError(f"{where} is not a JSON record") from None
        item = _record(tar, r, where, rules)
        counts[item.modality.value] += 1
        out.append(item)
    if len(out) > CHUNK:
        raise ArchiveError(f"{name} holds more than {CHUNK} items")
    return out


def _record(tar: tarfile.TarFile, r: Any, where: str, rules: Rules) -> NewItem:
    if not isinstance(r, dict):
        raise ArchiveError(f"{where} is not an object")
    try:
        modality = Modality(str(r.get("modality")))
    except ValueError:
        raise ArchiveError(f"{where}: modality is image or text") from None
    item_id, text, metadata = r.get("id"), r.get("text"), r.get("metadata", {})
    if not isinstance(item_id, str) or not item_id:
        raise ArchiveError(f"{where}: the id is not a string")
    if modality is Modality.TEXT and not isinstance(text, str):
        raise ArchiveError(f"{where}: a text item without its text")
    if modality is Modality.IMAGE and text is not None:
        raise ArchiveError(f"{where}: an image item with a text")
    try:
        check_item(item_id, text, metadata)
    except InvalidValue as exc:
        raise ArchiveError(f"{where}: {exc}") from None
    created = r.get("created_at")
    if created is not None and not _is_time(created):
        raise ArchiveError(f"{where}: created_at is not a time")
    digest = r.get("content_sha256")
    content, media_type = None, None
    if digest is not None:
        if modality is not Modality.IMAGE:
            raise ArchiveError(f"{where}: image data on a text item")
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            raise ArchiveError(f"{where}: content_sha256 is not a SHA-256")
        content, media_type = _image(tar, digest, where, rules)
    return NewItem(
        item_id,
        modality,
        metadata,
        text=text,
        content=content,
        media_type=media_type,
        content_sha256=digest,
        created_at=None if created is None else float(created),
    )


def _image(tar: tarfile.TarFile, digest: str, where: str, rules: Rules) -> tuple[bytes, str]:
    try:
        member = tar.getmember(f"images/{digest}")
    except KeyError:
        raise ArchiveError(f"{where}: its image is not in the archive") from None
    f = tar.extractfile(member)
    assert f is not None
    data = f.read(rules.max_image_bytes + 1)
    if hashlib.sha256(data).hexdigest() != digest:
        raise ArchiveError(f"images/{digest[:12]}...: its bytes are not the image it names")
    try:
        return data, rules.image_type(data)
    except ValueError as exc:
        raise ArchiveError(f"images/{digest[:12]}...: not an image ({exc})") from None


def vectors(tar: tarfile.TarFile, n: int, count: int, dim: int) -> np.ndarray:
    f = tar.extractfile(f"items/{n:06d}.f32")
    assert f is not None
    data = f.read(count * dim * 4 + 1)
    if len(data) != count * dim * 4:
        raise ArchiveError(f"items/{n:06d}.f32 holds {len(data)} bytes, not {count} vectors")
    out = np.frombuffer(data, dtype="<f4").reshape(count, dim).astype(np.float32)
    if not np.isfinite(out).all():
        raise ArchiveError(f"items/{n:06d}.f32 holds a number that is not finite")
    return out
