"""Embeddings for the related-pair sampler: from an ``.npz`` file or any OpenCIR model.

An ``.npz`` holds ``keys`` (strings) and ``vectors`` (``[N, D]``); keys absent from it are
left out of related sampling. A model embeds every image with ``encode_target``; images that
fail to load are returned as failures and left out. Model embeddings are cached in the run's
cache folder (keyed by the model fingerprint and the collection's keys), so a rerun after a
crash does not embed again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from opencir.data.collections import ImageCollection
from opencir.data.images import ImageLoadError
from opencir.data.triplets import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedded:
    """Keys with vectors (row-aligned) and ``{key: reason}`` of images that failed."""

    keys: list[str]
    vectors: np.ndarray
    failures: dict[str, str] = field(default_factory=dict)


def load_npz(path: str | Path, keys: Sequence[str]) -> Embedded:
    """Vectors of ``keys`` from an ``.npz`` with ``keys`` and ``vectors`` arrays."""
    with np.load(path, allow_pickle=False) as data:
        if "keys" not in data or "vectors" not in data:
            raise ValueError(f"{path} must hold arrays 'keys' and 'vectors'")
        stored = {str(k): i for i, k in enumerate(data["keys"])}
        vectors = data["vectors"]
    if vectors.ndim != 2 or len(vectors) != len(stored):
        raise ValueError(f"{path}: vectors must be [len(keys), D], got {vectors.shape}")
    present = [k for k in keys if k in stored]
    missing = {k: "no_embedding" for k in keys if k not in stored}
    if missing:
        log.warning("%d images have no vector in %s and are left out", len(missing), path)
    return Embedded(present, vectors[[stored[k] for k in present]].astype(np.float32), missing)


def embed_collection(
    collection: ImageCollection,
    keys: Sequence[str],
    model_spec: str,
    cache_dir: Path | None,
    batch_size: int = 32,
    progress: bool = True,
) -> Embedded:
    """``encode_target`` embeddings of ``keys`` with an OpenCIR model (name or checkpoint)."""
    from opencir.models.base import retriever_fingerprint
    from opencir.models.registry import load_model

    model = load_model(model_spec).eval()
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12]
    cache = (
        cache_dir / f"embeddings-{retriever_fingerprint(model)}-{digest}.npz" if cache_dir else None
    )
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            failures = dict(
                zip(data["failed_keys"].tolist(), data["failed_reasons"].tolist(), strict=True)
            )
            return Embedded(data["keys"].tolist(), data["vectors"], failures)
    result = _embed(collection, keys, model, batch_size, progress)
    if cache is not None:
        _save(cache, result)
    return result


def _embed(collection, keys, model, batch_size: int, progress: bool) -> Embedded:
    ok: list[str] = []
    parts: list[np.ndarray] = []
    failures: dict[str, str] = {}
    bar = tqdm(total=len(keys), desc="embed", unit="img", disable=not progress)
    for start in range(0, len(keys), batch_size):
        batch_keys, images = [], []
        for key in keys[start : start + batch_size]:
            try:
                images.append(collection.load(key))
                batch_keys.append(key)
            except ImageLoadError as error:
                failures[key] = error.reason
        if images:
            parts.append(model.encode_target(images).float().cpu().numpy())
            ok.extend(batch_keys)
        bar.update(len(keys[start : start + batch_size]))
    bar.close()
    dim = parts[0].shape[1] if parts else 0
    vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return Embedded(ok, vectors.astype(np.float32), failures)


def _save(path: Path, result: Embedded) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(
        buffer,
        keys=np.array(result.keys, dtype=str),
        vectors=result.vectors,
        failed_keys=np.array(list(result.failures), dtype=str),
        failed_reasons=np.array(list(result.failures.values()), dtype=str),
    )
    atomic_write(path, buffer.getvalue())
