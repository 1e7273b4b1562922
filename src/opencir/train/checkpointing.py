"""Atomic training checkpoints: model, optimizer, scheduler, EMA, RNG and step.

Layout under ``OUT/checkpoints``: ``step-000200/{model/, train_state.pt}`` and a ``latest``
file naming the newest complete one. A checkpoint is written in a hidden staging folder,
fsynced, then renamed into place; ``latest`` is replaced by ``os.replace``. A crash or a
kill at any moment leaves the previous checkpoint and pointer intact.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from opencir.atomic import atomic_write
from opencir.models.base import CIRModel
from opencir.models.checkpoint import WEIGHTS_FILE

STATE_FILE = "train_state.pt"
LATEST = "latest"


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def save_training_checkpoint(
    root: Path, step: int, model: CIRModel, state: dict[str, Any], keep: int
) -> Path:
    """Write ``step-XXXXXX`` atomically, point ``latest`` at it, prune older ones."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        model.save(staging / "model")
        torch.save(state, staging / STATE_FILE)
        _fsync(staging / STATE_FILE)
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _write_pointer(root, name)
    _prune(root, keep)
    return final


def _write_pointer(root: Path, name: str) -> None:
    atomic_write(root / LATEST, (name + "\n").encode())


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(root: Path, which: str) -> Path:
    """Resolve ``latest`` or a ``step-…`` name / path to a complete checkpoint directory."""
    if which == LATEST:
        pointer = root / LATEST
        if not pointer.is_file():
            raise FileNotFoundError(f"--resume latest: no checkpoint yet under {root}")
        path = root / pointer.read_text().strip()
    else:
        path = Path(which) if Path(which).is_dir() else root / which
    if not (path / STATE_FILE).is_file() or not (path / "model" / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {path} is incomplete or missing")
    return path


def load_training_checkpoint(path: Path, model: CIRModel) -> dict[str, Any]:
    """Load weights into ``model`` in place and return the saved training state."""
    model.load_state_dict(load_file(path / "model" / WEIGHTS_FILE, device=str(model.device)))
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
