"""A fixed target's candidate embeddings are computed once, and training is unchanged by it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from opencir.train import DataConfig, train
from opencir.train.data import Collate, TripletDataset, TripletExample
from opencir.train.fixed_targets import build_candidate_table, table_embedder
from opencir.train.losses import EXCLUDED_SCORE, pool_contrastive_loss
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


def test_the_pool_loss_is_cross_entropy_over_the_target_and_the_unexcluded_pool() -> None:
    queries = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    table = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    targets = torch.tensor([0, 2, 5])
    scores = (queries @ table.T).scatter(1, targets[:, None], EXCLUDED_SCORE)
    loss = pool_contrastive_loss(queries, table[targets], scores, temperature=0.1)
    by_hand = [-torch.log_softmax(queries[i] @ table.T / 0.1, dim=0)[targets[i]] for i in range(3)]
    assert loss.item() == pytest.approx(torch.stack(by_hand).mean().item(), rel=1e-5)


def test_pool_scores_leave_out_every_answer_of_the_query(tmp_path: Path) -> None:
    task = make_task(
        _config(tmp_path, model_overrides=FIXED, pool_negatives=True, reference_negatives=True)
    )
    task.candidate_table = torch.eye(5)
    queries = torch.ones(2, 5)
    batch = {"answer_rows": torch.tensor([[1, 3], [2, 2]]), "reference_rows": torch.tensor([0, 4])}
    scores = task._pool_scores(queries, batch)
    assert scores[0].tolist() == [1, EXCLUDED_SCORE, 1, EXCLUDED_SCORE, 1]
    assert scores[1].tolist() == [1, 1, EXCLUDED_SCORE, 1, 1]  # reference 4: a negative
    task.config = _config(tmp_path, model_overrides=FIXED, pool_negatives=True,
                          reference_negatives=False)  # fmt: skip
    assert task._pool_scores(queries, batch)[1, 4] == EXCLUDED_SCORE


def test_pool_negatives_train_and_accumulate_like_one_batch(world, tmp_path: Path) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))

    def run(name: str, **changes):
        settings = {"model_overrides": FIXED, "pool_negatives": True, "reference_negatives": True}
        config = _config(tmp_path, data=data, out_dir=str(tmp_path / name), **settings | changes)
        return train(config, progress=False)

    whole, accumulated = run("whole"), run("accumulated", grad_accum=2)
    assert all(torch.isfinite(torch.tensor(whole.losses)))
    # gradient accumulation keeps the whole batch's loss and stays finite;
    # after the first step the halves' text dropout masks differ from the whole batch's
    assert accumulated.losses[0] == pytest.approx(whole.losses[0], abs=1e-5)
    assert accumulated.losses == pytest.approx(whole.losses, abs=1e-3)
    with pytest.raises(ValueError, match="needs the table of fixed target embeddings"):
        run("ema", model_overrides={**FIXED, "ema_momentum": 0.999})
    with pytest.raises(ValueError, match="hard_negatives: 0"):
        run("mined", hard_negatives=2)
