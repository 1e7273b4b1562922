"""A fixed target's candidate embeddings are computed once, and training is unchanged by it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from opencir.train import DataConfig, train
from opencir.train.data import Collate, TripletDataset, TripletExample
from opencir.train.fixed_targets import build_candidate_table, table_embedder
from opencir.train.stages import make_task
from tests.test_train import _config, _triplets

FIXED = {"ema_momentum": 1.0, "predictor_residual": True, "cross_attention_zero_init": True}


def test_examples_carry_table_rows_instead_of_target_and_negative_images() -> None:
    loaded: list[str] = []

    def load(key: str) -> Image.Image:
        loaded.append(key)
        return Image.new("RGB", (8, 8))

    parts = [
        TripletDataset([TripletExample("a", "x", "b", ("c",))], load),
        TripletDataset([TripletExample("c", "y", "a", ("b",))], load),  # same keys, other part
    ]
    table = build_candidate_table(parts, lambda part: lambda keys: torch.eye(6)[: len(keys)])
    assert table.shape == (6, 6)  # each part's three keys get rows of their own
    assert parts[0].candidate_rows == {"a": 0, "b": 1, "c": 2}
    assert parts[1].candidate_rows == {"a": 3, "b": 4, "c": 5}
    assert table_embedder(table)(parts[1])(["b"]).tolist() == [table[4].tolist()]
    loaded.clear()
    examples = [parts[0][0], parts[1][0]]
    assert loaded == ["a", "c"]  # only the references, for the queries
    batch = Collate(lambda images: torch.zeros(len(images), 3), lambda texts: {})(examples)
    assert "target" not in batch and "negatives" not in batch
    assert batch["target_rows"].tolist() == [1, 3]
    assert batch["reference_rows"].tolist() == [0, 5]
    assert batch["negative_rows"].tolist() == [2, 4]


def test_only_a_fixed_target_is_cached(tmp_path: Path) -> None:
    def caches(**changes) -> bool:
        return make_task(_config(tmp_path, **changes)).caches_candidates()

    assert caches(model_overrides=FIXED)
    assert not caches(model_overrides={**FIXED, "ema_momentum": 0.999})
    assert not caches(model_overrides={**FIXED, "ema": False})  # the query encoder trains
    assert not caches(model_overrides=FIXED, cache_fixed_targets=False)


def test_training_on_the_table_follows_the_same_curve(world, tmp_path: Path) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))

    def run(name: str, cache: bool, **changes):
        config = _config(tmp_path, data=data, out_dir=str(tmp_path / name), model_overrides=FIXED,
                         hard_negatives=2, reference_negatives=True, cache_fixed_targets=cache,
                         **changes)  # fmt: skip
        return train(config, progress=False, **({"stop_at": 2} if "part" in name else {}))

    cached, encoded = run("cached", True), run("encoded", False)
    # the same batch and weights at the first step: the table holds what the encoder gives
    assert cached.losses[0] == pytest.approx(encoded.losses[0], abs=1e-6)
    # later the query side's text dropout masks differ (encoding the target's null text in
    # every batch draws random numbers; the table does not), so the curves are only close
    assert cached.losses == pytest.approx(encoded.losses, abs=1e-3)
    assert (tmp_path / "cached/hard_negatives.json").read_text() == (
        tmp_path / "encoded/hard_negatives.json"
    ).read_text()  # the miner reads the same embeddings from the table
    run("part", True)
    resumed = train(
        _config(tmp_path, data=data, out_dir=str(tmp_path / "part"), model_overrides=FIXED,
                hard_negatives=2, reference_negatives=True),
        resume="latest", progress=False,
    )  # fmt: skip
    assert resumed.losses == pytest.approx(cached.losses[2:], abs=1e-6)
