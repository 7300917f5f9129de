"""The blob store and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import index.blobs as blobs_module
from index.blobs import BlobStore, atomic_write, sha256_hex


def test_blobs_are_named_by_their_content_and_stored_once(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"picture")
    assert digest == sha256_hex(b"picture") and blobs.get(digest) == b"picture"
    assert blobs.path(digest) == tmp_path / digest[:2] / digest[2:4] / digest
    mtime = os.stat(blobs.path(digest)).st_mtime_ns
    assert blobs.put(b"picture") == digest
    assert os.stat(blobs.path(digest)).st_mtime_ns == mtime  # not written again
    blobs.delete(digest)
    blobs.delete(digest)  # twice is fine
    assert not blobs.exists(digest)


@pytest.mark.parametrize("digest", ["../../etc/passwd", "ab", "G" * 64, "A" * 64, "a" * 63 + "/"])
def test_anything_but_a_sha256_digest_is_refused(tmp_path: Path, digest: str) -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        BlobStore(tmp_path).get(digest)


def test_atomic_write_replaces_whole_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_a_chunk_of_files_written_lazily_is_made_durable_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syncfs: bool
) -> None:
    """A batch job writes a chunk's files without an fsync each, then one call makes them
    all durable before the chunk commits (syncfs on Linux; an fsync per file and folder
    where there is none)."""
    if not syncfs:
        monkeypatch.setattr(blobs_module, "_SYNCFS", None)
    store = BlobStore(tmp_path / "blobs")
    datas = [bytes([i]) * (1000 + i) for i in range(20)]
    digests = [store.put(d, durable=False) for d in datas]
    assert not list((tmp_path / "blobs").glob("??/??/.*.tmp"))  # renamed into place
    store.make_durable(digests)
    assert [store.get(d) for d in digests] == datas
    store.make_durable([])  # nothing to do
