"""Model registry in the open_clip/timm manner.

Every name is ``<method>-<backbone>``: methods come from ``configs/methods/*.json`` and
backbones from ``configs/backbones/*.json``, so each method is available on each backbone
(``instructcir-tiny``, ``instructcir-vit-l-14``, ``sum-siglip-b-16``, ...).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from opencir.models.backbones import DualTower
from opencir.models.base import CIRModel
from opencir.models.baselines import Combiner, ImageOnly, ImageTextSum, TextOnly
from opencir.models.config import BackboneConfig, FusionConfig, ModelConfig, PreprocessConfig
from opencir.models.loading import build_tower, load_tokenizer, load_tower
from opencir.models.reformulation import InstructCIR

METHOD_CLASSES: dict[str, type[CIRModel]] = {
    "instructcir": InstructCIR,
    "image-only": ImageOnly,
    "text-only": TextOnly,
    "sum": ImageTextSum,
    "combiner": Combiner,
}


@cache
def _configs(kind: str) -> dict[str, dict[str, Any]]:
    folder = resources.files("opencir.models") / "configs" / kind
    return {
        entry.name.removesuffix(".json"): json.loads(entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


def list_backbones() -> list[str]:
    return sorted(_configs("backbones"))


def list_methods() -> list[str]:
    return sorted(_configs("methods"))


def list_models() -> list[str]:
    """All registered model names, ``<method>-<backbone>``."""
    return [f"{m}-{b}" for m in list_methods() for b in list_backbones()]


def split_name(name: str) -> tuple[str, str]:
    """``"image-only-vit-l-14"`` → ``("image-only", "vit-l-14")``."""
    for method in sorted(list_methods(), key=len, reverse=True):
        backbone = name.removeprefix(f"{method}-")
        if backbone != name and backbone in _configs("backbones"):
            return method, backbone
    raise ValueError(
        f"unknown model name {name!r}; names are <method>-<backbone> with methods "
        f"{list_methods()} and backbones {list_backbones()} (see opencir.list_models())"
    )


def backbone_hub_id(backbone: str) -> str | None:
    """The hub id of the paper weights for a registered backbone (``None`` for tiny ones)."""
    return _configs("backbones")[backbone].get("hub_id")


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """The registered configuration for ``name`` with optional overrides applied."""
    method, backbone = split_name(name)
    spec = _configs("backbones")[backbone]
    preprocess = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["preprocess"].items()}
    config = ModelConfig(
        name=name,
        method=method,
        backbone=BackboneConfig(
            family=spec["family"],
            architecture=spec["architecture"],
            max_text_length=spec["max_text_length"],
            preprocess=PreprocessConfig(**preprocess),
        ),
        fusion=FusionConfig(**_configs("methods")[method].get("fusion", {})),
    )
    return config.with_overrides(**overrides) if overrides else config


def build_model(config: ModelConfig, tower: DualTower, tokenizer: Any) -> CIRModel:
    """Instantiate the method class of ``config`` around a built tower."""
    if config.method not in METHOD_CLASSES:
        raise ValueError(
            f"unknown method {config.method!r}; expected one of {list(METHOD_CLASSES)}"
        )
    return METHOD_CLASSES[config.method](config, tower, tokenizer)


def create_model(name: str, pretrained: str | bool | None = None, **overrides: Any) -> CIRModel:
    """Create a registered model.

    ``pretrained``: ``None``/``False`` → random weights from the architecture config;
    a hub id or a local ``save_pretrained`` directory → those backbone weights;
    ``True`` → the backbone's registered hub id (e.g. ``openai/clip-vit-large-patch14``).
    Overrides replace fusion/backbone fields, e.g. ``ema=False, cross_attention=False``.
    """
    config = get_model_config(name, **overrides)
    if pretrained is True:
        pretrained = backbone_hub_id(split_name(name)[1])
        if pretrained is None:
            raise ValueError(f"backbone of {name!r} has no registered pretrained weights")
    if pretrained:
        tower, backbone = load_tower(config.backbone, str(pretrained))
    else:
        tower, backbone = build_tower(config.backbone)
    config = ModelConfig(config.name, config.method, backbone, config.fusion)
    tokenizer = load_tokenizer(backbone, str(pretrained) if pretrained else None)
    return build_model(config, tower, tokenizer)


def load_model(spec: str, pretrained: str | None = None) -> CIRModel:
    """The model a ``--model`` argument names, in eval mode.

    ``DIR`` — an OpenCIR checkpoint written by ``model.save``; ``NAME@DIR`` — a registered
    model with backbone weights from a ``save_pretrained`` directory (same as
    ``pretrained=DIR``); ``NAME`` — a registered model (random weights unless
    ``pretrained`` is given).
    """
    from pathlib import Path

    from opencir.models.checkpoint import is_checkpoint, load

    name, sep, directory = str(spec).partition("@")
    if sep:
        if pretrained is not None:
            raise ValueError(f"model {spec!r} already names its weights; drop pretrained")
        if not Path(directory).expanduser().is_dir():
            raise ValueError(f"model {spec!r}: backbone weights folder {directory} does not exist")
        return create_model(name, pretrained=str(Path(directory).expanduser().resolve())).eval()
    if is_checkpoint(spec):
        return load(spec).eval()
    if Path(spec).is_dir():
        raise ValueError(
            f"{spec} is a directory but not an OpenCIR checkpoint (no config.json with "
            "format 'opencir-checkpoint'); for Hugging Face backbone weights use NAME@DIR, "
            "e.g. instructcir-vit-l-14@/models/clip-vit-large-patch14"
        )
    if "/" in spec or "\\" in spec:
        raise ValueError(
            f"model {spec!r} is neither a checkpoint folder (no such folder) nor a registered "
            "model name; see `opencir models`"
        )
    return create_model(spec, pretrained=pretrained).eval()
