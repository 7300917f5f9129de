from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.sources import SourceError, detect_format, open_source, resolve_under
from tests.corpus import write_folder, write_jsonl, write_shards


def test_resolve_under_refuses_every_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    os.symlink(tmp_path, root / "up")
    assert resolve_under(root, "inside") == (root / "inside").resolve()
    for bad in ("..", "../x", "inside/../../x", "/etc/passwd", "up", "up/elsewhere"):
        with pytest.raises(SourceError, match="outside the import root"):
            resolve_under(root, bad)


def test_records_come_out_in_the_same_order_with_stable_ids(tmp_path: Path) -> None:
    write_folder(tmp_path, "pics")
    source = open_source(tmp_path, "pics")
    first = list(source.records())
    second = list(open_source(tmp_path, "pics").records())
    assert [(r.seq, r.id) for r in first] == [(r.seq, r.id) for r in second]
    assert [r.seq for r in first] == list(range(len(first)))
    assert source.count() == len(first)
    # Captions follow their image and point back to it.
    by_id = {r.id: r for r in first}
    assert by_id["img000.txt"].metadata["image_id"] == "img000.jpg"
    assert by_id["img000.txt"].seq == by_id["img000.jpg"].seq + 1


def test_manifest_rows_become_image_and_caption_records(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path, "m")
    records = {r.id: r for r in open_source(tmp_path, corpus.source).records()}
    assert records["m-1"].kind == "image" and records["m-1"].metadata == {"label": "class-1"}
    assert records["m-1#text"].text == "manifest caption m 1"
    assert records["m-1#text"].metadata["image_id"] == "m-1"
    assert records["m-textonly"].kind == "text"
    assert "outside the import root" in (records["m-outside"].error or "")
    assert "invalid JSON" in (records["m.jsonl:4"].error or "")


def test_shards_group_members_by_key(tmp_path: Path) -> None:
    corpus = write_shards(tmp_path, "wds")
    records = list(open_source(tmp_path, "wds").records())
    keys = [r.id for r in records if r.kind == "image"]
    assert keys == sorted(keys) and len(keys) == len(corpus.images) + len(corpus.failed)
    first = records[0]
    assert first.image is not None and first.image.size and first.metadata["shard_no"] == 0
    assert first.image.read(10**6) == corpus.images[first.id]


def test_formats_are_detected_or_refused(tmp_path: Path) -> None:
    write_folder(tmp_path, "pics")
    write_shards(tmp_path, "wds")
    assert detect_format(tmp_path / "pics") == "folder"
    assert detect_format(tmp_path / "wds") == "webdataset"
    for name, fmt in (
        ("a.jsonl", "jsonl"),
        ("a.csv", "csv"),
        ("a.parquet", "parquet"),
        ("a.tar", "webdataset"),
    ):
        (tmp_path / name).write_bytes(b"")
        assert detect_format(tmp_path / name) == fmt
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(SourceError, match="cannot tell the format"):
        open_source(tmp_path, "a.xml")
    with pytest.raises(SourceError, match="not a folder"):
        open_source(tmp_path, "a.csv", "folder")
    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path, "nope")


HOSTILE_JSON = {
    "deep array": "[" * 100_000 + "]" * 100_000,
    "deep object": '{"a": ' * 50_000 + "1" + "}" * 50_000,
    "deep inside a record": '{"id": "x", "text": "t", "meta": ' + "[" * 60_000 + "]" * 60_000 + "}",
    "5,000-digit integer": '{"id": "n", "text": "t", "n": ' + "7" * 5_000 + "}",
    "huge exponent float": '{"id": "f", "text": "t", "n": 1e999999}',
}


def test_a_hostile_json_line_fails_alone(tmp_path: Path) -> None:
    """Nesting past the parser's depth, numbers past Python's digit limit: each such line
    is one failed record with its reason, and the lines around it are read."""
    folder = tmp_path / "hostile"
    folder.mkdir()
    lines = [
        '{"id": "before", "text": "first"}',
        *HOSTILE_JSON.values(),
        '{"id": "after", "text": "last"}',
    ]
    (folder / "m.jsonl").write_text("\n".join(lines) + "\n")
    records = list(open_source(tmp_path, "hostile/m.jsonl").records())
    by_id = {r.id: r for r in records}
    assert by_id["before"].text == "first" and by_id["after"].text == "last"
    failed = [r for r in records if r.error]
    assert len(failed) == 4, [(r.id, r.error) for r in records]  # 1e999999 is inf: parsed
    assert all("invalid JSON" in (r.error or "") for r in failed)
    assert any("nested too deeply" in (r.error or "") for r in failed)
    assert any("digits" in (r.error or "") for r in failed)


def test_a_hostile_shard_sidecar_leaves_its_image(tmp_path: Path) -> None:
    import io
    import tarfile

    folder = tmp_path / "wds"
    folder.mkdir()
    with tarfile.open(folder / "shard-00000.tar", "w") as tar:
        for key, sidecar in (("a", "[" * 100_000), ("b", '{"n": ' + "9" * 5_000 + "}")):
            for ext, data in (("jpg", b"\xff\xd8not really"), ("json", sidecar.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    records = list(open_source(tmp_path, "wds").records())
    assert [r.id for r in records if r.kind == "image"] == ["a", "b"]
    assert all(r.error is None and set(r.metadata) == {"shard", "key"} for r in records)
