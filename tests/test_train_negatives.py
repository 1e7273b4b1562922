"""Hard negatives: mined nearest images join the loss, and a resumed run reuses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from opencir.train import DataConfig, train
from opencir.train.config import TrainConfig
from opencir.train.data import Collate, TripletDataset, TripletExample
from opencir.train.negatives import NEGATIVES_FILE, nearest_negatives
from opencir.train.tasks import CIRTask
from tests.test_train import _config, _triplets

# image keys as points on a circle (degrees)
ANGLES = {"a": 0.0, "b": 20.0, "c": 180.0, "d": 50.0, "r": 10.0}


def _embed(keys) -> torch.Tensor:
    radians = torch.tensor([ANGLES[k] for k in keys]) * torch.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


def test_the_nearest_images_except_target_and_reference_are_mined() -> None:
    triplets = [TripletExample(r, "t", t) for r, t in (("r", "a"), ("b", "c"), ("d", "b"))]
    mined = nearest_negatives(triplets, _embed, count=2)
    assert mined[0] == ("b", "d")  # r (10°) is nearer but is the triplet's own reference
    assert mined[1] == ("d", "r")  # c's nearest, with its reference b excluded
    assert mined[2] == ("r", "a")
    with pytest.raises(ValueError, match="needs at least 6 distinct images"):
        nearest_negatives(triplets, _embed, count=4)


def test_mined_negatives_are_loaded_batched_and_scored(tmp_path: Path) -> None:
    colours = {"a": (255, 0, 0), "b": (0, 255, 0), "n": (0, 0, 255)}
    dataset = TripletDataset(
        [TripletExample("a", "x", "b", ("n",)), TripletExample("b", "y", "a", ("n",))],
        lambda key: Image.new("RGB", (8, 8), colours[key]),
    )
    batch = Collate(lambda images: torch.stack([torch.zeros(3)] * len(images)), lambda t: {})(
        [dataset[0], dataset[1]]
    )
    assert batch["negatives"].shape == (2, 3)

    class Model:
        def forward_query(self, pixels, tokens):
            return torch.eye(2)

        def forward_target(self, pixels):
            return torch.eye(2)[: pixels.shape[0]]

    task = CIRTask.__new__(CIRTask)
    task.config = TrainConfig(stage="cir", model="x", out_dir=str(tmp_path))
    task.model = Model()
    outputs = task.embeddings({"reference": None, "tokens": None, "target": torch.zeros(2),
                               "negatives": torch.zeros(1)})  # fmt: skip
    assert len(outputs) == 3  # queries, targets, the hard negatives as extra candidates


def test_training_with_hard_negatives_resumes_on_the_same_curve(world, tmp_path: Path) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    config = _config(tmp_path, data=data, hard_negatives=2)
    full = train(config, progress=False)
    saved = json.loads((tmp_path / "run" / NEGATIVES_FILE).read_text())
    assert saved["count"] == 2 and all(len(n) == 2 for n in saved["negatives"][0])
    other = _config(tmp_path, data=data, hard_negatives=2, out_dir=str(tmp_path / "run2"))
    train(other, progress=False, stop_at=2)
    resumed = train(other, resume="latest", progress=False)
    assert (tmp_path / "run2" / NEGATIVES_FILE).read_text() == json.dumps(saved)
    assert resumed.losses == pytest.approx(full.losses[2:], abs=1e-6)
    plain = train(_config(tmp_path, data=data, out_dir=str(tmp_path / "plain")), progress=False)
    assert plain.losses[0] < full.losses[0]  # more candidates, higher first-step loss


def test_hard_negatives_are_refused_outside_the_triplet_stages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cir and combiner"):
        _config(tmp_path, stage="pretrain", model="sum-dual-tiny", hard_negatives=1)
    with pytest.raises(ValueError, match=">= 0"):
        _config(tmp_path, hard_negatives=-1)
