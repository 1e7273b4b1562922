"""Carry a ViT's weights to a larger input with the same token grid.

A tower trained on 64-px images with 8-px patches becomes one for 128-px images with 16-px
patches (any integer factor ``k``): the grid, the position embeddings and every transformer
weight stay as they are, and each patch-embedding weight is spread evenly over the ``k × k``
pixels that now stand where one stood (divided by ``k²``). On an image whose ``k × k`` pixel
blocks are constant (a nearest-neighbour upscale) the new tower gives exactly the old tower's
tokens; on an image rendered at the larger size it starts from what the old tower saw of the
block averages, and further training can use the detail inside each block.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from opencir.models.backbones import DualTower, get_family
from opencir.models.config import BackboneConfig

GRID_KEYS = ("patch_size", "image_size")


def input_scale(have: dict[str, Any], want: dict[str, Any]) -> int | None:
    """``k`` when ``want`` is ``have`` with its vision patch and image size times ``k``, else None.

    Both are architecture dicts; ``want`` may list fewer keys than ``have`` (a registered
    backbone spec against a checkpoint's full config): only the keys it lists are compared.
    """
    have_vision, want_vision = have.get("vision_config", {}), want.get("vision_config", {})
    sizes = [(have_vision.get(key), want_vision.get(key)) for key in GRID_KEYS]
    if any(not isinstance(old, int) or not isinstance(new, int) for old, new in sizes):
        return None
    (old_patch, new_patch), (old_image, new_image) = sizes
    if new_patch % old_patch or new_image * old_patch != old_image * new_patch:
        return None
    scale = new_patch // old_patch
    rest = {key: value for key, value in want_vision.items() if key not in GRID_KEYS}
    if scale < 1 or not _listed_keys_equal(have, {**want, "vision_config": rest}):
        return None
    return scale


def _listed_keys_equal(have: dict[str, Any], want: dict[str, Any]) -> bool:
    """Every key ``want`` lists (into nested dicts) holds the same value in ``have``."""
    for key, value in want.items():
        if isinstance(value, dict) and isinstance(have.get(key), dict):
            if not _listed_keys_equal(have[key], value):
                return False
        elif have.get(key) != value:
            return False
    return True


def spread_patch_weight(weight: torch.Tensor, scale: int) -> torch.Tensor:
    """An ``(out, in, p, p)`` patch kernel as the ``(out, in, kp, kp)`` one of block averages."""
    if weight.dim() != 4:
        shape = tuple(weight.shape)
        raise ValueError(f"a patch-embedding kernel has 4 dimensions, got shape {shape}")
    spread = weight.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    return spread / scale**2


def regrid_tower(
    tower: DualTower, backbone: BackboneConfig, target: BackboneConfig
) -> tuple[DualTower, BackboneConfig]:
    """``tower`` (built from ``backbone``) carried to ``target``'s larger input, same grid.

    Returns the new tower and ``backbone`` with the new input size, patch size and
    preprocessing (``target``'s); raises ``ValueError`` naming both sizes when ``target`` is
    not ``backbone`` at a larger input with the same grid.
    """
    scale = input_scale(backbone.architecture, target.architecture)
    if scale is None:
        raise ValueError(_mismatch(backbone, target))
    architecture = copy.deepcopy(backbone.architecture)
    for key in GRID_KEYS:
        architecture["vision_config"][key] = target.architecture["vision_config"][key]
    family = get_family(backbone.family)
    hf = family.hf_model(family.hf_config(**architecture))
    state = tower.hf.state_dict()
    kernels = [name for name in state if name.endswith("patch_embedding.weight")]
    if len(kernels) != 1:
        raise ValueError(f"expected one patch-embedding kernel in the tower, found {kernels}")
    state[kernels[0]] = spread_patch_weight(state[kernels[0]], scale)
    hf.load_state_dict(state, strict=True)
    config = dataclasses.replace(backbone, architecture=architecture, preprocess=target.preprocess)
    return family.tower(hf), config


def _mismatch(backbone: BackboneConfig, target: BackboneConfig) -> str:
    def grid(architecture: dict[str, Any]) -> str:
        vision = architecture.get("vision_config", {})
        return f"{vision.get('image_size')} px in {vision.get('patch_size')}-px patches"

    return (
        f"cannot carry a backbone of {grid(backbone.architecture)} to one of "
        f"{grid(target.architecture)}: the target must be the same architecture with its "
        "patch and image size multiplied by one integer (the token grid unchanged)"
    )
