"""Turn a ``--model`` argument into a model.

The spellings accepted (:func:`opencir.models.load_model`):

* ``DIR`` — an OpenCIR checkpoint directory written by ``model.save`` → :func:`opencir.load`;
* ``OWNER/REPO`` — a Hugging Face Hub repo holding such a checkpoint → :func:`opencir.load`;
* ``NAME@DIR`` — a registered model whose backbone weights come from a Hugging Face
  ``save_pretrained`` directory (e.g. a real CLIP snapshot), or ``NAME@OWNER/REPO`` from a
  Hub repo → ``create_model(NAME, pretrained=DIR)``;
* ``NAME`` — a registered model name → ``create_model(NAME)`` (random weights unless the
  backbone is pretrained; fine for tests, not for a real gallery).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opencir.models.base import CIRModel


def canonical_spec(spec: str | Path) -> str:
    """The spelling recorded in an index manifest: existing directories made absolute.

    Anything else (a Hub repo id above all) is kept as written.
    """
    text = str(spec)
    name, sep, source = text.partition("@")
    if sep:
        path = Path(source).expanduser()
        return f"{name}@{path.resolve()}" if path.is_dir() else text
    path = Path(text).expanduser()
    return str(path.resolve()) if path.is_dir() else text


def names_random_weights(spec: str | Path) -> bool:
    """Whether ``spec`` is a bare registered name, whose weights are drawn anew on every load."""
    from opencir.models.registry import split_name

    text = str(spec)
    if "@" in text or Path(text).expanduser().is_dir():
        return False
    try:
        split_name(text)
    except ValueError:
        return False  # a checkpoint named another way (a Hub repo id, ...)
    return True


def resolve_model(spec: str | Path) -> CIRModel:
    """Build or load the model that ``spec`` names (see the module docstring)."""
    from opencir.models import load_model

    return load_model(str(spec))
