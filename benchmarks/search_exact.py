"""Exact search over a flat index: ``GalleryIndex.search`` against numpy brute force.

Builds (or reuses) a real flat index over N random unit vectors (through the library's
assembly step, see ``index_synthetic.py``), then times, interleaved round by round:

* numpy: ``queries @ vectors.T``, ``argpartition`` and a sort of the top k, on an in-RAM copy;
* ours: ``GalleryIndex.search`` (int8-bounded exact search, or a float32 scan for batches
  that would leave many rows to rescore, plus the item lookups);
* FAISS's flat search of the same index with its default settings and with the library's.

It also sweeps FAISS's BLAS block size, the setting the library changes. Every ratio printed
is a median over rounds of per-round ratios.

    python benchmarks/search_exact.py                   # 1M x 512, k = 10 and 50
    python benchmarks/search_exact.py --n 100000 --rounds 3
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_times, load_average, machine_report, median_ratio
from index_synthetic import assemble_index, uniform_unit

from opencir.index import BuildConfig, GalleryIndex
from opencir.index.tuning import FaissSettings, available_cpus, configure_faiss

FAISS_DEFAULTS = FaissSettings(blas_threshold=20, blas_query_bs=4096, blas_database_bs=1024)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery size")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--batch", type=int, default=100, help="queries in the batched case")
    parser.add_argument("--cases", nargs="+", default=["single", "batch"])
    parser.add_argument("--no-sweep", action="store_true", help="skip the FAISS settings sweep")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/opencir-bench"))
    parser.add_argument("--rebuild", action="store_true", help="rebuild a cached index")
    return parser.parse_args()


def flat_index(root: Path, n: int, dim: int, rebuild: bool) -> Path:
    """A cached flat index over ``n`` uniform unit vectors (seed 0)."""
    folder = root / f"uniform-{n}x{dim}-Flat"
    if rebuild or not (folder / "manifest.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        config = BuildConfig(factory="Flat", shard_size=8192, progress=False, overwrite=True)
        assemble_index(folder, uniform_unit(n, dim, seed=0), config)
    return folder


def numpy_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """The reference: full score matrix, partial selection, then a sort of the k best."""
    scores = queries @ vectors.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


def faiss_search(index: GalleryIndex, settings: FaissSettings, queries: np.ndarray, k: int):
    configure_faiss(settings)
    try:
        return index.vectors.search(queries, k)
    finally:
        configure_faiss()


def compare(index: GalleryIndex, vectors: np.ndarray, queries: np.ndarray, k: int, rounds: int):
    """Interleaved timings of the four paths for one (batch, k); print and return ratios."""
    ids = np.array([[h.item.id for h in q] for q in index.search(queries, k)])
    same = bool((ids == numpy_top_k(vectors, queries, k)[1]).all())
    times = interleaved_times(
        {
            "numpy": lambda: numpy_top_k(vectors, queries, k),
            "ours": lambda: index.search(queries, k),
            "faiss_default": lambda: faiss_search(index, FAISS_DEFAULTS, queries, k),
            "faiss_tuned": lambda: faiss_search(index, FaissSettings(), queries, k),
        },
        rounds,
    )
    ratios = {name: median_ratio(times[name], times["numpy"]) for name in times}
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    print(
        f"queries={len(queries):4d} k={k:3d}  numpy {ms['numpy']:8.1f} ms | ours "
        f"{ms['ours']:7.1f} ms ratio {ratios['ours']:.3f} | faiss default ratio "
        f"{ratios['faiss_default']:.3f} | faiss tuned ratio {ratios['faiss_tuned']:.3f} | "
        f"rankings identical to numpy: {same} | load {load_average()}"
    )
    return ratios


def sweep_faiss_blocks(index: GalleryIndex, queries: np.ndarray, k: int, rounds: int) -> None:
    """FAISS flat search time for several BLAS database blocks (and the BLAS threshold)."""
    cases = {
        f"db_bs={bs}": FaissSettings(blas_database_bs=bs)
        for bs in (1024, 16_384, 65_536, 262_144, 1_048_576)
    }
    cases["threshold=1 (BLAS for 1 query)"] = FaissSettings(blas_threshold=1)
    for nq in (1, len(queries)):
        fns = {
            name: (lambda s=s, q=queries[:nq]: faiss_search(index, s, q, k))
            for name, s in cases.items()
        }
        times = interleaved_times(fns, rounds)
        line = ", ".join(f"{n} {1e3 * statistics.median(t):.0f} ms" for n, t in times.items())
        print(f"  FAISS flat, {nq} queries, k={k}: {line} (load {load_average()})")


def main() -> None:
    args = parse_args()
    configure_faiss()  # as the CLI and the server do for their process
    print(machine_report())
    print(f"CPUs available: {available_cpus()}, FAISS threads: {FaissSettings().threads or 'all'}")
    folder = flat_index(args.dir, args.n, args.dim, args.rebuild)
    index = GalleryIndex.open(folder)
    vectors = np.load(folder / "embeddings.npy")  # in RAM: numpy's best case
    queries = np.concatenate(list(uniform_unit(args.batch, args.dim, seed=1)))
    print(f"gallery {args.n} x {args.dim} float32 ({vectors.nbytes / 2**30:.2f} GiB), uniform")
    for k in args.k:
        for case in args.cases:
            compare(
                index, vectors, queries[: 1 if case == "single" else args.batch], k, args.rounds
            )
    if not args.no_sweep:
        print("FAISS BLAS settings sweep (median ms):")
        sweep_faiss_blocks(index, queries, args.k[0], max(2, args.rounds // 2))


if __name__ == "__main__":
    main()
