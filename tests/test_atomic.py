"""The shared crash-safe writers: file modes, unique temporary names, output locks."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import opencir
from opencir.atomic import (
    OutputLockedError,
    atomic_open,
    atomic_write,
    exclusive_lock,
    staging_dir,
)
from opencir.train.checkpointing import save_training_checkpoint


@pytest.fixture
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_get_the_usual_mode_under_the_umask(tmp_path: Path, umask_027: None) -> None:
    written = atomic_write(tmp_path / "result.json", b"{}")
    with atomic_open(tmp_path / "listing.jsonl", "w", encoding="utf-8") as stream:
        stream.write("{}\n")
    assert _mode(written) == 0o640
    assert _mode(tmp_path / "listing.jsonl") == 0o640


def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask_027: None) -> None:
    path = tmp_path / "submission.json"
    path.write_bytes(b"old")
    path.chmod(0o604)
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert _mode(path) == 0o604


def test_staging_folders_get_the_usual_mode(tmp_path: Path, umask_027: None) -> None:
    first = staging_dir(tmp_path, ".index.staging-")
    second = staging_dir(tmp_path, ".index.staging-")
    assert first != second
    assert _mode(first) == 0o750


def test_temporary_names_are_unique_and_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    with atomic_open(path) as first, atomic_open(path) as second:
        first.write(b"one")
        second.write(b"two")
        temporaries = list(tmp_path.glob(".plan.json.*.tmp"))
        assert len(temporaries) == 2  # two writers never share a temporary file
    assert path.read_bytes() == b"one"  # the last to finish wins, whole
    with pytest.raises(RuntimeError), atomic_open(path) as stream:
        stream.write(b"half")
        raise RuntimeError("the writer died")
    assert path.read_bytes() == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_a_second_holder_of_an_exclusive_lock_is_refused_at_once(tmp_path: Path) -> None:
    lock = tmp_path / ".out.lock"
    with exclusive_lock(lock, "the first writer"):
        refused = pytest.raises(OutputLockedError)
        with refused as error, exclusive_lock(lock, "another writer holds out"):
            pass
    assert str(error.value) == "another writer holds out"
    assert not lock.exists()  # removed by its last holder
    with exclusive_lock(lock, "free again"):
        pass


def test_saved_checkpoints_get_the_usual_mode(tmp_path: Path, umask_027: None) -> None:
    model = opencir.create_model("sum-tiny")
    model.save(tmp_path / "final")
    assert _mode(tmp_path / "final") == 0o750
    assert _mode(tmp_path / "final" / "config.json") == 0o640
    step = save_training_checkpoint(tmp_path / "checkpoints", 3, model, {"step": 3}, keep=2)
    assert _mode(step) == 0o750
