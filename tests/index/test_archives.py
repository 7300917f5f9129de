"""Collection archives at the store: written from one backend and restored onto either,
with the same ids and scores; damaged, foreign and other-space archives refused before
anything is written; a restore that fails, or a process that dies mid-way, leaves no
collection behind."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bench.postgres import PgCluster
from index import CollectionStore, FaissBackends, MilvusBackends, Modality, NewItem
from index.archive_check import CHUNK, verify
from index.archives import ArchiveError, Rules, restore_archive, write_archive
from index.errors import CollectionExists
from index.live import SHADOW_PREFIX
from tests.helpers import REPO
from tests.stores import CPU, D, V, normalised


def sniff(data: bytes) -> str:
    """The media type of the test's stand-in images (the service decodes real ones)."""
    if not data.startswith(b"png "):
        raise ValueError("not a picture")
    return "image/png"


RULES = Rules(max_image_bytes=1 << 20, image_type=sniff)


def restore(
    store: CollectionStore, path: Path, name: str, version: str = V, **kw: object
) -> object:
    with path.open("rb") as f:
        return restore_archive(store, f, name, (version, D), kw.pop("rules", RULES), **kw)  # type: ignore[arg-type]


def verify_archive(path: Path, rules: Rules = RULES) -> object:
    with path.open("rb") as f:
        return verify(f, rules, D)


def filled(store: CollectionStore, n: int = CHUNK + 150, spec: str = "Flat") -> None:
    store.create_collection("c", D, V, spec)
    texts = [
        NewItem(f"t{i}", Modality.TEXT, {"n": i, "tag": 'ü"q'}, text=f"text {i}") for i in range(n)
    ]
    images = [
        NewItem(
            f"i{i}",
            Modality.IMAGE,
            {"n": i},
            content=f"png {i % 7}".encode(),
            media_type="image/png",
        )
        for i in range(40)
    ]
    store.upsert("c", texts, normalised(n, 1), V)
    store.upsert("c", images, normalised(40, 2), V)
    store.delete_item("c", "t3")


def kill_9_when(script: str, marker: str) -> None:
    """Run ``script`` in a process of its own and kill -9 it once it prints ``marker``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == marker + "\n"
    finally:
        proc.kill()
        proc.wait()


def answers(store: CollectionStore, name: str) -> list[list[tuple[str, float]]]:
    out = []
    for target in Modality:
        hits = store.search(
            name, target, normalised(3, 9), 25, model_version=V, where={"n": {"$lt": 900}}
        )
        out += [[(h.id, round(h.score, 5)) for h in row] for row in hits]
    return out


@pytest.mark.parametrize(("onto", "spec"), [("faiss", "HNSW16"), ("milvus", "Flat")])
def test_an_archive_restores_with_the_same_answers(tmp_path: Path, onto: str, spec: str) -> None:
    """Onto FAISS with its approximate index kept; onto Milvus from an exact index (Milvus
    builds its own kinds of index: a FAISS spec it cannot take gives its default)."""
    source = CollectionStore(tmp_path / "a", backends=CPU)
    filled(source, spec=spec)
    archive = tmp_path / "c.tar"
    info = write_archive(source, "c", archive)
    assert info.items == CHUNK + 150 - 1 + 40 and archive.exists()
    assert not list(tmp_path.glob(".*partial"))
    expected = answers(source, "c")
    backends = (
        MilvusBackends(str(tmp_path / "lite.db"))
        if onto == "milvus"
        else FaissBackends(use_gpu=False)
    )
    target = CollectionStore(tmp_path / "b", backends=backends)
    try:
        restore(target, archive, "copy")
        got = target.get_collection("copy")
        assert got.index_spec.upper() == spec.upper()
        assert got.counts == source.get_collection("c").counts
        got_answers = answers(target, "copy")
        # The same ids in the same order; scores to float32 precision (Milvus sums apart).
        assert [[i for i, _ in row] for row in got_answers] == [
            [i for i, _ in row] for row in expected
        ]
        for row, want in zip(got_answers, expected, strict=True):
            assert np.allclose([x for _, x in row], [x for _, x in want], atol=2e-5)
        item = target.get_item("copy", "i5")
        assert target.get_item_content("copy", "i5")[0] == b"png 5" and item.metadata == {"n": 5}
        with pytest.raises(CollectionExists):
            restore(target, archive, "copy")
        assert not [n for n in target.collections if n.startswith(SHADOW_PREFIX)]
    finally:
        source.close()
        target.close()


def test_damaged_foreign_and_other_space_archives_are_refused(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path / "a", backends=CPU)
    try:
        filled(store, n=30)
        archive = tmp_path / "c.tar"
        write_archive(store, "c", archive)
        data = bytearray(archive.read_bytes())
        where = data.find(b"text 17")
        data[where] ^= 1
        damaged = tmp_path / "damaged.tar"
        damaged.write_bytes(bytes(data))
        with pytest.raises(ArchiveError, match="damaged"):
            restore(store, damaged, "x")
        foreign = tmp_path / "foreign.tar"
        with tarfile.open(foreign, "w") as tar:
            tar.add(archive, arcname="../../etc/passwd")
        with pytest.raises(ArchiveError, match="no archive holds|no manifest"):
            verify_archive(foreign)
        (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
        with pytest.raises(ArchiveError, match="not an archive"):
            verify_archive(tmp_path / "junk.tar")
        with pytest.raises(ArchiveError, match="reembed"):
            restore(store, archive, "x", "other-model@v9")
        assert "x" not in store.collections
        # Re-encoding: vectors from a caller, in the other space.
        store.create_collection("other", D, "other-model@v9")

        def again(items: list[NewItem], archived: np.ndarray) -> np.ndarray:
            return normalised(len(items), 5)

        restore(store, archive, "moved", "other-model@v9", reembed=again)
        assert store.get_collection("moved").model_version == "other-model@v9"
    finally:
        store.close()


def test_a_restore_that_fails_or_dies_midway_leaves_nothing(tmp_path: Path) -> None:
    store = CollectionStore(tmp_path / "a", backends=CPU)
    filled(store)
    archive = tmp_path / "c.tar"
    write_archive(store, "c", archive)
    calls = []

    def fails(items: list[NewItem], archived: np.ndarray) -> np.ndarray:
        calls.append(len(items))
        if len(calls) == 2:
            raise RuntimeError("the encoder failed")
        return archived

    with pytest.raises(RuntimeError):
        restore(store, archive, "r", reembed=fails)
    assert "r" not in store.collections and not [n for n in store.collections if n.startswith(".")]

    store.close()
    # kill -9 with the hidden copy half filled: it is dropped on the next start.
    script = f"""
import sys, time
from index import CollectionStore, FaissBackends
from index.archives import Rules, restore_archive
store = CollectionStore({str(tmp_path / "a")!r}, backends=FaissBackends(use_gpu=False))
calls = []
def slow(items, archived):
    calls.append(1)
    if len(calls) == 2:  # the first chunk is in the hidden copy
        print("chunk", flush=True)
        time.sleep(30)
    return archived
rules = Rules(1 << 20, lambda data: "image/png")
with open({str(archive)!r}, "rb") as f:
    restore_archive(store, f, "r", ({V!r}, {D}), rules, slow)
"""
    kill_9_when(script, "chunk")
    again = CollectionStore(tmp_path / "a", backends=CPU)
    try:
        names = [c.name for c in again.list_collections()]
        assert names == ["c"] and not [n for n in again.collections if n.startswith(".")]
        assert again.get_collection("c").counts[Modality.TEXT] == CHUNK + 150 - 1
    finally:
        again.close()


def test_kill_9_while_archiving_leaves_no_archive_and_the_next_one_clears_up(
    tmp_path: Path,
) -> None:
    store = CollectionStore(tmp_path / "a", backends=CPU)
    filled(store)
    store.close()
    folder = tmp_path / "archives"
    script = f"""
import time
from pathlib import Path
from index import CollectionStore, FaissBackends
from index.archives import write_archive
store = CollectionStore({str(tmp_path / "a")!r}, backends=FaissBackends(use_gpu=False))
calls = []
def slow():
    calls.append(1)
    if len(calls) == 2:  # the first chunk is written
        print("writing", flush=True)
        time.sleep(30)
    return False
write_archive(store, "c", Path({str(folder / "c.tar")!r}), slow)
"""
    kill_9_when(script, "writing")
    assert not list(folder.glob("*.tar")) and list(folder.glob(".*.partial"))
    store = CollectionStore(tmp_path / "a", backends=CPU)
    try:
        write_archive(store, "c", folder / "d.tar")
        assert [p.name for p in folder.iterdir()] == ["d.tar"]
        verify_archive(folder / "d.tar")
    finally:
        store.close()


def test_an_archive_moves_between_the_catalogues_both_ways(tmp_path: Path, pg: PgCluster) -> None:
    """Taken on a SQLite-backed store, restored on a PostgreSQL-backed one, taken there
    and restored on SQLite again: every step answers the same ids and scores, filters and
    lexical searches included."""
    sqlite = CollectionStore(tmp_path / "s", backends=CPU)
    postgres = CollectionStore(tmp_path / "p", backends=CPU, database_url=pg.database())
    back = CollectionStore(tmp_path / "b", backends=CPU)
    try:
        filled(sqlite)
        expected = answers(sqlite, "c")
        words = [h.id for h in sqlite.lexical("c", "text 42", 20, {"tag": 'ü"q'})]
        write_archive(sqlite, "c", tmp_path / "a.tar")
        restore(postgres, tmp_path / "a.tar", "c")
        assert answers(postgres, "c") == expected
        assert {h.id for h in postgres.lexical("c", "text 42", 20, {"tag": 'ü"q'})} == set(words)
        assert postgres.get_item("c", "t5") == sqlite.get_item("c", "t5")
        write_archive(postgres, "c", tmp_path / "b.tar")
        restore(back, tmp_path / "b.tar", "c")
        assert answers(back, "c") == expected
        assert [h.id for h in back.lexical("c", "text 42", 20, {"tag": 'ü"q'})] == words
        assert back.get_collection("c").counts == sqlite.get_collection("c").counts
    finally:
        for store in (sqlite, postgres, back):
            store.close()
