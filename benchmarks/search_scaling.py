"""Search time per query against gallery size, exact and approximate; writes a log-log plot.

For each size, on the clustered synthetic gallery of ``search_ann.py`` (indexes are cached
and shared with it): numpy brute force, the library's exact search, FAISS's flat search
with the library's settings, and an IVF index at the smallest ``nprobe`` reaching the target
recall. Batches of ``--batch`` queries and single queries, interleaved, medians of rounds.

    python benchmarks/search_scaling.py        # 10k ... 1M x 512, reuses search_ann indexes
    python benchmarks/search_scaling.py --sizes 10000 30000 --out /tmp/scaling.png
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

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_times, machine_report
from index_synthetic import clustered_unit
from search_ann import cached_index, default_factories, tune
from search_exact import numpy_top_k

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 200_000, 1_000_000]
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--recall", type=float, default=0.95)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/opencir-bench"))
    parser.add_argument("--out", type=Path, default=REPO / "docs/img/perf-search-scaling.png")
    return parser.parse_args()


def per_query_ms(n: int, args: argparse.Namespace) -> dict[str, float]:
    """Median milliseconds per query of each method, batched and single."""
    flat = cached_index(args.dir, n, args.dim, "Flat")
    ivf = cached_index(args.dir, n, args.dim, default_factories(n)[0])
    vectors = np.load(flat.folder / "embeddings.npy")
    queries = np.concatenate(list(clustered_unit(args.batch, args.dim, seed=1)))
    params = tune(ivf, queries, flat.exact.search(queries, args.k)[1], args.recall)
    out: dict[str, float] = {}
    for label, q in (("batch", queries), ("single", queries[:1])):
        times = interleaved_times(
            {
                "numpy brute force": lambda q=q: numpy_top_k(vectors, q, args.k),
                "exact (library)": lambda q=q: flat.exact.search(q, args.k),
                "FAISS flat": lambda q=q: flat.vectors.search(q, args.k),
                "IVF (recall@10 >= 0.95)": lambda q=q: ivf.vectors.search(q, args.k),
            },
            args.rounds,
        )
        for name, t in times.items():
            out[f"{name}|{label}"] = 1e3 * statistics.median(t) / len(q)
    print(f"n={n}: {ivf.manifest.factory} at {params}; ms per query:")
    for key, value in out.items():
        print(f"    {key:36s} {value:9.3f}")
    return out


def plot(sizes: list[int], rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, label in zip(axes, ("single", "batch"), strict=True):
        for key in [k for k in rows[0] if k.endswith("|" + label)]:
            name = key.split("|")[0]
            ax.plot(sizes, [r[key] for r in rows], marker="o", label=name)
        title = "1 query" if label == "single" else f"batch of {args.batch} queries"
        ax.set(xscale="log", yscale="log", xlabel="gallery size (vectors, 512-d)", title=title)
        ax.set_ylabel("ms per query")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Search time vs gallery size (clustered synthetic data, 2 CPU cores)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def main() -> None:
    args = parse_args()
    print(machine_report())
    rows = [per_query_ms(n, args) for n in args.sizes]
    plot(args.sizes, rows, args)


if __name__ == "__main__":
    main()
