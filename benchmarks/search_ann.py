"""Approximate search: queries/s at recall@k >= a target, over the exact search's queries/s.

Galleries are a clustered synthetic distribution (a two-level gaussian mixture on the unit
sphere, see ``index_synthetic.clustered_unit``), closer to real image embeddings than uniform random
vectors (on which no approximate index can be both fast and accurate). Queries are fresh
draws from the same mixture. For each gallery size this builds (or reuses) a flat index and
each approximate factory through the library's real assembly step, measures recall@k against
the exact top k, sweeps ``nprobe`` / ``efSearch`` upward until recall reaches the target,
and times that setting against the exact batched search, interleaved round by round.

    python benchmarks/search_ann.py                        # 200k and 1M x 512
    python benchmarks/search_ann.py --sizes 100000 --rounds 3
"""

from __future__ import annotations

import os

# The methods are timed back to back: a BLAS or OpenMP pool left spinning by one (OpenBLAS
# spins ~0.1 s after each call by default) would steal a core from the next. Set before the
# libraries load; this does not change how fast any single call runs on an idle machine.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_times, machine_report, median_ratio
from index_synthetic import assemble_index, clustered_unit

from opencir.index import BuildConfig, GalleryIndex, default_search_params
from opencir.index.store import apply_search_params
from opencir.index.tuning import available_cpus, configure_faiss

SWEEPS = {
    "nprobe": [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256],
    "efSearch": [16, 24, 32, 48, 64, 96, 128, 192, 256],
}


@dataclass(frozen=True)
class Outcome:
    factory: str
    params: str
    recall: float
    qps: float
    exact_qps: float
    ratio: float
    bytes_per_vector: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=500, help="queries (and the batch)")
    parser.add_argument("--recall", type=float, default=0.95, help="target recall@k")
    parser.add_argument("--factories", nargs="*", help="default: chosen by gallery size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/opencir-bench"))
    return parser.parse_args()


def default_factories(n: int) -> list[str]:
    """IVF with about 2*sqrt(n) lists (flat and 8-bit codes), HNSW where it builds quickly."""
    lists = 1 << round(np.log2(2 * np.sqrt(n)))
    factories = [f"IVF{lists},Flat", f"IVF{lists},SQ8"]
    return [*factories, "HNSW32"] if n <= 300_000 else factories


def cached_index(root: Path, n: int, dim: int, factory: str) -> GalleryIndex:
    folder = root / f"clustered-{n}x{dim}-{factory.replace(',', '_')}"
    if not (folder / "manifest.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        lists = int(factory[3:].split(",")[0]) if factory.startswith("IVF") else 0
        config = BuildConfig(
            factory=factory,
            shard_size=8192,
            train_size=max(100_000, 40 * lists),
            progress=False,
            overwrite=True,
        )
        assemble_index(folder, clustered_unit(n, dim, seed=0), config)
    return GalleryIndex.open(folder)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth, strict=True)]))


def tune(index: GalleryIndex, queries: np.ndarray, truth: np.ndarray, target: float) -> str:
    """The cheapest swept setting reaching ``target`` recall (the largest if none does)."""
    name = "nprobe" if "IVF" in index.manifest.factory else "efSearch"
    params = ""
    for value in SWEEPS[name]:
        params = f"{name}={value}"
        apply_search_params(index.vectors, params)
        got = recall(index.vectors.search(queries, truth.shape[1])[1], truth)
        print(f"    {params:14s} recall@{truth.shape[1]} {got:.3f}")
        if got >= target:
            break
    return params


def measure(root: Path, n: int, args: argparse.Namespace) -> list[Outcome]:
    flat = cached_index(root, n, args.dim, "Flat")
    queries = np.concatenate(list(clustered_unit(args.queries, args.dim, seed=1)))
    truth = flat.exact.search(queries, args.k)[1]
    outcomes = []
    for factory in args.factories or default_factories(n):
        index = cached_index(root, n, args.dim, factory)
        print(f"  {factory} (library default: {default_search_params(factory)})")
        params = tune(index, queries, truth, args.recall)
        got = recall(index.vectors.search(queries, args.k)[1], truth)
        times = interleaved_times(
            {
                "approx": lambda i=index: i.vectors.search(queries, args.k),
                "exact": lambda: flat.exact.search(queries, args.k),
            },
            args.rounds,
        )
        qps = len(queries) / statistics.median(times["approx"])
        exact_qps = len(queries) / statistics.median(times["exact"])
        size = (index.folder / "vectors.faiss").stat().st_size / n
        ratio = median_ratio(times["exact"], times["approx"])
        outcomes.append(Outcome(factory, params, got, qps, exact_qps, ratio, size))
    return outcomes


def main() -> None:
    args = parse_args()
    configure_faiss()  # as the CLI and the server do for their process
    print(machine_report())
    print(f"CPUs available: {available_cpus()}; data: 2-level gaussian mixture (100 x 50 centres)")
    for n in args.sizes:
        print(f"gallery {n} x {args.dim}, {args.queries} queries in one batch, k={args.k}")
        for o in measure(args.dir, n, args):
            print(
                f"  n={n} {o.factory:16s} {o.params:12s} recall@{args.k} {o.recall:.3f}  "
                f"{o.qps:9.0f} q/s vs exact {o.exact_qps:7.0f} q/s  ratio {o.ratio:6.1f}  "
                f"FAISS file {o.bytes_per_vector:6.0f} B/vector"
            )


if __name__ == "__main__":
    main()
