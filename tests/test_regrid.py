"""A tower carried to a larger input at the same token grid (opencir.models.regrid)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import opencir
from opencir.models.loading import build_tower
from opencir.models.registry import get_model_config
from opencir.models.regrid import input_scale, regrid_tower, spread_patch_weight


def _larger(backbone, scale: int):
    """``backbone`` with its vision patch and image size times ``scale``."""
    architecture = copy.deepcopy(backbone.architecture)
    vision = architecture["vision_config"]
    vision["patch_size"] *= scale
    vision["image_size"] *= scale
    preprocess = dataclasses.replace(backbone.preprocess, size=vision["image_size"])
    return dataclasses.replace(backbone, architecture=architecture, preprocess=preprocess)


def test_spread_kernel_on_a_nearest_upscale_gives_the_same_patch_response() -> None:
    weight = torch.randn(5, 3, 4, 4)
    pixels = torch.randn(2, 3, 4, 4)
    spread = spread_patch_weight(weight, 3)
    assert spread.shape == (5, 3, 12, 12)
    upscaled = F.interpolate(pixels, scale_factor=3, mode="nearest")
    torch.testing.assert_close(F.conv2d(upscaled, spread), F.conv2d(pixels, weight))
    with pytest.raises(ValueError, match="4 dimensions"):
        spread_patch_weight(torch.randn(5, 3, 4), 2)


@pytest.mark.parametrize("scale", [2, 3])
def test_regridded_tower_sees_a_nearest_upscale_as_the_old_tower_sees_the_image(scale) -> None:
    backbone = get_model_config("sum-dual-tiny").backbone
    tower, _ = build_tower(backbone)
    tower.hf.eval()
    target = _larger(backbone, scale)
    new_tower, config = regrid_tower(tower, backbone, target)
    new_tower.hf.eval()
    assert config.architecture["vision_config"]["patch_size"] == 8 * scale
    assert config.preprocess.size == 32 * scale
    assert config.architecture["text_config"] == backbone.architecture["text_config"]
    pixels = torch.randn(2, 3, 32, 32)
    upscaled = F.interpolate(pixels, scale_factor=scale, mode="nearest")
    with torch.no_grad():
        torch.testing.assert_close(
            new_tower.encode_image(upscaled), tower.encode_image(pixels), atol=1e-5, rtol=1e-4
        )


def test_input_scale_accepts_only_the_same_architecture_on_the_same_grid() -> None:
    backbone = get_model_config("sum-dual-tiny").backbone
    have = backbone.architecture
    assert input_scale(have, _larger(backbone, 2).architecture) == 2
    assert input_scale(have, have) == 1
    smaller = copy.deepcopy(have)
    smaller["vision_config"].update(patch_size=4, image_size=16)
    assert input_scale(have, smaller) is None
    other_grid = copy.deepcopy(_larger(backbone, 2).architecture)
    other_grid["vision_config"]["image_size"] = 32  # 16-px patches on 32 px: a 2×2 grid
    assert input_scale(have, other_grid) is None
    wider = copy.deepcopy(_larger(backbone, 2).architecture)
    wider["vision_config"]["hidden_size"] = 128
    assert input_scale(have, wider) is None
    other_text = copy.deepcopy(_larger(backbone, 2).architecture)
    other_text["text_config"]["num_hidden_layers"] = 3
    assert input_scale(have, other_text) is None
    larger_image = {**have, "vision_config": {**have["vision_config"], "image_size": 64}}
    target = dataclasses.replace(backbone, architecture=larger_image)
    with pytest.raises(ValueError, match="32 px in 8-px patches to one of 64 px in 8-px"):
        regrid_tower(build_tower(backbone)[0], backbone, target)


def test_a_64px_checkpoint_starts_the_128px_miniature_backbone(tmp_path) -> None:
    source = opencir.create_model("sum-vit-mini-minilm").eval()
    source.save(tmp_path / "ckpt")
    model = opencir.create_model(
        "instructcir-vit-mini-minilm-128", pretrained=str(tmp_path / "ckpt")
    ).eval()
    backbone = model.config.backbone
    assert backbone.preprocess.size == 128
    assert backbone.architecture["vision_config"]["patch_size"] == 16
    assert backbone.pretrained == str(tmp_path / "ckpt")
    pixels = torch.randn(2, 3, 64, 64)
    upscaled = F.interpolate(pixels, scale_factor=2, mode="nearest")
    with torch.no_grad():
        torch.testing.assert_close(
            model.query_encoder.tower.encode_image(upscaled),
            source.tower.encode_image(pixels),
            atol=1e-5,
            rtol=1e-4,
        )
    model.save(tmp_path / "s1")
    reloaded = opencir.load_model(str(tmp_path / "s1"))
    assert reloaded.config.backbone.architecture["vision_config"]["image_size"] == 128
