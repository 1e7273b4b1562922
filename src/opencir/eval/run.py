"""One evaluation run as the CLI and recipes use it: load, evaluate, write every output."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opencir.eval.benchmark import BenchmarkSplit
from opencir.eval.benchmarks import load_benchmark
from opencir.eval.evaluate import EvalResult, evaluate
from opencir.eval.report import plot_recall_curve, save_qualitative_grid
from opencir.eval.submission import write_circo_submission, write_cirr_submission
from opencir.models.base import Retriever

log = logging.getLogger(__name__)

SUBMISSION_BENCHMARKS = ("cirr", "circo")


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate and where each output goes (``None`` = not written)."""

    benchmark: str
    data_root: str
    split: str = "val"
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32
    cache_dir: str | None = ".cache/opencir/gallery"
    out: str | None = None
    out_rankings: bool = True  # the per-query rankings in ``out`` (not needed for statistics)
    submission_dir: str | None = None
    report_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.submission_dir is not None:
            check_submission_benchmark(self.benchmark)


def check_submission_benchmark(benchmark: str) -> None:
    """Refuse a submission for a benchmark without a test server, before any work is done."""
    if benchmark.lower() not in SUBMISSION_BENCHMARKS:
        raise ValueError(
            f"--submission: benchmark {benchmark!r} has no test server; "
            f"submission files exist for {SUBMISSION_BENCHMARKS}"
        )


def write_submission(result: EvalResult, split: BenchmarkSplit, out_dir: Path) -> list[Path]:
    """Test-server files for CIRR (two JSON files) or CIRCO (one)."""
    check_submission_benchmark(split.benchmark)
    if split.benchmark == "cirr":
        subset = result.subset_rankings or None
        return list(write_cirr_submission(result.rankings, split, out_dir, subset_rankings=subset))
    return [write_circo_submission(result.rankings, split, out_dir / "circo_submission.json")]


def write_report(result: EvalResult, split: BenchmarkSplit, out_dir: Path) -> list[Path]:
    """The qualitative grid (paper Fig. 5/6 style) and the recall-vs-K plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [save_qualitative_grid(result, split, out_dir / "qualitative.png")]
    if result.metrics:
        paths.append(plot_recall_curve(result, split, out_dir / "recall_vs_k.png"))
    return paths


def run_evaluation(model: Retriever, request: EvalRequest) -> tuple[EvalResult, list[Path]]:
    """Evaluate ``model`` as ``request`` says; returns the result and the files written."""
    split = load_benchmark(request.benchmark, request.data_root, request.split, **request.options)
    result = evaluate(
        model, split, batch_size=request.batch_size, cache_dir=request.cache_dir,
        progress=request.progress,
    )  # fmt: skip
    written: list[Path] = []
    if request.out:
        result.to_json(request.out, rankings=request.out_rankings)
        written.append(Path(request.out))
    if request.submission_dir:
        written += write_submission(result, split, Path(request.submission_dir))
    if request.report_dir:
        written += write_report(result, split, Path(request.report_dir))
    return result, written
