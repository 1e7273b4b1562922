"""Pretraining's object-level objectives: hard negative captions and the region loss."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

from opencir.data.worlds.shapes import COLOURS, Obj, binding_swap, make_scene, object_regions
from opencir.train import DataConfig, OptimConfig, TrainConfig, train
from opencir.train.distributed import DistContext
from opencir.train.losses import clip_loss, region_caption_loss, region_embeddings, region_weights

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "miniature"


def _scene_captions() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scene_captions", RECIPES / "scene_captions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def captioned_world(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny world, copied, with ``alt_text_swapped`` and ``regions`` written."""
    root = tmp_path_factory.mktemp("captioned") / "shapes"
    shutil.copytree(world, root)
    _scene_captions().write(root)
    return root


def _pretrain(tmp_path: Path, data: DataConfig, **changes) -> TrainConfig:
    settings = {
        "stage": "pretrain", "model": "sum-dual-tiny", "out_dir": str(tmp_path / "run"),
        "steps": 3, "batch_size": 8, "checkpoint_every": 10, "log_every": 1,
        "tensorboard": False, "data": data, "optim": OptimConfig(lr=1e-3, warmup_steps=1),
    }  # fmt: skip
    return TrainConfig(**{**settings, **changes})


# -------------------------------------------------------------------- the captions themselves


def _bag(scene) -> tuple[list[str], list[str], list[str]]:
    return (
        sorted(o.colour for o in scene),
        sorted(o.shape for o in scene),
        [o.position for o in scene],
    )


def test_a_binding_swap_keeps_colours_shapes_and_places_but_not_the_scene() -> None:
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 5)
        cells = rng.sample(["top left", "top", "top right", "left", "center", "right"], n)
        scene = make_scene(
            [
                Obj(rng.choice(["circle", "star"]), rng.choice(["red", "blue"]), "small", c)
                for c in cells
            ]
        )
        swapped = binding_swap(scene, rng)
        assert swapped != scene
        if len({o.colour for o in scene}) > 1:  # two colours trade places: same bags
            assert _bag(swapped) == _bag(scene)
        else:  # one colour: one object recoloured
            changed = [(a, b) for a, b in zip(scene, swapped, strict=True) if a != b]
            assert len(changed) == 1 and changed[0][1].colour in set(COLOURS) - {
                changed[0][0].colour
            }


def test_a_swap_prefers_objects_of_different_shapes() -> None:
    scene = make_scene([
        Obj("circle", "red", "small", "top left"), Obj("circle", "blue", "small", "top"),
        Obj("star", "red", "large", "center"),
    ])  # fmt: skip
    for seed in range(20):
        swapped = binding_swap(scene, random.Random(seed))
        star = next(o for o in swapped if o.shape == "star")
        assert star.colour == "blue"  # only the blue circle and the red star differ in both


def test_a_shape_change_changes_one_shape_only() -> None:
    from opencir.data.worlds.shapes import shape_change

    rng = random.Random(1)
    scene = make_scene(
        [Obj("circle", "red", "small", "top left"), Obj("star", "blue", "large", "top")]
    )
    for _ in range(50):
        changed = [(a, b) for a, b in zip(scene, shape_change(scene, rng), strict=True) if a != b]
        assert len(changed) == 1
        before, after = changed[0]
        assert after.shape != before.shape and after._replace(shape=before.shape) == before


def test_object_regions_are_the_grid_cells_with_placeless_captions() -> None:
    scene = make_scene(
        [Obj("hexagon", "red", "large", "bottom right"), Obj("star", "pink", "small", "top")]
    )
    regions = object_regions(scene)
    assert regions == [
        {"box": [0.333333, 0.0, 0.666667, 0.333333], "caption": "a small pink star"},
        {"box": [0.666667, 0.666667, 1.0, 1.0], "caption": "a large red hexagon"},
    ]


def test_writing_the_captions_is_repeatable(captioned_world: Path) -> None:
    before = (captioned_world / "images.jsonl").read_text()
    _scene_captions().write(captioned_world)
    assert (captioned_world / "images.jsonl").read_text() == before
    for row in map(json.loads, before.splitlines()):
        scene = make_scene([Obj(**o) for o in row["attributes"]["objects"]])
        assert row["regions"] == object_regions(scene)
        assert row["alt_text_swapped"] != row["alt_text"]
        assert row["alt_text_negatives"][0] == row["alt_text_swapped"]
        reshaped = row["alt_text_negatives"][1]
        assert reshaped != row["alt_text"] and len(reshaped) > 0


# ------------------------------------------------------------------------------------ losses


def test_region_weights_average_the_patches_whose_centres_fall_in_the_box() -> None:
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 1.0, 0.5], [0.6, 0.6, 0.61, 0.61]])
    weights = region_weights(16, boxes)  # a 4×4 grid: centres at 1/8, 3/8, 5/8, 7/8
    grid = weights.view(3, 4, 4)
    assert torch.equal(
        grid[0] > 0, torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]).bool()
    )
    assert torch.equal(
        grid[1] > 0, torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]).bool()
    )
    assert grid[2].nonzero().tolist() == [[2, 2]]  # no centre inside: the patch under its own
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    with pytest.raises(ValueError, match="square grid"):
        region_weights(15, boxes)


def test_region_embeddings_pool_their_own_image() -> None:
    patches = torch.randn(2, 16, 8)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.25, 0.25]])
    pooled = region_embeddings(patches, boxes, torch.tensor([1, 0]))
    torch.testing.assert_close(pooled[0], F.normalize(patches[1].mean(0), dim=0))
    torch.testing.assert_close(pooled[1], F.normalize(patches[0, 0], dim=0))


def test_the_region_loss_is_a_softmax_over_the_distinct_captions() -> None:
    regions, captions = (
        F.normalize(torch.randn(5, 8), dim=-1),
        F.normalize(torch.randn(3, 8), dim=-1),
    )
    ids, scale = torch.tensor([0, 2, 2, 1, 0]), torch.tensor(2.0)
    logits = scale.exp() * regions @ captions.T
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(5), ids].mean()
    torch.testing.assert_close(region_caption_loss(regions, captions, ids, scale), expected)


def test_negative_captions_join_only_the_image_to_text_softmax() -> None:
    images, texts = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    negatives, scale = F.normalize(torch.randn(4, 8), dim=-1), torch.tensor(1.5)
    plain = clip_loss(images, texts, images, texts, scale)
    with_negatives = clip_loss(images, texts, images, texts, scale, negative_texts=negatives)
    labels = torch.arange(4)
    image_to_text = F.cross_entropy(scale.exp() * images @ torch.cat([texts, negatives]).T, labels)
    text_to_image = F.cross_entropy(scale.exp() * texts @ images.T, labels)
    torch.testing.assert_close(with_negatives, (image_to_text + text_to_image) / 2)
    assert with_negatives > plain  # more candidates in one direction, none in the other


# -------------------------------------------------------------------------- in the trainer


def test_a_batch_carries_each_pairs_negative_caption_and_regions(captioned_world, tmp_path) -> None:
    from opencir.train.data import REGION_BOXES, REGION_CAPTION_IDS, REGION_IMAGES, REGION_TOKENS
    from opencir.train.loop import Trainer
    from opencir.train.sources import build_dataset

    data = DataConfig(
        pairs=str(captioned_world / "images.jsonl"),
        negative_caption_field="alt_text_swapped",
        region_field="regions",
    )
    trainer = Trainer(_pretrain(tmp_path, data, region_loss_weight=0.5))
    batch = next(trainer._loader())
    rows = [
        json.loads(line) for line in (captioned_world / "images.jsonl").read_text().splitlines()
    ]
    examples = [build_dataset(trainer.config)[0][i] for i in range(3)]
    assert [e["negative_captions"] for e in examples] == [
        [next(r["alt_text_swapped"] for r in rows if r["alt_text"] == e["text"])] for e in examples
    ]
    n_regions = len(batch[REGION_IMAGES])
    assert batch[REGION_BOXES].shape == (n_regions, 4)
    assert int(batch[REGION_CAPTION_IDS].max()) + 1 == batch[REGION_TOKENS]["input_ids"].shape[0]
    outputs = trainer.task.embeddings(batch)
    assert [o.shape[0] for o in outputs] == [
        8,
        8,
        8,
        n_regions,
        len(batch[REGION_TOKENS]["input_ids"]),
        n_regions,
    ]
    both = trainer.task.loss(outputs, DistContext())
    without_regions = dataclasses.replace(
        trainer.config, region_loss_weight=0.0, data=dataclasses.replace(data, region_field=None)
    )
    trainer.task.config = without_regions
    assert both > trainer.task.loss(outputs[:3], DistContext())


def test_the_region_loss_teaches_patches_their_captions(captioned_world, tmp_path) -> None:
    """A few steps of the region loss alone lower it on the batches it trains on."""
    data = DataConfig(pairs=str(captioned_world / "images.jsonl"), region_field="regions")
    config = _pretrain(tmp_path, data, steps=12, region_loss_weight=1.0)
    losses = train(config, progress=False).losses
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3])


def test_negative_captions_and_mined_pairs_train_with_grad_accum(captioned_world, tmp_path) -> None:
    """Two micro-batches give the whole batch's loss when the negative captions (two per
    pair) and the mined pairs (two rows per pair) make columns of other lengths than the
    batch."""
    data = DataConfig(pairs=str(captioned_world / "images.jsonl"),
                      negative_caption_field="alt_text_negatives")  # fmt: skip
    optim = OptimConfig(lr=1e-3, warmup_steps=1, eps=1e-3)
    # sum-tiny: no dropout, so the two partitions of the batch draw the same network
    base = _pretrain(tmp_path, data, model="sum-tiny", hard_negatives=1, optim=optim)
    runs = [
        train(
            dataclasses.replace(base, grad_accum=n, out_dir=str(tmp_path / f"a{n}")), progress=False
        )
        for n in (1, 2)
    ]
    torch.testing.assert_close(runs[1].losses, runs[0].losses, rtol=1e-5, atol=1e-6)


def test_bad_settings_and_data_are_refused(captioned_world, world, tmp_path) -> None:
    pairs = str(captioned_world / "images.jsonl")
    with pytest.raises(ValueError, match="go together"):
        _pretrain(tmp_path, DataConfig(pairs=pairs, region_field="regions"))
    with pytest.raises(ValueError, match="go together"):
        _pretrain(tmp_path, DataConfig(pairs=pairs), region_loss_weight=1.0)
    with pytest.raises(ValueError, match="grad_accum: 1"):
        _pretrain(
            tmp_path,
            DataConfig(pairs=pairs, region_field="regions"),
            region_loss_weight=1.0,
            grad_accum=2,
        )
    with pytest.raises(ValueError, match="apply to the pretrain stage"):
        data = DataConfig(triplets=("x",), negative_caption_field="alt_text_swapped")
        _pretrain(tmp_path, data, stage="cir", model="instructcir-dual-tiny")
    plain = _pretrain(
        tmp_path,
        DataConfig(pairs=str(world / "images.jsonl"), negative_caption_field="alt_text_swapped"),
    )
    with pytest.raises(ValueError, match=r"'alt_text_swapped'.* lack it"):
        train(plain, progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(captioned_world, broken)
    rows = [json.loads(line) for line in (broken / "images.jsonl").read_text().splitlines()]
    next(r for r in rows if r["split"] == "train")["alt_text_negatives"] = ["fine", 3]
    (broken / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bad = DataConfig(
        pairs=str(broken / "images.jsonl"), negative_caption_field="alt_text_negatives"
    )
    with pytest.raises(ValueError, match="expected a caption or a list of them"):
        train(_pretrain(tmp_path, bad), progress=False)


def test_malformed_regions_are_named() -> None:
    from opencir.train.data import parse_regions

    assert parse_regions([{"box": [0, 0, 0.5, 1], "caption": "a red circle"}], "x") == [
        ((0.0, 0.0, 0.5, 1.0), "a red circle")
    ]
    malformed = (
        {"box": [0.5, 0, 0.4, 1], "caption": "c"}, {"box": [0, 0, 1, 1.2], "caption": "c"},
        {"box": [0, 0, 1], "caption": "c"}, {"box": [0, 0, 1, 1], "caption": ""}, "box",
    )  # fmt: skip
    for bad in malformed:
        with pytest.raises(ValueError, match="region of image 7"):
            parse_regions([bad], "image 7")
    with pytest.raises(ValueError, match="expected a list"):
        parse_regions({"box": [0, 0, 1, 1]}, "image 7")
