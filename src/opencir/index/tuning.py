"""FAISS settings for CPU search, measured by ``benchmarks/search_exact.py``.

FAISS switches from its one-query-at-a-time scan to BLAS matrix products at
``distance_compute_blas_threshold`` queries, and then multiplies blocks of
``distance_compute_blas_database_bs`` gallery rows. The default block (1024 rows) spends
more time merging per-block heaps than multiplying; a block of 2**18 rows is over 3x faster
for a batch of 100 queries over 1M vectors. Below the threshold the plain scan is still the
faster one, so the threshold stays at FAISS's 20.

The settings are global to the process, so only the process entry points apply them: the
``opencir index`` / ``search`` commands and a served app
(:func:`opencir.serve.runner.serve_socket`). Opening, building or searching an index through
the library leaves the caller's choices alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class FaissSettings:
    """Process-wide FAISS CPU settings, applied by the CLI and the server at start-up."""

    blas_threshold: int = 20
    blas_query_bs: int = 4096
    blas_database_bs: int = 262_144
    threads: int | None = None  # None: every CPU this process may run on


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_faiss(settings: FaissSettings = FaissSettings()) -> None:
    """Apply ``settings`` to the FAISS library (they are global to the process)."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = settings.blas_threshold
    faiss.cvar.distance_compute_blas_query_bs = settings.blas_query_bs
    faiss.cvar.distance_compute_blas_database_bs = settings.blas_database_bs
    faiss.omp_set_num_threads(settings.threads or available_cpus())
