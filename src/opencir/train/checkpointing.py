"""Atomic training checkpoints: model, optimizer, scheduler, EMA, RNG and step.

Layout under ``OUT/checkpoints``: ``step-000200/{model/, train_state.pt}`` and a ``latest``
file naming the newest complete one. A checkpoint is written in a hidden staging folder,
fsynced, then renamed into place; ``latest`` is replaced by ``os.replace``. A crash or a
kill at any moment leaves the previous checkpoint and pointer intact; what it leaves
half-written is removed at the next save or resume. ``--resume latest`` checks a checkpoint
before loading it and falls back to the previous one when the newest is damaged.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from opencir.atomic import atomic_write, staging_dir, swap_in
from opencir.models.base import CIRModel
from opencir.models.base_weights import restore_external
from opencir.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from opencir.models.errors import CheckpointError

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"
LATEST = "latest"
STATE_KEYS = frozenset({"step", "optimizer", "scheduler", "rng"})
# a checkpoint of another stage or model cannot continue this run
RUN_IDENTITY = ("stage", "model")
STEP_NAME = re.compile(r"step-(\d+)")
LEFTOVER_FOLDER = re.compile(r"\.step-\d+\.[\w-]+")
LEFTOVER_FILE = re.compile(r"\.latest\.\w+\.tmp")


def rng_state() -> dict[str, Any]:
    """This process's RNG state; on a GPU only its current device (one GPU per rank)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, list):  # written before states were per device: one per GPU
            cuda = cuda[torch.cuda.current_device()]
        torch.cuda.set_rng_state(cuda)


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def save_training_checkpoint(
    root: Path, step: int, model: CIRModel, state: dict[str, Any], keep: int
) -> Path:
    """Write ``step-XXXXXX`` atomically, point ``latest`` at it, prune older ones."""
    root.mkdir(parents=True, exist_ok=True)
    clean_staging(root)
    name = f"step-{step:06d}"
    staging = staging_dir(root, f".{name}.")
    try:
        model.save(staging / "model")
        torch.save(state, staging / STATE_FILE)
        _fsync(staging / STATE_FILE)
        swap_in(staging, root / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_pointer(root, name)
    _prune(root, keep)
    return root / name


def _write_pointer(root: Path, name: str) -> None:
    atomic_write(root / LATEST, (name + "\n").encode())


def _prune(root: Path, keep: int) -> None:
    for old in _step_dirs(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _step_of(path: Path) -> int | None:
    match = STEP_NAME.fullmatch(path.name)
    return int(match.group(1)) if match else None


def _step_dirs(root: Path) -> list[Path]:
    """The ``step-N`` folders under ``root``, newest first."""
    found = [p for p in root.glob("step-*") if p.is_dir() and _step_of(p) is not None]
    return sorted(found, key=_step_of, reverse=True)


def clean_staging(root: Path) -> list[Path]:
    """Remove what interrupted saves left in ``root`` and return it.

    Only names this module writes are touched: ``.step-N.*`` folders (a staging folder, or
    the old copy ``swap_in`` moves aside) and ``.latest.*.tmp`` files (a pointer write).
    """
    leftovers = [
        path
        for path in root.glob(".*")
        if (LEFTOVER_FOLDER.fullmatch(path.name) and path.is_dir() and not path.is_symlink())
        or (LEFTOVER_FILE.fullmatch(path.name) and path.is_file())
    ]
    for path in leftovers:
        log.info("removing %s, left by an interrupted checkpoint save", path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return leftovers


def resume_training_checkpoint(
    root: Path, which: str, model: CIRModel, config: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """Load the checkpoint ``which`` names into ``model``; return its path and training state.

    ``which`` is ``latest``, a ``step-N`` name under ``root`` or a directory. Each candidate
    is checked before anything is loaded (see :func:`read_training_checkpoint`). For
    ``latest``, an unusable newest checkpoint is skipped with a warning naming it and the
    previous one is tried; a named checkpoint must be usable itself.
    """
    clean_staging(root)
    if which != LATEST:
        path = Path(which) if Path(which).is_dir() else root / which
        return path, _load_checked(path, model, config)
    problems = []
    for path in _latest_candidates(root):
        try:
            return path, _load_checked(path, model, config)
        except CheckpointError as error:
            log.warning("skipping checkpoint %s: %s", path, error)
            problems.append(str(error))
    if not problems:
        raise FileNotFoundError(f"--resume latest: no checkpoint yet under {root}")
    raise CheckpointError(
        f"--resume latest: no usable checkpoint under {root}: " + "; ".join(problems)
    )


def _latest_candidates(root: Path) -> list[Path]:
    """What ``latest`` names, then the older ``step-N`` folders, newest first."""
    steps = _step_dirs(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return steps
    newest = root / pointer.read_text(errors="replace").strip()
    bound = _step_of(newest)
    return [newest, *(p for p in steps if bound is None or _step_of(p) < bound)]


def _load_checked(path: Path, model: CIRModel, config: dict[str, Any]) -> dict[str, Any]:
    weights, state = read_training_checkpoint(path, model, config)
    model.load_state_dict(weights)
    return state


def read_training_checkpoint(
    path: Path, model: CIRModel, config: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read one checkpoint's weights and state without touching ``model``.

    Raises :class:`CheckpointError` naming the checkpoint when a file is missing or cannot
    be read, when it was written by a run of another stage or model than ``config`` (a
    ``TrainConfig.to_dict()``), or when its tensors do not fit ``model``.
    """
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    files = [path / "model" / WEIGHTS_FILE, path / STATE_FILE]
    missing = [str(f.relative_to(path)) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: {', '.join(missing)} missing")
    try:
        weights = _read_weights(path / "model", str(model.device))
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as error:  # a damaged file fails in many ways (zip, pickle, header)
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error
    _check_state(path, state, config)
    _check_weights(path, weights, model.state_dict())
    return weights, state


def _read_weights(directory: Path, device: str) -> dict[str, torch.Tensor]:
    """The model tensors, with unchanged pretrained text weights refilled from their source."""
    tensors = load_file(directory / WEIGHTS_FILE, device=device)
    external = json.loads((directory / CONFIG_FILE).read_text()).get("external_weights")
    if external:
        restore_external(tensors, external)
    return tensors


def _check_state(path: Path, state: Any, config: dict[str, Any]) -> None:
    if not isinstance(state, dict) or not state.keys() >= STATE_KEYS:
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} lacks some of {sorted(STATE_KEYS)}")
    saved = state.get("config") or {}
    for key in RUN_IDENTITY:
        if key in saved and saved[key] != config[key]:
            raise CheckpointError(
                f"checkpoint {path} was written by a run with {key}={saved[key]!r}, this run "
                f"has {key}={config[key]!r}; resume with the recipe that wrote it, or train "
                "into another out_dir"
            )


def _check_weights(
    path: Path, weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> None:
    differing = sorted(
        (set(weights) ^ set(expected))
        | {k for k in set(weights) & set(expected) if weights[k].shape != expected[k].shape}
    )
    if differing:
        raise CheckpointError(
            f"checkpoint {path} does not fit this run's model: {len(differing)} tensor(s) "
            f"missing, unexpected or of another shape, e.g. {', '.join(differing[:3])}"
        )
