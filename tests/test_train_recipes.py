"""Recipes: every value is checked against its field's type at load time, from any source."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from opencir.train import DataConfig, TrainConfig, load_recipe
from opencir.train.config import config_from_dict

RECIPES = sorted((Path(__file__).parent.parent / "recipes").rglob("*.yaml"))
BASE = "stage: cir\nmodel: instructcir-tiny\nout_dir: x\n"


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(BASE)
    return path


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_shipped_recipe_loads(path: Path) -> None:
    assert isinstance(load_recipe(path), TrainConfig)


def test_the_recipes_are_found() -> None:
    assert len(RECIPES) >= 7


def test_a_run_config_reads_back_as_the_same_config(recipe: Path) -> None:
    config = load_recipe(recipe, ["optim.lr_scale={text: 0.1}", "freeze=[a, b]", "steps=7"])
    dumped = yaml.safe_load(yaml.safe_dump(config.to_dict()))  # as a run writes config.yaml
    assert config_from_dict(dumped) == config
    assert config.optim.betas == (0.9, 0.98) and config.optim.lr_scale == {"text": 0.1}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps=1.5", r"steps must be an integer, got 1\.5 \(float\)"),
        ("steps=many", r"steps must be an integer, got 'many' \(str\)"),
        ("steps=true", r"steps must be an integer, got True \(bool\)"),
        ("optim.lr=fast", r"optim\.lr must be a number, got 'fast'"),
        ("optim.betas=[0.9]", r"optim\.betas must be a list of 2 values"),
        ("optim.lr_scale={text: slow}", r"optim\.lr_scale\.text must be a number"),
        ("tensorboard=maybe", r"tensorboard must be true or false, got 'maybe'"),
        ("data.triplets=[a, 3]", r"data\.triplets\[1\] must be a string, got 3 \(int\)"),
        ("data.max_triplets=[1]", r"data\.max_triplets must be an integer or null, got \[1\]"),
        ("data=triplets.jsonl", r"data must be a section of key: value pairs"),
        ("out_dir=2024", r"out_dir must be a string, got 2024 \(int\)"),
        ("model_overrides=[ema]", r"model_overrides must be a mapping"),
    ],
)
def test_a_value_of_the_wrong_type_names_key_value_and_type(
    recipe: Path, override: str, message: str
) -> None:
    with pytest.raises(ValueError, match=rf"recipe .*r\.yaml: {message}"):
        load_recipe(recipe, [override])


def test_the_file_is_checked_like_the_overrides(recipe: Path) -> None:
    recipe.write_text(BASE + "steps: 1.5\n")
    with pytest.raises(ValueError, match=r"r\.yaml: steps must be an integer, got 1\.5"):
        load_recipe(recipe)


def test_numbers_written_as_strings_still_parse(recipe: Path) -> None:
    recipe.write_text(BASE + "steps: 1e3\noptim: {lr: 3.0e-4, grad_clip: null}\n")
    config = load_recipe(recipe, ["temperature=5e-2", "data.max_triplets=100"])
    assert config.steps == 1000 and config.optim.lr == 3e-4 and config.optim.grad_clip is None
    assert config.temperature == 0.05 and config.data.max_triplets == 100


def test_one_path_where_a_list_is_expected_is_a_list_of_one(recipe: Path) -> None:
    config = load_recipe(recipe, ["data.triplets=/data/run 1/triplets", "freeze=text_model"])
    assert config.data.triplets == ("/data/run 1/triplets",)
    assert config.freeze == ("text_model",)


def test_an_empty_section_means_its_defaults(recipe: Path) -> None:
    recipe.write_text(BASE + "data:\n  # triplets come from the command line\n")
    assert load_recipe(recipe).data == DataConfig()


def test_missing_required_keys_are_named(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: cir\n")
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['model', 'out_dir'\]"):
        load_recipe(recipe)


def test_invalid_yaml_names_the_file_and_line(recipe: Path) -> None:
    with pytest.raises(ValueError, match=r"override 'data\.triplets=\[a' is not valid YAML"):
        load_recipe(recipe, ["data.triplets=[a"])
    recipe.write_text(BASE + "optim:\n  lr: 0.1\n   warmup_steps: 10\n")
    with pytest.raises(ValueError, match=r"recipe .*r\.yaml is not valid YAML at line 6"):
        load_recipe(recipe)


def test_keep_checkpoints_below_one_is_refused(recipe: Path) -> None:
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1, got 0"):
        load_recipe(recipe, ["keep_checkpoints=0"])
    with pytest.raises(ValueError, match="keep_checkpoints must be >= 1, got 0"):
        dataclasses.replace(load_recipe(recipe), keep_checkpoints=0)
