"""Moving a collection to another model version while it keeps serving: writes and deletes
made during the copy are caught up, the swap is all at once, an abort or a crash leaves
the original as it was."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from index import CollectionStore, FaissBackends, Migration, Modality, ModelMismatch, NewItem
from index.types import StoredItem
from tests.stores import items, normalised

D = 16
V1, V2 = "model@v1", "model@v2"
ROTATION = np.linalg.qr(np.random.default_rng(7).standard_normal((D, D)))[0].astype(np.float32)


def rotate(stored: Sequence[StoredItem]) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """The 'new version': a fixed rotation of the stored vectors (norms kept)."""
    return np.stack([it.embedding for it in stored]) @ ROTATION, [None] * len(stored)


def open_store(path: Path) -> CollectionStore:
    return CollectionStore(path, backends=FaissBackends(use_gpu=False))


@pytest.fixture
def filled(tmp_path: Path) -> tuple[CollectionStore, dict[str, np.ndarray]]:
    store = open_store(tmp_path / "data")
    store.create_collection("c", D, V1)
    new = items(10, Modality.IMAGE) + items(10, Modality.TEXT)
    vectors = normalised(20, seed=1)
    store.upsert("c", new, vectors, V1)
    return store, {it.id: v for it, v in zip(new, vectors, strict=True)}


def nearest(store: CollectionStore, target: Modality, vector: np.ndarray, version: str) -> str:
    return store.search("c", target, vector[None], 1, model_version=version)[0][0].id


def test_writes_during_the_copy_are_caught_up_and_the_swap_is_whole(
    filled: tuple[CollectionStore, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    store, vectors = filled
    migration = Migration(store, V1, V2, rotate, batch=4)
    assert migration.total == 20
    assert migration.copy() == 4
    # Meanwhile the original serves as before and takes writes and deletes.
    assert [c.name for c in store.list_collections()] == ["c"]
    assert nearest(store, Modality.IMAGE, vectors["img-2"], V1) == "img-2"
    late = normalised(2, seed=9)
    store.upsert(
        "c",
        [NewItem("late", Modality.TEXT, {}, text="late"), NewItem("img-0", Modality.IMAGE, {})],
        late,
        V1,
    )  # a new item, and one already copied replaced
    store.delete_item("c", "img-3")  # already copied
    store.delete_item("c", "txt-9")  # not yet copied
    copied = 4
    while n := migration.copy():
        copied += n
    switched: list[str] = []
    migration.commit(after=lambda: switched.append(store.get_collection("c").model_version))
    assert switched == [V2]  # `after` ran with the swap done, under the same lock

    info = store.get_collection("c")
    assert info.model_version == V2
    assert info.counts == {Modality.IMAGE: 9, Modality.TEXT: 10}
    with pytest.raises(ModelMismatch):
        nearest(store, Modality.IMAGE, vectors["img-2"], V1)
    assert nearest(store, Modality.IMAGE, vectors["img-2"] @ ROTATION, V2) == "img-2"
    assert nearest(store, Modality.IMAGE, late[1] @ ROTATION, V2) == "img-0"
    assert nearest(store, Modality.TEXT, late[0] @ ROTATION, V2) == "late"
    ids = {h.id for h in store.search("c", Modality.TEXT, late[:1], 50, model_version=V2)[0]}
    assert "txt-9" not in ids and "txt-0" in ids
    store.close()

    again = open_store(tmp_path / "data")  # and so it stays
    assert [c.name for c in again.list_collections()] == ["c"]
    assert again.get_collection("c").counts == {Modality.IMAGE: 9, Modality.TEXT: 10}
    assert nearest(again, Modality.IMAGE, vectors["img-2"] @ ROTATION, V2) == "img-2"
    again.close()


def test_abort_and_a_crash_midway_leave_the_original_as_it_was(
    filled: tuple[CollectionStore, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    store, vectors = filled
    migration = Migration(store, V1, V2, rotate, batch=4)
    migration.copy()
    migration.abort()
    assert sorted(store.collections) == ["c"]
    assert store.get_collection("c").model_version == V1

    Migration(store, V1, V2, rotate, batch=4).copy()  # and then the process dies
    store.close()
    again = open_store(tmp_path / "data")
    assert sorted(again.collections) == ["c"]
    info = again.get_collection("c")
    assert info.model_version == V1 and info.counts == {Modality.IMAGE: 10, Modality.TEXT: 10}
    assert nearest(again, Modality.TEXT, vectors["txt-4"], V1) == "txt-4"
    again.close()


def test_a_failing_reembed_leaves_nothing_behind(
    filled: tuple[CollectionStore, dict[str, np.ndarray]],
) -> None:
    store, _ = filled

    def broken(stored: Sequence[StoredItem]) -> tuple[np.ndarray, list[np.ndarray | None]]:
        raise RuntimeError("model fell over")

    migration = Migration(store, V1, V2, broken)
    with pytest.raises(RuntimeError):
        migration.copy()
    migration.abort()
    assert sorted(store.collections) == ["c"]
    assert store.get_collection("c").counts == {Modality.IMAGE: 10, Modality.TEXT: 10}
    store.close()


def test_collections_created_during_the_move_join_it_and_deleted_ones_leave_it(
    filled: tuple[CollectionStore, dict[str, np.ndarray]],
) -> None:
    store, vectors = filled
    store.create_collection("gone", D, V1)
    store.create_collection("again", D, V1)
    store.upsert("again", items(3, Modality.TEXT), normalised(3, seed=3), V1)
    migration = Migration(store, V1, V2, rotate, batch=4)
    assert sorted(migration.names) == ["again", "c", "gone"]
    migration.copy()
    store.create_collection("new", D, V1)  # created with the version serving now
    store.upsert("new", items(2, Modality.TEXT), normalised(2, seed=4), V1)
    store.delete_collection("gone")
    store.delete_collection("again")  # and created again: its copy starts over
    store.create_collection("again", D, V1)
    fresh = normalised(1, seed=5)
    store.upsert("again", [NewItem("fresh", Modality.TEXT, {}, text="f")], fresh, V1)
    while migration.copy():
        pass
    store.create_collection("last-moment", D, V1)  # after the last copy: joins at commit
    migration.commit()
    names = [c.name for c in store.list_collections()]
    assert names == ["again", "c", "last-moment", "new"]
    assert {c.model_version for c in store.list_collections()} == {V2}
    assert store.get_collection("again").counts == {Modality.IMAGE: 0, Modality.TEXT: 1}
    assert store.get_collection("new").counts[Modality.TEXT] == 2
    hit = store.search("again", Modality.TEXT, fresh @ ROTATION, 1, model_version=V2)[0][0]
    assert hit.id == "fresh"
    store.upsert("new", items(1, Modality.TEXT, start=7), normalised(1, seed=6), V2)  # no 409
    assert not [n for n in store.collections if n.startswith(".")]
    store.close()
