"""Model registry in the open_clip/timm manner.

Every name is ``<method>-<backbone>``: methods come from ``configs/methods/*.json`` and
dual-encoder backbones from ``configs/backbones/*.json``, so each of those methods is
available on each backbone (``instructcir-tiny``, ``instructcir-vit-l-14``,
``sum-siglip-b-16``, ...). A method may name another backbone folder: the S2 ``mllm``
method pairs with the multimodal LLMs of ``configs/mllm/*.json`` (``mllm-tiny``,
``mllm-llava-1.5-7b``, ...).
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from opencir.models.backbones import DualTower
from opencir.models.base import CIRModel
from opencir.models.baselines import Combiner, ImageOnly, ImageTextSum, TextOnly
from opencir.models.checkpoint import (
    checkpoint_folder,
    is_checkpoint,
    load_state_strict,
    read_checkpoint_config,
    read_checkpoint_tensors,
    read_checkpoint_tokenizer,
)
from opencir.models.config import (
    BackboneConfig,
    FusionConfig,
    MLLMConfig,
    ModelConfig,
    PreprocessConfig,
)
from opencir.models.hub import is_repo_id
from opencir.models.loading import build_tower, load_tokenizer, load_tower
from opencir.models.mllm import (
    MLLMEmbedder,
    build_llava,
    load_llava,
    load_vision_encoder,
    put_vision_encoder,
)
from opencir.models.reformulation import InstructCIR
from opencir.models.regrid import input_scale, regrid_tower
from opencir.models.tokenizer import byte_level_mllm_tokenizer

METHOD_CLASSES: dict[str, type[CIRModel]] = {
    "instructcir": InstructCIR,
    "image-only": ImageOnly,
    "text-only": TextOnly,
    "sum": ImageTextSum,
    "combiner": Combiner,
    "mllm": MLLMEmbedder,
}
MLLM_FOLDER = "mllm"


@cache
def _configs(kind: str) -> dict[str, dict[str, Any]]:
    folder = resources.files("opencir.models") / "configs" / kind
    return {
        entry.name.removesuffix(".json"): json.loads(entry.read_text())
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    }


def _backbone_folder(method: str) -> str:
    return _configs("methods")[method].get("backbones", "backbones")


def list_backbones(method: str | None = None) -> list[str]:
    """Backbones of ``method`` (default: the dual-encoder backbones most methods use)."""
    return sorted(_configs(_backbone_folder(method) if method else "backbones"))


def list_methods() -> list[str]:
    return sorted(_configs("methods"))


def list_models() -> list[str]:
    """All registered model names, ``<method>-<backbone>``."""
    return [f"{m}-{b}" for m in list_methods() for b in list_backbones(m)]


def split_name(name: str) -> tuple[str, str]:
    """``"image-only-vit-l-14"`` → ``("image-only", "vit-l-14")``."""
    for method in sorted(list_methods(), key=len, reverse=True):
        backbone = name.removeprefix(f"{method}-")
        if backbone != name and backbone in _configs(_backbone_folder(method)):
            return method, backbone
    raise ValueError(
        f"unknown model name {name!r}; names are <method>-<backbone> with methods "
        f"{list_methods()} and backbones {list_backbones()} ({MLLM_FOLDER}: "
        f"{list_backbones(MLLM_FOLDER)}) (see opencir.list_models())"
    )


def _backbone_spec(name: str) -> dict[str, Any]:
    method, backbone = split_name(name)
    return _configs(_backbone_folder(method))[backbone]


def backbone_hub_id(name: str) -> str | None:
    """The hub id of the paper weights of a registered model (``None`` for tiny ones)."""
    return _backbone_spec(name).get("hub_id")


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """The registered configuration for ``name`` with optional overrides applied."""
    method, _ = split_name(name)
    spec = _backbone_spec(name)
    method_spec = _configs("methods")[method]
    preprocess = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["preprocess"].items()}
    mllm = None
    if _backbone_folder(method) == MLLM_FOLDER:
        mllm = MLLMConfig(**{**method_spec.get("mllm", {}), **spec.get("mllm", {})})
    config = ModelConfig(
        name=name,
        method=method,
        backbone=BackboneConfig(
            family=spec["family"],
            architecture=spec["architecture"],
            max_text_length=spec["max_text_length"],
            preprocess=PreprocessConfig(**preprocess),
        ),
        fusion=FusionConfig(**method_spec.get("fusion", {})),
        mllm=mllm,
    )
    return config.with_overrides(**overrides) if overrides else config


def build_architecture(config: ModelConfig) -> Any:
    """The random-weight tower (dual encoder or LLaVA) a config describes."""
    if config.method == "mllm":
        return build_llava(config.backbone)
    return build_tower(config.backbone)[0]


def _towers(config: ModelConfig, pretrained: str | None) -> tuple[Any, BackboneConfig, Any]:
    """Tower, resolved backbone config and tokenizer, random or from ``pretrained``."""
    if pretrained and is_checkpoint(pretrained):
        return checkpoint_backbone(config, pretrained)
    if config.method == "mllm":
        if pretrained:
            tower, backbone = load_llava(config.backbone, pretrained)
            return tower, backbone, load_tokenizer(backbone, pretrained)
        context = config.backbone.architecture["text_config"]["max_position_embeddings"]
        tokenizer = byte_level_mllm_tokenizer(context)
        return build_llava(config.backbone), config.backbone, tokenizer
    if pretrained:
        tower, backbone = load_tower(config.backbone, pretrained)
    else:
        tower, backbone = build_tower(config.backbone)
    return tower, backbone, load_tokenizer(backbone, pretrained)


def checkpoint_backbone(
    config: ModelConfig, directory: str
) -> tuple[DualTower, BackboneConfig, Any]:
    """The tower, backbone config (preprocessing included) and tokenizer of a checkpoint.

    Lets every dual-encoder method, the baselines above all, run on the backbone of any
    OpenCIR checkpoint; an InstructCIR checkpoint gives its query encoder's tower. A
    checkpoint of a smaller input with the same token grid (``vit-mini-minilm`` for
    ``vit-mini-minilm-128``) is carried to ``config``'s input by :mod:`opencir.models.regrid`.
    """
    saved = read_checkpoint_config(directory)
    if MLLM_FOLDER in (_backbone_folder(config.method), _backbone_folder(saved.method)):
        raise ValueError(
            f"pretrained={directory!r}: an OpenCIR checkpoint's backbone serves dual-encoder "
            f"methods only; {config.name!r} and the checkpoint's {saved.name!r} must both be one"
        )
    wanted, have = split_name(config.name)[1], _registered_backbone(saved.name)
    larger_input = have is not None and have != wanted
    architectures = saved.backbone.architecture, config.backbone.architecture
    if larger_input and input_scale(*architectures) is None:
        raise ValueError(
            f"pretrained={directory!r} holds a {have} backbone, not {wanted}; "
            f"use {config.method}-{have}"
        )
    model = load(directory)
    tower, backbone = dual_tower(model), saved.backbone
    if larger_input:  # the same tower at a larger input, same token grid (opencir.models.regrid)
        tower, backbone = regrid_tower(tower, backbone, config.backbone)
    backbone = dataclasses.replace(backbone, pretrained=str(directory))
    return tower, backbone, model.tokenizer


def dual_tower(model: CIRModel) -> DualTower | None:
    """The dual-encoder tower a model is built on (an InstructCIR's query encoder's), or None."""
    if isinstance(model, InstructCIR):
        return model.query_encoder.tower
    tower = getattr(model, "tower", None)
    return tower if isinstance(tower, DualTower) else None


def init_vision_encoder(model: MLLMEmbedder, source: str) -> None:
    """``vision_init``: a pretrained ViT into an MLLM — CLIP, SigLIP, a dual-encoder backbone
    dir, or the image tower of an OpenCIR checkpoint of a dual-encoder method (e.g. the
    shipped ``shapes-backbone``), with the preprocessing its weights were trained with."""
    if not is_checkpoint(source):
        load_vision_encoder(model, source)
        return
    saved = load(source)
    tower = dual_tower(saved)
    if tower is None:
        raise ValueError(
            f"vision_init {source!r} is an OpenCIR checkpoint of {saved.config.name}, "
            "which has no dual-encoder image tower to take a ViT from"
        )
    put_vision_encoder(model, tower.hf.vision_model, saved.config.backbone.preprocess, source)


def _registered_backbone(name: str) -> str | None:
    """The backbone part of a registry model name, ``None`` for a name outside the registry."""
    try:
        return split_name(name)[1]
    except ValueError:
        return None


def build_model(config: ModelConfig, tower: DualTower, tokenizer: Any) -> CIRModel:
    """Instantiate the method class of ``config`` around a built tower."""
    if config.method not in METHOD_CLASSES:
        raise ValueError(
            f"unknown method {config.method!r}; expected one of {list(METHOD_CLASSES)}"
        )
    return METHOD_CLASSES[config.method](config, tower, tokenizer)


def load(source: str | Path, map_location: str | torch.device = "cpu") -> CIRModel:
    """Load a checkpoint written by ``model.save``: a folder, or a Hugging Face repo id.

    The config rebuilds the architecture and the tensors are loaded strictly, so embeddings
    are bit-identical to the saved model's (:mod:`opencir.models.checkpoint`).
    """
    directory = checkpoint_folder(source)
    config = read_checkpoint_config(directory)
    tensors = read_checkpoint_tensors(directory, map_location)
    tokenizer = read_checkpoint_tokenizer(directory)
    model = build_model(config, build_architecture(config), tokenizer)
    load_state_strict(model, tensors, directory)
    return model.eval()


def create_model(name: str, pretrained: str | bool | None = None, **overrides: Any) -> CIRModel:
    """Create a registered model.

    ``pretrained``: ``None``/``False`` → random weights from the architecture config;
    a hub id or a local ``save_pretrained`` directory → those backbone weights;
    ``True`` → the backbone's registered hub id (e.g. ``openai/clip-vit-large-patch14``).
    Overrides replace fusion/backbone fields, e.g. ``ema=False, cross_attention=False``.
    """
    config = get_model_config(name, **overrides)
    if pretrained is True:
        pretrained = backbone_hub_id(name)
        if pretrained is None:
            raise ValueError(f"backbone of {name!r} has no registered pretrained weights")
    tower, backbone, tokenizer = _towers(config, str(pretrained) if pretrained else None)
    config = ModelConfig(config.name, config.method, backbone, config.fusion, config.mllm)
    return build_model(config, tower, tokenizer)


def load_model(spec: str, pretrained: str | None = None) -> CIRModel:
    """The model a ``--model`` argument names, in eval mode.

    ``DIR`` — an OpenCIR checkpoint written by ``model.save``; ``OWNER/REPO`` — a Hugging
    Face Hub repo holding one (from the local cache, else downloaded unless offline);
    ``NAME@DIR`` or ``NAME@OWNER/REPO`` — a registered model with backbone weights from a
    ``save_pretrained`` directory or Hub repo (same as ``pretrained=...``); ``NAME`` — a
    registered model (random weights unless ``pretrained`` is given). An existing folder
    always wins over a repo id spelled the same.
    """
    name, sep, source = str(spec).partition("@")
    if sep:
        if pretrained is not None:
            raise ValueError(f"model {spec!r} already names its weights; drop pretrained")
        return create_model(name, pretrained=_backbone_source(spec, source)).eval()
    if is_checkpoint(spec):
        return load(spec).eval()
    if Path(spec).is_dir():
        raise ValueError(
            f"{spec} is a directory but not an OpenCIR checkpoint (no config.json with "
            "format 'opencir-checkpoint'); for Hugging Face backbone weights use NAME@DIR, "
            "e.g. instructcir-vit-l-14@/models/clip-vit-large-patch14"
        )
    if is_repo_id(spec):
        return load(spec).eval()
    if "/" in spec or "\\" in spec:
        raise ValueError(
            f"model {spec!r} is neither a checkpoint folder (no such folder), a Hugging Face "
            "repo id (OWNER/REPO) nor a registered model name; see `opencir models`"
        )
    return create_model(spec, pretrained=pretrained).eval()


def _backbone_source(spec: str, source: str) -> str:
    """The ``SOURCE`` of ``NAME@SOURCE``: an existing folder (made absolute) or a repo id."""
    path = Path(source).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if is_repo_id(source):
        return source
    raise ValueError(
        f"model {spec!r}: backbone weights {source!r} are neither an existing folder nor a "
        "Hugging Face repo id (OWNER/REPO)"
    )
