"""Sharing checkpoints: loading by Hugging Face repo id from the cache, and the model card."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import opencir
from opencir.data.collections import CollectionSpec
from opencir.data.triplets import Triplet, write_manifest, write_triplets
from opencir.data.worlds import generate_shapes_world
from opencir.index.resolve import canonical_spec
from opencir.models import (
    CardRecords,
    CheckpointError,
    get_model_config,
    load_model,
    update_model_card,
)
from opencir.models.card import CARD_FILE, read_card_records
from opencir.models.hub import is_repo_id
from opencir.models.tokenizer import byte_level_tokenizer
from opencir.train import DataConfig, OptimConfig, TrainConfig, train

REPO = "user/opencir-shapes-s1"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEXTS = ["make it blue", "add a small star", ""]


def _cached(checkpoint: Path, cache: Path, repo: str = REPO) -> Path:
    """Lay ``checkpoint`` out as the Hugging Face cache holds a downloaded repo."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(checkpoint, storage / "snapshots" / COMMIT)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    return storage


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return opencir.create_model("instructcir-tiny").save(tmp_path / "ckpt")


@pytest.fixture
def offline_cache(tmp_path: Path, checkpoint: Path, monkeypatch) -> Path:
    cache = tmp_path / "hf" / "hub"
    _cached(checkpoint, cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_load_by_repo_id_from_the_cache_equals_the_folder(
    variable: str, tmp_path: Path, checkpoint: Path, images: list[Image.Image], monkeypatch
) -> None:
    cache = tmp_path / "hf" / "hub"
    _cached(checkpoint, cache)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(cache if variable == "HF_HUB_CACHE" else cache.parent))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    from_hub, from_dir = opencir.load(REPO), opencir.load(checkpoint)
    assert torch.equal(from_hub.encode_query(images, TEXTS), from_dir.encode_query(images, TEXTS))
    assert torch.equal(from_hub.encode_target(images), from_dir.encode_target(images))
    assert load_model(REPO).fingerprint() == from_dir.fingerprint()


def test_missing_repo_offline_says_what_was_tried(offline_cache: Path) -> None:
    with pytest.raises(CheckpointError) as caught:
        opencir.load("user/not-there")
    message = str(caught.value)
    for part in ("neither a local folder", str(offline_cache), "HF_HUB_OFFLINE", "--local-dir"):
        assert part in message
    with pytest.raises(CheckpointError, match="neither a local folder"):
        load_model("user/not-there")


def test_an_existing_folder_wins_over_a_repo_id(offline_cache: Path, tmp_path: Path) -> None:
    opencir.create_model("sum-tiny").save(tmp_path / REPO)
    assert opencir.load(REPO).config.name == "sum-tiny"
    assert load_model(REPO).config.name == "sum-tiny"


def test_path_spellings_never_reach_the_hub(offline_cache: Path) -> None:
    for spelling in (f"./{REPO}", f"/{REPO}", f"~/{REPO}", f"{REPO}/final"):
        assert not is_repo_id(spelling)
        with pytest.raises(CheckpointError, match=r"config\.json is missing"):
            opencir.load(spelling)
    assert is_repo_id(REPO) and not is_repo_id("sum-tiny") and not is_repo_id("user/a--b")


def test_name_at_repo_id_takes_backbone_weights_from_the_cache(
    offline_cache: Path, tmp_path: Path, images: list[Image.Image]
) -> None:
    backbone = opencir.create_model("sum-tiny").tower.hf
    backbone.save_pretrained(tmp_path / "clip")
    byte_level_tokenizer(get_model_config("sum-tiny").backbone.max_text_length).save_pretrained(
        tmp_path / "clip"
    )
    _cached(tmp_path / "clip", offline_cache, "org/tiny-clip")
    from_hub = load_model("sum-tiny@org/tiny-clip")
    from_dir = load_model(f"sum-tiny@{tmp_path / 'clip'}")
    assert from_hub.config.backbone.pretrained == "org/tiny-clip"
    assert torch.equal(from_hub.encode_query(images, TEXTS), from_dir.encode_query(images, TEXTS))


def test_index_records_a_repo_id_as_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert canonical_spec("sum-tiny@org/tiny-clip") == "sum-tiny@org/tiny-clip"
    assert canonical_spec(REPO) == REPO
    (tmp_path / "org" / "tiny-clip").mkdir(parents=True)
    absolute = (tmp_path / "org" / "tiny-clip").resolve()
    assert canonical_spec("sum-tiny@org/tiny-clip") == f"sum-tiny@{absolute}"


def test_name_at_source_refuses_what_is_neither_folder_nor_repo_id(offline_cache) -> None:
    with pytest.raises(ValueError, match="neither an existing folder nor a Hugging Face repo id"):
        load_model("sum-tiny@./no-such-folder")


def _front_matter(folder: Path) -> dict:
    text = (folder / CARD_FILE).read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_save_writes_a_parseable_card_that_states_unknowns(checkpoint: Path) -> None:
    meta = _front_matter(checkpoint)
    assert meta["library_name"] == "opencir"
    assert "instructcir" in meta["tags"] and "license" not in meta
    assert meta["opencir"]["model"] == "instructcir-tiny"
    text = (checkpoint / CARD_FILE).read_text(encoding="utf-8")
    assert "InstructCIR" in text and "Scaling Prompt Instructed Zero Shot" in text
    assert "Unknown: this checkpoint was saved outside `opencir train`" in text
    assert "Unknown: no training recipe recorded" in text
    assert "## Evaluation results\n\nNone recorded" in text
    assert "## License\n\nUnknown: not stated" in text


def test_loading_ignores_the_card(checkpoint: Path, images: list[Image.Image]) -> None:
    before = opencir.load(checkpoint).encode_target(images)
    (checkpoint / CARD_FILE).write_text("---\n: not yaml [\n")
    assert torch.equal(opencir.load(checkpoint).encode_target(images), before)


def test_card_records_training_data_and_reproduce_command(tmp_path: Path) -> None:
    training = {"stage": "cir", "model": "instructcir-tiny", "steps": 7, "seed": 3}
    data = ({"kind": "generated triplets", "path": "runs/t", "provenance": {"seed": 3}},)
    records = CardRecords(training=training, data=data, license="mit")
    folder = opencir.create_model("instructcir-tiny").save(tmp_path / "ckpt", records)
    meta = _front_matter(folder)
    assert meta["license"] == "mit"
    assert "## License\n\n`mit`." in (folder / CARD_FILE).read_text(encoding="utf-8")
    assert read_card_records(folder) == CardRecords.from_dict(records.to_dict())
    text = (folder / CARD_FILE).read_text(encoding="utf-8")
    assert "opencir train --recipe recipe.yaml" in text and "steps: 7" in text
    assert 'generated triplets `runs/t` — provenance: {"seed": 3}' in text


def _results(benchmark: str, recall: float) -> dict:
    return {
        "benchmark": benchmark, "split": "test", "metrics": {"R@10": recall},
        "protocol": {"exclude_reference": False}, "num_queries": 6, "num_gallery": 40,
        "model_fingerprint": "abc", "rankings": {"q1": ["g1"]},
    }  # fmt: skip


def test_update_model_card_adds_and_replaces_results(checkpoint: Path, tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_results("shapescir", 12.5)))
    update_model_card(checkpoint, results)
    update_model_card(checkpoint, _results("emojicir", 30.0))
    update_model_card(checkpoint, _results("shapescir", 40.25))
    kept = read_card_records(checkpoint).results
    assert [(r["benchmark"], r["metrics"]["R@10"]) for r in kept] == [
        ("emojicir", 30.0),
        ("shapescir", 40.25),
    ]
    assert all("rankings" not in r for r in kept)
    text = (checkpoint / CARD_FILE).read_text(encoding="utf-8")
    assert "### shapescir / test" in text and "| R@10 | 40.25 |" in text


def test_update_model_card_refuses_what_is_not_a_results_file(checkpoint, tmp_path) -> None:
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad\.json must hold a JSON object"):
        update_model_card(checkpoint, tmp_path / "bad.json")
    with pytest.raises(ValueError, match="opencir eval --out"):
        update_model_card(checkpoint, {"metrics": {}})


def test_trained_checkpoint_card_records_recipe_and_triplet_provenance(tmp_path: Path) -> None:
    world = tmp_path / "shapes"
    generate_shapes_world(
        world, n_train=12, n_test=12, n_queries=1, image_size=32, progress=False, n_val_queries=1
    )
    rows = [json.loads(line) for line in (world / "images.jsonl").read_text().splitlines()]
    keys = [r["id"] for r in rows if r["split"] == "train"]
    folder = tmp_path / "gen"
    pairs = enumerate(itertools.pairwise(keys))
    write_triplets(
        [Triplet(f"t{i}", a, b, f"t {i}") for i, (a, b) in pairs], folder / "triplets.jsonl"
    )
    run = {"seed": 5, "writer": {"kind": "template"}}
    write_manifest(folder, CollectionSpec(path=str(world / "images.jsonl")).to_dict(), run=run)
    config = TrainConfig(
        stage="cir", model="instructcir-dual-tiny", out_dir=str(tmp_path / "run"), steps=1,
        batch_size=4, tensorboard=False, optim=OptimConfig(warmup_steps=1),
        data=DataConfig(triplets=(str(folder),)),
    )  # fmt: skip
    final = train(config, progress=False).final
    records = read_card_records(final)
    assert records.training["stage"] == "cir" and records.training["steps"] == 1
    assert records.data[0]["kind"] == "generated triplets"
    assert records.data[0]["provenance"]["run"] == run
    text = (final / CARD_FILE).read_text(encoding="utf-8")
    assert "opencir train --recipe recipe.yaml" in text and "- stage: `cir`, 1 steps" in text
