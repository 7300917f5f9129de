"""Archives that lie, crafted here: sparse, link, device and oversized members, headers and
records that pass their checksums but not the format's rules, images that are not what
they are named. Each is refused with its reason before the collection exists; what is
restored is progress counted as it goes, and a cancel stops the reading."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from index import CollectionStore
from index.archive_check import FORMAT, Stopped
from index.archives import ArchiveError, Rules, restore_archive, write_archive
from index.live import SHADOW_PREFIX
from tests.index.test_archives import RULES, filled
from tests.stores import CPU, D, V

Members = dict[str, bytes]


def members_of(path: Path) -> Members:
    with tarfile.open(path) as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None
            out[m.name] = f.read()
    return out


def craft(
    path: Path,
    members: Members,
    extra: Callable[[tarfile.TarFile], None] | None = None,
    manifest: bytes | None = None,
) -> Path:
    """An archive of ``members`` (header first) with a manifest that matches them, so a lie
    gets past the checksums to the rules; ``extra`` adds members of its own making."""
    listed = {
        name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for name, data in members.items()
        if name != "MANIFEST.json"
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            if name == "MANIFEST.json":
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(tar)
        data = manifest or json.dumps({"format": FORMAT, "members": listed}).encode()
        info = tarfile.TarInfo("MANIFEST.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = CollectionStore(tmp_path / "data", backends=CPU)
    filled(s, n=1100)
    yield s
    s.close()


@pytest.fixture
def good(store: CollectionStore, tmp_path: Path) -> Members:
    write_archive(store, "c", tmp_path / "good.tar")
    return members_of(tmp_path / "good.tar")


def refused(store: CollectionStore, path: Path, match: str, rules: Rules = RULES) -> None:
    with path.open("rb") as f, pytest.raises(ArchiveError, match=match):
        restore_archive(store, f, "r", (V, D), rules)
    assert "r" not in store.collections
    assert not [n for n in store.collections if n.startswith(SHADOW_PREFIX)]


def header_with(good: Members, **fields: Any) -> Members:
    header = json.loads(good["collection.json"])
    header.update(fields)
    return {**good, "collection.json": json.dumps(header).encode()}


def test_a_sparse_member_of_a_pebibyte_is_refused_from_its_header(
    store: CollectionStore, good: Members, tmp_path: Path
) -> None:
    sparse_map = b"1\n0\n0\n".ljust(512, b"\0")
    name = "images/" + "a" * 64

    def sparse(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(sparse_map)
        info.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": name,
            "GNU.sparse.realsize": str(2**50),
        }
        tar.addfile(info, io.BytesIO(sparse_map))

    refused(store, craft(tmp_path / "s.tar", good, sparse), "not a plain file")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_link_and_device_members_are_refused(
    store: CollectionStore, good: Members, tmp_path: Path, kind: bytes
) -> None:
    def odd(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("images/" + "b" * 64)
        info.type = kind
        info.linkname = "/etc/passwd"
        tar.addfile(info)

    refused(store, craft(tmp_path / "l.tar", good, odd), "not a plain file")


def test_members_that_declare_more_than_the_file_holds_are_refused(
    store: CollectionStore, good: Members, tmp_path: Path
) -> None:
    # A regular member whose PAX size says a tebibyte: its data cannot be in a small file.
    path = craft(tmp_path / "big.tar", good)
    raw = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        member = tar.getmember("items/000000.jsonl")
    # Rewrite the member's ustar size field (octal) to claim 8 GiB - 1.
    at = member.offset + 124
    raw[at : at + 12] = b"77777777777\0"
    checksum = sum(raw[member.offset : member.offset + 148]) + 8 * 32
    checksum += sum(raw[member.offset + 156 : member.offset + 512])
    raw[member.offset + 148 : member.offset + 156] = f"{checksum:06o}\0 ".encode()
    path.write_bytes(bytes(raw))
    refused(store, path, "declares")
    # An image larger than an upload may be, honestly stored.
    small = Rules(max_image_bytes=4, image_type=RULES.image_type)
    refused(store, craft(tmp_path / "img.tar", good), "declares", small)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"dim": 0}, "dimension"),
        ({"dim": -4}, "dimension"),
        ({"dim": 2**40}, "dimension"),
        ({"dim": "64"}, "dimension"),
        ({"dim": True}, "dimension"),
        ({"dim": 8}, f"8 dimensions, this server's space {D}"),
        ({"index_spec": "DROP TABLE items"}, "grammar"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": 1e300}, "created_at"),
        ({"counts": {"text": 10**18, "image": 0}}, "counts"),
        ({"counts": {"text": -1, "image": 1}}, "counts"),
        ({"model_version": ""}, "model_version"),
        ({"format": "other/1"}, "format"),
    ],
)
def test_a_header_is_checked_field_by_field(
    store: CollectionStore,
    good: Members,
    tmp_path: Path,
    fields: dict[str, Any],
    match: str,
) -> None:
    refused(store, craft(tmp_path / "h.tar", header_with(good, **fields)), match)


def test_counts_that_disagree_with_the_records_are_refused(
    store: CollectionStore, good: Members, tmp_path: Path
) -> None:
    header = json.loads(good["collection.json"])
    counts = {**header["counts"], "text": header["counts"]["text"] - 1}
    refused(store, craft(tmp_path / "n.tar", header_with(good, counts=counts)), "header counts")


def test_a_manifest_nested_deep_is_refused_with_a_reason(
    store: CollectionStore, good: Members, tmp_path: Path
) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    refused(store, craft(tmp_path / "d.tar", good, manifest=deep), "not JSON")


def first_image(good: Members) -> tuple[str, dict[str, Any], int]:
    lines = good["items/000001.jsonl"].decode().splitlines()
    for i, line in enumerate(lines):
        record = json.loads(line)
        if record["modality"] == "image":
            return "items/000001.jsonl", record, i
    raise AssertionError("no image item")


def with_record(good: Members, change: Callable[[dict[str, Any]], None]) -> Members:
    name, record, i = first_image(good)
    lines = good[name].decode().splitlines()
    change(record)
    lines[i] = json.dumps(record)
    return {**good, name: ("\n".join(lines) + "\n").encode()}


def test_an_image_that_is_not_the_one_it_names_is_refused(
    store: CollectionStore, good: Members, tmp_path: Path
) -> None:
    _, record, _ = first_image(good)
    poisoned = {**good, f"images/{record['content_sha256']}": b"png but other bytes"}
    refused(store, craft(tmp_path / "p.tar", poisoned), "not the image it names")


def test_html_planted_as_an_image_is_refused_and_types_come_from_the_bytes(
    store: CollectionStore, good: Members, tmp_path: Path
) -> None:
    html = b"<html><script>alert(1)</script></html>"
    digest = hashlib.sha256(html).hexdigest()

    def planted(record: dict[str, Any]) -> None:
        record["content_sha256"] = digest
        record["media_type"] = "text/html"

    members = {**with_record(good, planted), f"images/{digest}": html}
    refused(store, craft(tmp_path / "x.tar", members), "not an image")
    # A real picture with a lying media type is restored with the type its bytes give.

    def lying(record: dict[str, Any]) -> None:
        record["media_type"] = "text/html"

    path = craft(tmp_path / "t.tar", with_record(good, lying))
    with path.open("rb") as f:
        restore_archive(store, f, "r", (V, D), RULES)
    _, record, _ = first_image(good)
    assert store.get_item_content("r", record["id"])[1] == "image/png"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda r: r.update(modality="text", text="a text"), "image data on a text item"),
        (lambda r: r.update(created_at="yesterday"), "created_at"),
        (lambda r: r.update(created_at=float("nan")), "not a JSON record|created_at"),
        (lambda r: r.update(id="a\nb"), "control character"),
        (lambda r: r.update(id=7), "id is not a string"),
        (lambda r: r.update(metadata={"k": float("inf")}), "must be finite"),
        (lambda r: r.update(metadata=[1]), "object"),
        (lambda r: r.update(modality="video"), "modality"),
        (lambda r: r.update(text="an image with text"), "image item with a text"),
        (lambda r: r.update(content_sha256="../../etc/passwd"), "not a SHA-256"),
    ],
)
def test_each_record_is_checked_as_the_api_checks_an_item(
    store: CollectionStore,
    good: Members,
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    match: str,
) -> None:
    refused(store, craft(tmp_path / "r.tar", with_record(good, change)), match)


def test_progress_is_cumulative_and_a_cancel_stops_the_reading(
    store: CollectionStore, tmp_path: Path
) -> None:
    path = tmp_path / "good.tar"
    write_archive(store, "c", path)
    seen: list[int] = []
    with path.open("rb") as f:
        info = restore_archive(store, f, "r", (V, D), RULES, on_chunk=seen.append)
    assert seen == [1000, info.items] and info.items == 1100 - 1 + 40
    # Cancelled while verifying: the checksum loop asks between blocks.
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    rules = Rules(RULES.max_image_bytes, RULES.image_type, stop)
    with path.open("rb") as f, pytest.raises(Stopped):
        restore_archive(store, f, "r2", (V, D), rules)
    assert "r2" not in store.collections and len(calls) == 4


def test_records_that_are_not_utf8_are_a_reason_not_an_internal_error(
    store: CollectionStore, good: Members, tmp_path: Path
) -> None:
    broken = {**good, "items/000000.jsonl": b'{"id": "\xff\xfe"}\n'}
    refused(store, craft(tmp_path / "u.tar", broken), "cannot be read")
