"""Keep pretrained text-tower weights out of checkpoints when they are unchanged.

A ``dual`` backbone whose text encoder came from a known source (``text_source``, e.g. the
packaged all-MiniLM-L6-v2) and stayed frozen holds tens of MB that anyone can rebuild from
that source. Checkpoints then store only what training changed, plus the names and a
SHA-256 of the omitted tensors; loading refills them from the source and checks the hash,
so embeddings stay bit-identical and a different source is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel

from opencir.models.errors import CheckpointError
from opencir.models.loading import resolve_source

TEXT_PART = "tower.hf.text_model."


def _text_key(name: str) -> str | None:
    """``query_encoder.tower.hf.text_model.X`` → ``X``; ``None`` outside a text tower."""
    if name.startswith(TEXT_PART):
        return name[len(TEXT_PART) :]
    _, sep, tail = name.partition("." + TEXT_PART)
    return tail if sep else None


def load_text_source(source: str) -> dict[str, torch.Tensor]:
    """The state dict of the pretrained text encoder ``source`` (hub id or directory)."""
    location, _ = resolve_source(source)
    # Built with a pooler exactly when the file has one: transformers then has no unexpected
    # or missing keys to report. The text tower never uses the pooler, so it is dropped.
    pooler = _has_pooler(location)
    model = AutoModel.from_pretrained(location, local_files_only=True, add_pooling_layer=pooler)
    state = model.state_dict()
    return {k: v.detach().contiguous() for k, v in state.items() if not k.startswith("pooler.")}


def _has_pooler(location: str) -> bool:
    """Whether the weights file in directory ``location`` holds BERT pooler tensors."""
    from safetensors import safe_open

    path = Path(location) / "model.safetensors"
    if not path.is_file():
        return False
    with safe_open(path, "pt") as weights:
        names = weights.keys()  # a safetensors file handle is not iterable
        return any(name.startswith("pooler.") for name in names)


def _digest(tensors: Mapping[str, torch.Tensor], names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def split_external(
    tensors: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(tensors to store, external record)``: drop text weights equal to ``source``'s."""
    base = load_text_source(source)
    omitted = sorted(
        name
        for name, value in tensors.items()
        if (key := _text_key(name)) is not None
        and key in base
        and base[key].shape == value.shape
        and torch.equal(base[key], value.cpu())
    )
    if not omitted:
        return tensors, None
    record = {"source": source, "tensors": omitted, "sha256": _digest(tensors, omitted)}
    return {k: v for k, v in tensors.items() if k not in set(omitted)}, record


def restore_external(tensors: dict[str, torch.Tensor], record: Mapping[str, Any]) -> None:
    """Refill omitted tensors from their source in place; refuse a source that changed."""
    base = load_text_source(record["source"])
    names = list(record["tensors"])
    missing = [n for n in names if _text_key(n) not in base]
    if missing:
        raise CheckpointError(
            f"text weights source {record['source']!r} lacks {', '.join(missing[:5])}"
        )
    for name in names:
        tensors[name] = base[_text_key(name)].clone()
    if _digest(tensors, names) != record["sha256"]:
        raise CheckpointError(
            f"the text weights of {record['source']!r} differ from the ones this checkpoint "
            "was trained with (SHA-256 mismatch); install the original weights"
        )
