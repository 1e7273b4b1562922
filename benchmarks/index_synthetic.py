"""Synthetic galleries for the search and index benchmarks.

``assemble_index`` writes embedding shards the way ``build_index`` leaves them after the
model has run (``sources.jsonl`` plus ``shard-*.npz`` in a work folder) and then calls the
library's real assembly step, so the index folder (items table, embeddings, int8 codes, FAISS
file, manifest) is exactly what a build writes. Only the model and the images are skipped.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from opencir.index.build import SOURCES_FILE, BuildConfig, _assemble, _shard_path
from opencir.index.manifest import ModelInfo

CHUNK = 50_000


def _normalise(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def uniform_unit(n: int, dim: int, seed: int) -> Iterator[np.ndarray]:
    """``n`` random unit vectors, uniform on the sphere, in chunks."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        yield _normalise(rng.standard_normal((min(CHUNK, n - start), dim), dtype=np.float32))


def clustered_unit(
    n: int, dim: int, seed: int, groups: int = 100, per_group: int = 50, spread: float = 1.0
) -> Iterator[np.ndarray]:
    """A two-level gaussian mixture on the sphere: ``groups`` random unit directions, each
    with ``per_group`` sub-centres around it, and every vector a sub-centre plus isotropic
    noise of norm about ``spread``, normalised. At the defaults a query's nearest neighbour
    has cosine ~0.55 and its 10th ~0.50 (uniform vectors: ~0.2); the centres are fixed, so
    galleries and queries drawn with different seeds share them."""
    centres = np.random.default_rng(12345)
    tops = _normalise(centres.standard_normal((groups, dim)))
    noise = centres.standard_normal((groups * per_group, dim)) * (spread / np.sqrt(dim))
    subs = _normalise(np.repeat(tops, per_group, axis=0) + noise)
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        jitter = rng.standard_normal((size, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        yield _normalise(subs[rng.integers(0, len(subs), size)] + jitter)


def make_vectors(kind: str, n: int, dim: int, seed: int) -> Iterator[np.ndarray]:
    if kind == "uniform":
        return uniform_unit(n, dim, seed)
    return clustered_unit(n, dim, seed)


def write_shards(partial: Path, chunks: Iterator[np.ndarray], shard_size: int) -> int:
    """Write ``chunks`` as a finished embedding stage of a build; return the row count."""
    partial.mkdir(parents=True, exist_ok=True)
    count = shard = 0
    pending: list[np.ndarray] = []
    with (partial / SOURCES_FILE).open("w") as listing:
        for chunk in chunks:
            for row in range(len(chunk)):
                name = f"img{count + row:08d}.jpg"
                listing.write(json.dumps({"name": name, "path": name, "metadata": {}}) + "\n")
            count += len(chunk)
            pending.append(chunk)
            while sum(map(len, pending)) >= shard_size:
                rows = np.concatenate(pending)
                _save_shard(partial, shard, rows[:shard_size])
                pending, shard = [rows[shard_size:]], shard + 1
        if sum(map(len, pending)):
            _save_shard(partial, shard, np.concatenate(pending))
    return count


def _save_shard(partial: Path, shard: int, rows: np.ndarray) -> None:
    np.savez(_shard_path(partial, shard), vectors=rows, reasons=np.array([""] * len(rows)))


def assemble_index(
    out: Path, chunks: Iterator[np.ndarray], config: BuildConfig, work: Path | None = None
) -> Path:
    """A real index folder at ``out`` over ``chunks``, via the library's assembly step."""
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=work or out.parent))
    try:
        write_shards(partial, chunks, config.shard_size)
        info = ModelInfo(spec="", fingerprint="synthetic", name="synthetic", method="")
        _assemble(out, partial, info, config, base=None, remove=())
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out
