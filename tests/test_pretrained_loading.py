"""Backbones saved with ``save_pretrained`` load back through the real ``pretrained=DIR`` path."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import CLIPModel, SiglipModel

import opencir
from opencir.models.backbones import get_family
from opencir.models.registry import get_model_config
from opencir.models.tokenizer import byte_level_tokenizer


def _save_hf_backbone(name: str, directory) -> torch.nn.Module:
    """A random tiny HF model with tokenizer and preprocessor config, as a hub snapshot holds."""
    backbone = get_model_config(name).backbone
    family = get_family(backbone.family)
    hf = family.hf_model(family.hf_config(**backbone.architecture)).eval()
    hf.save_pretrained(directory)
    byte_level_tokenizer(backbone.max_text_length).save_pretrained(directory)
    pre = backbone.preprocess
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": pre.size, "width": pre.size},
                "do_center_crop": pre.resize == "shortest_edge",
                "image_mean": list(pre.mean),
                "image_std": list(pre.std),
                "resample": 3,
            }
        )
    )
    return hf


@pytest.mark.parametrize(
    ("name", "hf_class"), [("sum-tiny", CLIPModel), ("image-only-siglip-tiny", SiglipModel)]
)
def test_save_pretrained_directory_loads_through_real_path(name, hf_class, tmp_path) -> None:
    hf = _save_hf_backbone(name, tmp_path / "backbone")
    model = opencir.create_model(name, pretrained=str(tmp_path / "backbone")).eval()
    assert isinstance(model.tower.hf, hf_class)
    assert model.config.backbone.pretrained == str(tmp_path / "backbone")
    for key, value in hf.state_dict().items():
        assert torch.equal(model.tower.hf.state_dict()[key], value), key
    image = Image.new("RGB", (48, 40), (10, 200, 30))
    with torch.no_grad():
        expected = hf.get_image_features(pixel_values=model.preprocess([image]))
    expected = getattr(expected, "pooler_output", expected)
    torch.testing.assert_close(
        model.encode_target([image]),
        torch.nn.functional.normalize(expected, dim=-1),
        rtol=1e-5,
        atol=1e-5,
    )


def test_instructcir_from_pretrained_dir_then_checkpoint_round_trip(tmp_path) -> None:
    _save_hf_backbone("instructcir-tiny", tmp_path / "backbone")
    model = opencir.create_model("instructcir-tiny", pretrained=str(tmp_path / "backbone")).eval()
    model.save(tmp_path / "ckpt")
    loaded = opencir.load(tmp_path / "ckpt")
    image = [Image.new("RGB", (32, 32), (200, 30, 30))]
    assert torch.equal(loaded.encode_query(image, ["blue"]), model.encode_query(image, ["blue"]))


def test_directory_without_config_is_refused(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(opencir.PretrainedNotAvailableError, match=r"has no config\.json"):
        opencir.create_model("sum-tiny", pretrained=str(tmp_path / "empty"))
