"""The model registry: versions are written whole or not at all, and read back as saved."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.registry import ModelRegistry, ModelVersion, UnknownModel, mean_recall

BASE = dict.fromkeys(("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"), 10.0)


def version(name: str, result: float = 20.0, created_at: float = 1.0) -> ModelVersion:
    return ModelVersion(
        name,
        "xmodal-tiny",
        "xmodal-tiny@none",
        "linear",
        "map.npz",
        metrics={"base": BASE, "result": dict.fromkeys(BASE, result)},
        created_at=created_at,
    )


def test_a_saved_version_reads_back_with_its_artifact(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    saved = registry.save(version("v1"), lambda p: p.write_bytes(b"weights"))
    assert registry.get("v1") == saved
    assert registry.artifact_path(saved).read_bytes() == b"weights"
    assert [v.version for v in registry.versions()] == ["v1"]
    with pytest.raises(FileExistsError):
        registry.save(version("v1"), lambda p: p.write_bytes(b"other"))
    assert registry.artifact_path(saved).read_bytes() == b"weights"


def test_a_failed_write_leaves_no_version_and_no_litter(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)

    def fail(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.save(version("v1"), fail)
    assert registry.versions() == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(UnknownModel):
        registry.get("v1")


def test_names_stay_inside_the_registry_and_do_not_alias(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    registry.save(version("../../escape"), lambda p: p.write_bytes(b"x"))
    assert all(p.is_relative_to(tmp_path / "models") for p in tmp_path.rglob("*") if p.is_file())
    assert registry.get("../../escape").version == "../../escape"
    with pytest.raises(UnknownModel):
        registry.get(".._.._escape")  # the same folder name, another version


def test_versions_are_listed_oldest_first_and_damaged_folders_skipped(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    registry.save(version("late", created_at=2.0), lambda p: p.write_bytes(b""))
    registry.save(version("early", created_at=1.0), lambda p: p.write_bytes(b""))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "version.json").write_text("{not json")
    assert [v.version for v in registry.versions()] == ["early", "late"]


def test_beats_base_compares_the_mean_of_the_six_recalls() -> None:
    assert mean_recall(BASE) == 10.0
    assert version("up", result=10.5).beats_base
    assert not version("same", result=10.0).beats_base
    assert not ModelVersion("v", "a", "b", "linear", "map.npz").beats_base  # not evaluated
