"""The trainer: every stage runs, resumes on the identical loss curve, survives a bad save."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import opencir
from opencir.data.collections import CollectionSpec
from opencir.data.triplets import Triplet, write_manifest, write_triplets
from opencir.train import (
    DataConfig,
    OptimConfig,
    TrainConfig,
    TrainingDivergedError,
    checkpointing,
    train,
)
from opencir.train.config import load_recipe
from opencir.train.data import MixtureSampler
from opencir.train.loop import lr_factor


def _triplets(world: Path, folder: Path, texts: str = "make it {}") -> Path:
    rows = [json.loads(line) for line in (world / "images.jsonl").read_text().splitlines()]
    train_ids = [r["id"] for r in rows if r["split"] == "train"]
    pairs = zip(train_ids, train_ids[1:] + train_ids[:1], strict=True)
    triplets = [Triplet(f"t{i}", a, b, texts.format(i)) for i, (a, b) in enumerate(pairs)]
    write_triplets(triplets, folder / "triplets.jsonl")
    write_manifest(folder, CollectionSpec(path=str(world / "images.jsonl")).to_dict())
    return folder


def _config(tmp: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        stage="cir", model="instructcir-dual-tiny", out_dir=str(tmp / "run"), steps=4,
        batch_size=4, checkpoint_every=2, log_every=1, tensorboard=False,
        optim=OptimConfig(lr=1e-3, warmup_steps=1),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_every_stage_runs_and_exports(world: Path, tmp_path: Path) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    pre = train(
        _config(tmp_path, stage="pretrain", model="sum-dual-tiny", out_dir=str(tmp_path / "pre"),
                steps=2, data=DataConfig(pairs=str(world / "images.jsonl"))),
        progress=False,
    )  # fmt: skip
    assert (tmp_path / "pre" / "backbone" / "config.json").is_file()
    backbone = str(tmp_path / "pre" / "backbone")
    s1 = train(_config(tmp_path, out_dir=str(tmp_path / "s1"), steps=2, pretrained=backbone,
                       data=data), progress=False)  # fmt: skip
    combiner = train(
        _config(tmp_path, stage="combiner", init=str(s1.final), out_dir=str(tmp_path / "comb"),
                steps=2, data=data),
        progress=False,
    )  # fmt: skip
    baseline = train(_config(tmp_path, model="combiner-dual-tiny", out_dir=str(tmp_path / "cb"),
                             steps=2, pretrained=backbone, data=data), progress=False)  # fmt: skip
    for result in (pre, s1, combiner, baseline):
        assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
        assert opencir.load(result.final).config.name
    assert opencir.load(combiner.final).combiner_weight is not None
    with (tmp_path / "s1" / "metrics.csv").open() as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [1, 2]


def test_combiner_stage_trains_only_lambda(world: Path, tmp_path: Path) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    s1 = train(_config(tmp_path, out_dir=str(tmp_path / "s1"), steps=1, data=data), progress=False)
    before = opencir.load(s1.final).state_dict()
    config = _config(
        tmp_path, stage="combiner", init=str(s1.final), out_dir=str(tmp_path / "c"), steps=2,
        data=data,
    )  # fmt: skip
    after_run = train(config, progress=False)
    after = opencir.load(after_run.final).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "combiner_logit" in after and "combiner_logit" not in before


def test_resume_reproduces_the_uninterrupted_loss_curve(world: Path, tmp_path: Path) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    full = train(_config(tmp_path, out_dir=str(tmp_path / "full"), steps=6, data=data),
                 progress=False)  # fmt: skip
    split = _config(tmp_path, out_dir=str(tmp_path / "split"), steps=6, data=data)
    first = train(split, stop_at=4, progress=False)
    assert first.final is None and first.steps_done == 4
    second = train(split, resume="latest", progress=False)
    assert first.losses + second.losses == full.losses
    a, b = opencir.load(full.final), opencir.load(second.final)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_ema_target_follows_its_formula_and_gets_no_gradients(world, tmp_path) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    config = _config(tmp_path, steps=1, data=data, model_overrides={"ema_momentum": 0.5})
    start = opencir.create_model("instructcir-dual-tiny")
    result = train(config, progress=False)
    model = opencir.load(result.final)
    assert all(not p.requires_grad or p.grad is None for p in model.target_encoder.parameters())
    init_target = dict(start.target_encoder.named_parameters())
    for name, value in model.target_encoder.named_parameters():
        online = dict(model.query_encoder.named_parameters())[name]
        torch.testing.assert_close(value, 0.5 * init_target[name] + 0.5 * online)


def test_a_failing_checkpoint_save_keeps_the_previous_one(world, tmp_path, monkeypatch) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    config = _config(tmp_path, steps=4, data=data)
    train(config, stop_at=2, progress=False)
    real_save = torch.save

    def crash(obj, path, *args, **kwargs):  # dies half-way through writing the state
        real_save({"partial": True}, path)
        raise KeyboardInterrupt("killed during checkpoint save")

    monkeypatch.setattr(checkpointing.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config, resume="latest", progress=False)
    monkeypatch.setattr(checkpointing.torch, "save", real_save)
    root = Path(config.out_dir) / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002"]
    resumed = train(config, resume="latest", progress=False)
    assert resumed.steps_done == 4


def test_nan_loss_stops_with_a_clear_message(world, tmp_path, monkeypatch) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    monkeypatch.setattr("opencir.train.tasks.batch_contrastive_loss",
                        lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))  # fmt: skip
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 1.*lower optim\.lr"):
        train(_config(tmp_path, data=data), progress=False)


def test_mixture_sampler_draws_the_labelled_share_deterministically() -> None:
    sampler = MixtureSampler(10, 5, batch_size=4, ratio=0.25, seed=3, total_batches=8)
    indices = list(sampler)
    batches = [indices[i : i + 4] for i in range(0, len(indices), 4)]
    assert all(sum(i >= 10 for i in batch) == 1 for batch in batches)
    resumed = MixtureSampler(10, 5, batch_size=4, ratio=0.25, seed=3, total_batches=8,
                             start_batch=5)  # fmt: skip
    assert list(resumed) == indices[5 * 4 :]
    ranks = [list(MixtureSampler(10, 5, 4, 0.25, 3, 8, rank=r, world=2)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(indices)


def test_warmup_then_cosine_schedule(tmp_path: Path) -> None:
    config = _config(tmp_path, steps=10, optim=OptimConfig(warmup_steps=2, min_lr_ratio=0.1))
    factors = [lr_factor(step, config) for step in range(10)]
    assert factors[:2] == [0.5, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(factors[1:]))
    assert factors[-1] == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi)).item())
    )


def test_recipe_overrides_and_errors(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: cir\nmodel: instructcir-tiny\nout_dir: x\noptim: {lr: 0.001}\n")
    config = load_recipe(
        recipe, ["optim.lr=3e-4", "data.triplets=[a, b]", "model_overrides.ema=false"]
    )
    assert config.optim.lr == 3e-4 and config.data.triplets == ("a", "b")
    assert config.model_overrides == {"ema": False}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lrr'\] in .*optim"):
        load_recipe(recipe, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="must look like key=value"):
        load_recipe(recipe, ["steps"])


def test_reference_negatives_add_the_references_to_the_loss(tmp_path: Path) -> None:
    from opencir.train.distributed import DistContext
    from opencir.train.tasks import CIRTask, build_model

    torch.manual_seed(0)
    config = _config(tmp_path, model="instructcir-tiny", reference_negatives=True)
    task = CIRTask(config, build_model(config))
    pixels = torch.randn(4, 3, 32, 32)
    tokens = task.model.text_tokenizer()(["make it red", "add a star", "remove it", "bigger"])
    batch = {"reference": pixels, "target": pixels.flip(0), "tokens": tokens}
    outputs = task.embeddings(batch)
    assert len(outputs) == 3
    with_refs = task.loss(outputs, DistContext())
    without = task.loss(outputs[:2], DistContext())
    assert with_refs > without  # the softmax runs over 2B candidates instead of B


@pytest.mark.parametrize(
    ("stage", "model"),
    [("cir", "instructcir-tiny"), ("pretrain", "sum-tiny"), ("cir+pairs", "instructcir-tiny")],
)
def test_grad_accum_gives_the_update_of_the_whole_batch(world, tmp_path, stage, model) -> None:
    """2 micro-batches of 4 give the update of 1 batch of 8, in-batch negatives included.

    The in-batch contrastive loss of 8 examples is not the mean of two losses over 4 (each
    query would meet 4 candidates instead of 8): the trainer caches the micro-batches'
    embeddings, takes the loss over all of them and backpropagates it micro-batch by
    micro-batch, so the logged loss and the weights are those of the whole batch.
    """
    if stage == "cir":  # + the references as negatives: three gathered embeddings per example
        data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
        extra = {"reference_negatives": True, "model_overrides": {"ema_momentum": 0.5}}
    elif stage == "pretrain":  # the CLIP loss also trains its own parameter, the logit scale
        data, extra = DataConfig(pairs=str(world / "images.jsonl")), {}
    else:  # pool negatives from the fixed target's table, plus the image–caption pairs' loss
        stage = "cir"
        data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),),
                          pairs=str(world / "images.jsonl"))  # fmt: skip
        extra = {"pool_negatives": True, "pair_loss_weight": 0.5,
                 "model_overrides": {"ema_momentum": 1.0}}  # fmt: skip
    # AdamW divides by sqrt(v) + eps: at eps=1e-6 it turns float32 rounding in near-zero
    # gradient entries (4+4 and 8 rows sum in another order) into updates of ±lr; a larger
    # eps keeps this a test of the gradients, which agree to about 1e-6
    optim = OptimConfig(lr=1e-3, warmup_steps=1, eps=1e-3)
    base = _config(tmp_path, stage=stage, model=model, steps=3, batch_size=8, data=data,
                   optim=optim, **extra)  # fmt: skip
    split = {
        n: dataclasses.replace(base, grad_accum=n, out_dir=str(tmp_path / f"a{n}")) for n in (1, 2)
    }
    runs = [train(config, progress=False) for config in split.values()]
    torch.testing.assert_close(runs[1].losses, runs[0].losses, rtol=1e-5, atol=1e-6)
    whole, accumulated = (opencir.load(run.final).state_dict() for run in runs)
    assert set(whole) == set(accumulated)
    for name, value in whole.items():
        torch.testing.assert_close(accumulated[name], value, rtol=0, atol=1e-5, msg=name)


def test_grad_accum_reruns_each_micro_batch_with_its_own_dropout_masks(tmp_path) -> None:
    """With dropout on, the gradients are those of the loss under the first pass's masks."""
    from opencir.train.checkpointing import rng_state, set_rng_state
    from opencir.train.distributed import DistContext
    from opencir.train.loop import Trainer

    trainer = Trainer(_config(tmp_path, batch_size=4, grad_accum=2))  # dual-tiny: BERT dropout
    assert any(m.p > 0 for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout))
    tokenize, generator = trainer.task.text_tokenizer(), torch.Generator().manual_seed(1)
    batches = [
        {
            "reference": torch.randn(2, 3, 32, 32, generator=generator),
            "target": torch.randn(2, 3, 32, 32, generator=generator),
            "tokens": tokenize([f"make it {word}" for word in pair]),
        }
        for pair in (("red", "smaller"), ("round", "go left"))
    ]
    before = rng_state()
    trainer._backward(batches)
    accumulated = {
        n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None
    }
    trainer.optimizer.zero_grad(set_to_none=True)
    set_rng_state(before)  # the reference: both micro-batches in one graph, the same masks
    parts = [trainer.task.embeddings(batch) for batch in batches]
    trainer.task.loss(
        tuple(torch.cat(c) for c in zip(*parts, strict=True)), DistContext()
    ).backward()
    assert accumulated.keys() == {
        n for n, p in trainer.model.named_parameters() if p.grad is not None
    }
    for name, param in trainer.model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(
                accumulated[name], param.grad, rtol=1e-4, atol=1e-6, msg=name
            )


def test_pretraining_reads_extra_pair_collections_beside_the_first(world, tmp_path) -> None:
    from opencir.data.worlds import generate_shapes_world
    from opencir.train.provenance import training_records
    from opencir.train.sources import build_dataset

    extra = tmp_path / "xkcd"  # its image ids are the first world's ids again
    generate_shapes_world(extra, n_train=6, n_test=0, n_queries=0, n_val_queries=0, image_size=32,
                          palette="xkcd", progress=False)  # fmt: skip
    config = _config(tmp_path, stage="pretrain", model="sum-dual-tiny", steps=1,
                     data=DataConfig(pairs=str(world / "images.jsonl"),
                                     extra_pairs=(str(extra / "images.jsonl"),)))  # fmt: skip
    dataset, n_pairs, _ = build_dataset(config)
    first = [json.loads(line) for line in (world / "images.jsonl").read_text().splitlines()]
    first = [r for r in first if r["split"] == "train"]
    extra_rows = [json.loads(line) for line in (extra / "images.jsonl").read_text().splitlines()]
    n_first = len(first)
    assert n_pairs == len(dataset) == n_first + 6
    for index, row in ((0, first[0]), (n_first, extra_rows[0])):  # the same id in both
        example = dataset[index]
        assert example["text"] == row["alt_text"]
        with Image.open((extra if index else world) / row["file"]) as image:
            assert np.array_equal(np.asarray(example["image"]), np.asarray(image.convert("RGB")))
    paths = [s["path"] for s in training_records(config).data]
    assert paths == [str(world / "images.jsonl"), str(extra / "images.jsonl")]
    assert len(train(config, progress=False).losses) == 1
    with pytest.raises(ValueError, match=r"set data\.pairs too"):
        DataConfig(extra_pairs=(str(extra / "images.jsonl"),))


def _pair_config(world: Path, tmp_path: Path, name: str, **changes) -> TrainConfig:
    """S1 with a fixed target and pool negatives, plus the world's image–caption pairs."""
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),),
                      pairs=str(world / "images.jsonl"))  # fmt: skip
    settings = {"pool_negatives": True, "model_overrides": {"ema_momentum": 1.0}, **changes}
    return _config(tmp_path, out_dir=str(tmp_path / name), data=data, **settings)


def test_the_pair_loss_adds_the_weighted_clip_loss_of_the_query_towers_pairs(world, tmp_path):
    from opencir.train.data import PAIR_IMAGES, PAIR_TOKENS
    from opencir.train.distributed import DistContext
    from opencir.train.losses import clip_loss
    from opencir.train.tasks import CIRTask, build_model

    torch.manual_seed(0)
    config = _pair_config(world, tmp_path, "run", pair_loss_weight=0.5)
    plain = CIRTask(dataclasses.replace(config, pair_loss_weight=0.0), build_model(config))
    task = CIRTask(config, plain.model)
    task.model.eval()  # no dropout: both passes see the same network
    width = task.model.embed_dim
    table = torch.nn.functional.normalize(torch.randn(6, width), dim=-1)
    task.candidate_table = plain.candidate_table = table
    tokenize = task.model.text_tokenizer()
    captions = ["a red star", "a blue circle", "two squares", "a green star"]
    batch = {
        "reference": torch.randn(4, 3, 32, 32),
        "tokens": tokenize(["make it red", "add a star", "remove it", "bigger"]),
        "target_rows": torch.tensor([0, 1, 2, 3]),
        "reference_rows": torch.tensor([1, 2, 3, 4]),
        "answer_rows": torch.tensor([[0], [1], [2], [3]]),
        PAIR_IMAGES: torch.randn(4, 3, 32, 32),
        PAIR_TOKENS: tokenize(captions),
    }
    outputs = task.embeddings(batch)
    assert len(outputs) == len(plain.embeddings(batch)) + 2
    tower = task.model.query_encoder.tower
    images = torch.nn.functional.normalize(tower.encode_image(batch[PAIR_IMAGES]), dim=-1)
    pair_tokens = batch[PAIR_TOKENS]
    texts = tower.encode_text(pair_tokens["input_ids"], pair_tokens["attention_mask"]).pooled
    texts = torch.nn.functional.normalize(texts, dim=-1)
    torch.testing.assert_close(outputs[-2:], (images, texts))
    pairs = clip_loss(images, texts, images, texts, tower.hf.logit_scale)
    expected = plain.loss(outputs[:-2], DistContext()) + 0.5 * pairs
    torch.testing.assert_close(task.loss(outputs, DistContext()), expected)
    # the logit scale is the backbone's, not trained by the cir stage
    task.loss(outputs, DistContext()).backward()
    assert tower.hf.logit_scale.grad is None
    assert tower.hf.text_projection.weight.grad.abs().sum() > 0


def test_the_pair_loss_resumes_on_the_identical_loss_curve(world, tmp_path) -> None:
    full = train(_pair_config(world, tmp_path, "full", steps=4, pair_loss_weight=1.0),
                 progress=False)  # fmt: skip
    split = _pair_config(world, tmp_path, "split", steps=4, pair_loss_weight=1.0)
    first = train(split, stop_at=2, progress=False)
    second = train(split, resume="latest", progress=False)
    assert first.losses + second.losses == full.losses
    plain = train(_pair_config(world, tmp_path, "plain", steps=4), progress=False)
    assert all(a != b for a, b in zip(full.losses, plain.losses, strict=True))


def test_the_pair_loss_needs_pairs_the_cir_stage_and_an_instructcir_model(world, tmp_path):
    with pytest.raises(ValueError, match=r"reads data\.pairs"):
        _config(tmp_path, pair_loss_weight=1.0)
    with pytest.raises(ValueError, match="to the cir stage"):
        _config(tmp_path, stage="pretrain", pair_loss_weight=1.0,
                data=DataConfig(pairs=str(world / "images.jsonl")))  # fmt: skip
    with pytest.raises(ValueError, match=">= 0"):
        _config(tmp_path, pair_loss_weight=-1.0)
    config = _pair_config(world, tmp_path, "combiner", steps=1, pair_loss_weight=1.0,
                          model="combiner-dual-tiny", pool_negatives=False,
                          model_overrides={})  # fmt: skip
    with pytest.raises(ValueError, match="needs an InstructCIR model"):
        train(config, progress=False)
