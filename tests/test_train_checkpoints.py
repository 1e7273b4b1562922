"""Resuming checks each checkpoint, falls back past a damaged newest one, cleans leftovers."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from opencir.models import CheckpointError
from opencir.train import DataConfig, TrainConfig, train
from tests.test_base_weights import _text_source
from tests.test_train import _config, _triplets


def _run(world: Path, tmp_path: Path, **changes) -> TrainConfig:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    return _config(tmp_path, **{"steps": 6, "data": data, **changes})


def _damage(checkpoint: Path, part: str) -> None:
    """Cut a file in half, as a full disk would, or lose the whole folder."""
    if part == "folder":
        shutil.rmtree(checkpoint)
        return
    content = (checkpoint / part).read_bytes()
    (checkpoint / part).write_bytes(content[: len(content) // 2])


@pytest.mark.parametrize("damaged", ["model/model.safetensors", "train_state.pt", "folder"])
def test_resume_falls_back_past_a_damaged_newest_checkpoint(
    world: Path, tmp_path: Path, damaged: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = _run(world, tmp_path)
    first = train(config, stop_at=4, progress=False)
    root = Path(config.out_dir) / "checkpoints"
    _damage(root / "step-000004", damaged)
    with caplog.at_level(logging.WARNING, logger="opencir.train.checkpointing"):
        resumed = train(config, resume="latest", progress=False)
    assert "skipping checkpoint" in caplog.text and "step-000004" in caplog.text
    assert resumed.steps_done == 6 and len(resumed.losses) == 4  # steps 3..6, from step 2
    assert resumed.losses[:2] == first.losses[2:4]


def test_resume_without_a_usable_checkpoint_names_each_problem(world, tmp_path) -> None:
    config = _run(world, tmp_path)
    train(config, stop_at=2, progress=False)
    state = Path(config.out_dir) / "checkpoints" / "step-000002" / "train_state.pt"
    state.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"no usable checkpoint .*step-000002 cannot be read"):
        train(config, resume="latest", progress=False)
    with pytest.raises(CheckpointError, match=r"step-000002 cannot be read"):
        train(config, resume="step-000002", progress=False)


def test_a_checkpoint_of_another_model_is_refused_by_name(world, tmp_path) -> None:
    config = _run(world, tmp_path)
    train(config, stop_at=2, progress=False)
    other = _run(world, tmp_path, model="instructcir-tiny")
    with pytest.raises(CheckpointError, match=r"model='instructcir-dual-tiny', this run has"):
        train(other, resume="latest", progress=False)


def test_leftovers_of_an_interrupted_save_are_removed_and_nothing_else(world, tmp_path) -> None:
    config = _run(world, tmp_path, steps=4)
    train(config, stop_at=2, progress=False)
    root = Path(config.out_dir) / "checkpoints"
    leftovers = [root / ".step-000004.k2x_9a", root / ".step-000004.old-4242"]
    for folder in leftovers:
        (folder / "model").mkdir(parents=True)
    (root / ".latest.a1b2c3.tmp").write_text("step-000004\n")
    (root / ".notes").mkdir()
    (root / "step-notes.txt").write_text("mine")
    assert train(config, resume="latest", progress=False).steps_done == 4
    assert sorted(p.name for p in root.iterdir()) == [
        ".notes", "latest", "step-000002", "step-000004", "step-notes.txt",
    ]  # fmt: skip


def test_resume_refills_pretrained_text_weights_left_out_of_the_checkpoint(world, tmp_path) -> None:
    source = _text_source(tmp_path / "bert")
    config = _run(world, tmp_path, steps=4, text_init=source, freeze=("text_model",))
    train(config, stop_at=2, progress=False)
    saved = Path(config.out_dir) / "checkpoints" / "step-000002" / "model" / "config.json"
    assert json.loads(saved.read_text())["external_weights"]["tensors"]
    assert train(config, resume="latest", progress=False).steps_done == 4
