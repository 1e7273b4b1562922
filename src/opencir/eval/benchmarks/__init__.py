"""Benchmark adapters: turn a dataset on disk into a :class:`BenchmarkSplit`.

``load_benchmark("cirr", "/data/CIRR", "val")`` picks the adapter by name; every adapter takes
``(data_root, split, **protocol_options)``. Layouts, defaults and switches: docs/BENCHMARKS.md.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from opencir.eval.benchmark import BenchmarkSplit
from opencir.eval.benchmarks.circo import load_circo
from opencir.eval.benchmarks.cirr import load_cirr
from opencir.eval.benchmarks.common import (
    DatasetLayoutError,
    MalformedDatasetFileError,
    MissingDatasetFileError,
)
from opencir.eval.benchmarks.fashioniq import load_fashioniq
from opencir.eval.benchmarks.genecis import load_genecis

Loader = Callable[..., BenchmarkSplit]


def _load_world(
    benchmark: str, data_root: str | Path, split: str, **options: Any
) -> BenchmarkSplit:
    """Miniature worlds live in ``.worlds``; imported on first use, not at package import."""
    from opencir.eval.benchmarks.worlds import load_world_split

    return load_world_split(data_root, split, benchmark, **options)


BENCHMARKS: dict[str, Loader] = {
    "cirr": load_cirr,
    "fashioniq": load_fashioniq,
    "circo": load_circo,
    "genecis": load_genecis,
    "shapescir": partial(_load_world, "shapescir"),
    "emojicir": partial(_load_world, "emojicir"),
}


def list_benchmarks() -> list[str]:
    """Names accepted by :func:`load_benchmark`."""
    return sorted(BENCHMARKS)


def load_benchmark(name: str, data_root: str | Path, split: str, **options: Any) -> BenchmarkSplit:
    """Load split ``split`` of benchmark ``name`` from ``data_root`` with protocol ``options``."""
    loader = BENCHMARKS.get(name.lower())
    if loader is None:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {list_benchmarks()}")
    return loader(data_root, split, **options)


__all__ = [
    "BENCHMARKS",
    "DatasetLayoutError",
    "MalformedDatasetFileError",
    "MissingDatasetFileError",
    "list_benchmarks",
    "load_benchmark",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
    "load_genecis",
]
