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
from opencir.train.negatives import (
    NEGATIVES_FILE,
    attach_pair_negatives,
    nearest_caption_negatives,
    nearest_negatives,
)
from opencir.train.sources import build_dataset
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


def test_other_answers_of_the_same_query_are_never_mined() -> None:
    # one query ("r", "t") with two right answers, a (0°) and b (20°): b is a's nearest image
    triplets = [TripletExample("r", "t", "a"), TripletExample("r", "t", "b")]
    triplets.append(TripletExample("r", "other text", "a"))  # another query: b is fair game
    triplets.append(TripletExample("c", "u", "d"))
    mined = nearest_negatives(triplets, _embed, count=2)
    assert mined[0] == ("d", "c") and mined[1] == ("d", "c")
    assert mined[2] == ("b", "d")
    assert mined[3] == ("b", "r")
    with pytest.raises(ValueError, match="item 0 has only 2 candidates left"):
        nearest_negatives(triplets, _embed, count=3)


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


def test_pretraining_pairs_bring_their_nearest_other_captions() -> None:
    captions = ["a", "b", "a", "c", "d"]  # pairs 0 and 2 share a caption: never each other's
    mined = nearest_caption_negatives(captions, _embed, count=2)
    # a (0°) → b (20°), d (50°); each caption stands for the first pair carrying it
    assert mined == [(1, 4), (0, 4), (1, 4), (4, 1), (1, 0)]
    with pytest.raises(ValueError, match="at least 5 distinct captions"):
        nearest_caption_negatives(captions, _embed, count=4)


def test_pretraining_batches_hold_the_mined_pairs_after_their_own(world, tmp_path: Path) -> None:
    def config(name: str, **changes) -> TrainConfig:
        return _config(tmp_path, stage="pretrain", model="sum-dual-tiny",
                       out_dir=str(tmp_path / name),
                       data=DataConfig(pairs=str(world / "images.jsonl")), **changes)  # fmt: skip

    full = train(config("hn", hard_negatives=2), progress=False)
    saved = json.loads((tmp_path / "hn" / NEGATIVES_FILE).read_text())
    assert all(len(row) == 2 for row in saved["negatives"])
    dataset, _, _ = build_dataset(config("hn", hard_negatives=2))
    attach_pair_negatives(dataset, _must_not_embed, 2, tmp_path / "hn")  # reads the saved lists
    negative_captions = [dataset.pairs[i][1] for i in saved["negatives"][0]]
    assert dataset[0]["negative_texts"] == negative_captions
    assert dataset.pairs[0][1] not in negative_captions
    batch = Collate(lambda images: torch.zeros(len(images), 3), lambda texts: {"n": len(texts)})(
        [dataset[0], dataset[1]]
    )
    assert batch["image"].shape[0] == 2 and batch["negatives"].shape[0] == 4
    assert batch["tokens"] == {"n": 6}  # the 2 captions, then the 4 negatives' captions

    resumable = config("resumed", hard_negatives=2)
    train(resumable, progress=False, stop_at=2)
    resumed = train(resumable, resume="latest", progress=False)
    assert resumed.losses == pytest.approx(full.losses[2:], abs=1e-6)
    plain = train(config("plain"), progress=False)
    assert plain.losses[0] < full.losses[0]  # more candidates, higher first-step loss


def _must_not_embed(captions) -> torch.Tensor:
    raise AssertionError("the saved hard negatives should have been reused")


def test_hard_negatives_are_refused_where_nothing_is_mined(world, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pretrain, cir and combiner"):
        _config(tmp_path, stage="lm", model="mllm-tiny", hard_negatives=1)
    pairs = DataConfig(pairs=str(world / "images.jsonl"))
    mllm = _config(tmp_path, stage="pretrain", model="mllm-tiny", hard_negatives=1, data=pairs)
    with pytest.raises(ValueError, match="needs a dual-encoder model"):
        train(mllm, progress=False)
    with pytest.raises(ValueError, match=">= 0"):
        _config(tmp_path, hard_negatives=-1)
