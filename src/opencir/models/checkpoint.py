"""One checkpoint format for every method: ``config.json`` + ``model.safetensors`` + tokenizer.

The config fully rebuilds the architecture (no hub access), the tensors are loaded strictly,
and a checkpoint whose tensors disagree with its config is refused with the names of the
mismatching tensors. A model card (``README.md``, :mod:`opencir.models.card`) sits beside
them for people and the Hugging Face Hub; loading never reads it. A checkpoint is named by
its folder or by the id of a Hub repository holding one (:mod:`opencir.models.hub`).
This module reads and writes the files; :func:`opencir.models.registry.load` builds the model
from them (it needs the method classes, which need this module to save).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from opencir.atomic import fsync_tree, staging_dir, swap_in
from opencir.models.base_weights import restore_external, split_external
from opencir.models.card import (
    CardRecords,
    ModelCard,
    read_card_records,
    result_summary,
    write_model_card,
)
from opencir.models.config import ModelConfig
from opencir.models.errors import CheckpointError
from opencir.models.hub import checkpoint_snapshot, is_repo_id

CHECKPOINT_FORMAT = "opencir-checkpoint"
CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"


def save_checkpoint(
    directory: str | Path,
    config: ModelConfig,
    state: Mapping[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    records: CardRecords | None = None,
) -> Path:
    """Write a model's config, tensors (``state``) and tokenizer as a checkpoint folder.

    Written into a temp dir beside ``directory`` and swapped in atomically. ``records``
    (training recipe, data provenance, results) go into the model card.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(directory.parent, f".{directory.name}.")
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        header: dict = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}
        source = config.backbone.text_source
        if source:
            tensors, external = split_external(tensors, source)
            if external:
                header["external_weights"] = external
        save_file(tensors, staging / WEIGHTS_FILE, metadata={"format": CHECKPOINT_FORMAT})
        (staging / CONFIG_FILE).write_text(
            json.dumps({**header, "model": config.to_dict()}, indent=2)
        )
        tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        write_model_card(staging, ModelCard(config, records or CardRecords()))
        fsync_tree(staging)
        swap_in(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def is_checkpoint(directory: str | Path) -> bool:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("format") == CHECKPOINT_FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def read_checkpoint_config(directory: str | Path) -> ModelConfig:
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not an OpenCIR checkpoint: {path} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not an OpenCIR checkpoint config (format={data.get('format')!r}); "
            "for Hugging Face backbone weights use create_model(name, pretrained=DIR)"
        )
    return ModelConfig.from_dict(data["model"])


def checkpoint_folder(source: str | Path) -> Path:
    """The local folder of a checkpoint named by its folder or by a Hub repo id.

    An existing folder wins; otherwise an ``owner/name`` spelling is looked up in the Hugging
    Face cache and downloaded unless offline.
    """
    path = Path(source).expanduser()
    if path.is_dir() or not is_repo_id(str(source)):
        return path
    return checkpoint_snapshot(str(source))


def read_checkpoint_tensors(
    directory: Path, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, those kept outside it refilled from their source."""
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {WEIGHTS_FILE}")
    tensors = load_file(weights, device=str(map_location))
    external = json.loads((directory / CONFIG_FILE).read_text()).get("external_weights")
    if external:
        restore_external(tensors, external)
    return tensors


def read_checkpoint_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(directory / TOKENIZER_DIR, local_files_only=True)


def load_state_strict(model: nn.Module, tensors: dict[str, torch.Tensor], directory: Path) -> None:
    """Load ``tensors`` into ``model``, refusing (with names) any that do not fit its config."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(
        f"{k} (config {tuple(expected[k].shape)}, file {tuple(tensors[k].shape)})"
        for k in set(expected) & set(tensors)
        if expected[k].shape != tensors[k].shape
    )
    if missing or unexpected or wrong_shape:
        problems = [
            f"{label}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
            for label, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("shape mismatch", wrong_shape),
            )
            if names
        ]
        hint = ""
        if any("lora_" in name for name in unexpected):
            hint = (
                " (it holds unmerged LoRA adapters: a training checkpoint, for --resume; "
                "load the run's final/ folder instead)"
            )
        raise CheckpointError(
            f"checkpoint {directory} does not match its config.json{hint}: " + "; ".join(problems)
        )
    model.load_state_dict(tensors, strict=True)


def update_model_card(directory: str | Path, results: str | Path | dict) -> Path:
    """Add an evaluation (an ``opencir eval --out`` JSON file or dict) to a checkpoint's card.

    A result for the same benchmark and split replaces the earlier one.
    """
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    records = read_card_records(directory)
    summary = result_summary(results)
    same = (summary.get("benchmark"), summary.get("split"))
    kept = [r for r in records.results if (r.get("benchmark"), r.get("split")) != same]
    updated = CardRecords(records.training, records.data, (*kept, summary), records.license)
    return write_model_card(directory, ModelCard(config, updated))
