"""The end-to-end demo behind ``make demo``: search a miniature-world gallery.

Uses the shipped ShapesCIR checkpoint when the package carries one, else a tiny random
model (the whole path still runs, the rankings are then meaningless and say so).
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from opencir.models.checkpoint import is_checkpoint

log = logging.getLogger(__name__)

SHIPPED_CHECKPOINT = "shapes-s1-gt"
FALLBACK_MODEL = "instructcir-tiny"


def shipped_checkpoint(name: str = SHIPPED_CHECKPOINT) -> Path | None:
    """The directory of a checkpoint shipped inside the package, if present."""
    path = Path(str(resources.files("opencir") / "assets" / "checkpoints" / name))
    return path if is_checkpoint(path) else None


def run_demo(serve: bool = True, workdir: str | Path = "runs/demo", port: int = 8000) -> int:
    """Index a ShapesCIR gallery, print composed-query results, then serve the search page."""
    from opencir.serve.demo import run_world_search_demo

    checkpoint = shipped_checkpoint()
    if checkpoint is None:
        log.warning(
            "no shipped checkpoint found; using the untrained %s (results are random)",
            FALLBACK_MODEL,
        )
    model = str(checkpoint) if checkpoint else FALLBACK_MODEL
    return run_world_search_demo(model, Path(workdir), serve=serve, port=port)
