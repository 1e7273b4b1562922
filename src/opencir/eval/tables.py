"""Results tables and scaling plots from ``opencir eval`` JSON files.

Cells carry 95% confidence intervals and paired tests (:mod:`opencir.eval.stats`) when the
files hold per-query values (every file written by ``opencir eval`` does); a row may pool
several runs of one model (training seeds) on the same queries, and one run may join the
results of one model on several worlds into one set of queries (:func:`join_worlds`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opencir.eval.stats import DEFAULT_RESAMPLES, paired_test, summarize

DEFAULT_METRICS = ("R@1", "R@5", "R@10", "R@50", "mAP@10")


@dataclass(frozen=True)
class Run:
    """One results JSON: overall metrics and, when saved, the per-query values."""

    path: Path
    metrics: dict[str, float]
    per_query: dict[str, list[float]]
    query_ids: tuple[str, ...]
    dataset_fingerprint: str


@dataclass(frozen=True)
class Row:
    """A table row: one or several runs (training seeds) of one model on the same queries."""

    name: str
    runs: tuple[Run, ...]

    def values(self, metric: str) -> np.ndarray | None:
        """``[runs, queries]`` per-query values of ``metric``; None if any run lacks them."""
        if not all(metric in run.per_query for run in self.runs):
            return None
        return np.asarray([run.per_query[metric] for run in self.runs], dtype=np.float64)


def read_metrics(path: str | Path) -> dict[str, float]:
    """The overall metrics of one results JSON written by ``opencir eval --out``."""
    return read_run(path).metrics


def read_run(path: str | Path) -> Run:
    """One results JSON written by ``opencir eval --out`` (older files lack per-query values)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} not found (write it with opencir eval --out)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(data, dict) or "metrics" not in data:
        raise ValueError(f"{path} is not an opencir eval results file (no 'metrics' key)")
    run = Run(path, data["metrics"], data.get("per_query") or {},
              tuple(data.get("query_ids") or ()), data.get("dataset_fingerprint", ""))  # fmt: skip
    for metric, values in run.per_query.items():
        if len(values) != len(run.query_ids):
            raise ValueError(
                f"{path}: per_query[{metric!r}] has {len(values)} values for "
                f"{len(run.query_ids)} query ids"
            )
    return run


def join_worlds(paths: Sequence[str | Path]) -> Run:
    """One model's results on several worlds as one run over all their queries, in order.

    Every file needs per-query values; the joined metrics are means over all queries (each
    query weighs the same, whichever world it comes from), and a query is known by its
    world's fingerprint and its id, so two joined runs pair only over the same worlds.
    """
    runs = [read_run(p) for p in paths]
    if len(runs) == 1:
        return runs[0]
    lacking = [str(run.path) for run in runs if not run.per_query]
    if lacking:
        raise ValueError(f"joining worlds needs per-query values, which {lacking} lack")
    metrics = sorted(set.intersection(*(set(run.per_query) for run in runs)))
    per_query = {m: [v for run in runs for v in run.per_query[m]] for m in metrics}
    return Run(
        path=Path("+".join(str(run.path) for run in runs)),
        metrics={m: 100.0 * float(np.mean(values)) for m, values in per_query.items()},
        per_query=per_query,
        query_ids=tuple(f"{run.dataset_fingerprint}/{q}" for run in runs for q in run.query_ids),
        dataset_fingerprint="+".join(run.dataset_fingerprint for run in runs),
    )


def load_row(name: str, paths: Sequence[str | Path | Sequence[str | Path]]) -> Row:
    """A row from one or more runs on the same queries: each a results file, or a sequence
    of files on several worlds joined into one run (:func:`join_worlds`)."""
    if not paths:
        raise ValueError(f"row {name!r} has no results files")
    runs = tuple(read_run(p) if isinstance(p, str | Path) else join_worlds(p) for p in paths)
    for run in runs[1:]:
        _check_same_queries(runs[0], run, f"runs of row {name!r}")
    return Row(name, runs)


def _check_same_queries(a: Run, b: Run, what: str) -> None:
    if not a.per_query or not b.per_query:
        return  # nothing per query to pair; means are still comparable
    if a.query_ids != b.query_ids or a.dataset_fingerprint != b.dataset_fingerprint:
        raise ValueError(
            f"{what} are not on the same queries: {a.path} ({len(a.query_ids)} queries, data "
            f"{a.dataset_fingerprint}) vs {b.path} ({len(b.query_ids)} queries, data "
            f"{b.dataset_fingerprint})"
        )


def summary_cell(row: Row, metric: str, resamples: int = DEFAULT_RESAMPLES) -> str:
    """``mean [low, high]`` (one run) or ``mean ± sd [low, high]`` (seeds); ``-`` if absent."""
    values = row.values(metric)
    if values is None:
        means = [run.metrics[metric] for run in row.runs if metric in run.metrics]
        return f"{np.mean(means):.2f}" if len(means) == len(row.runs) else "-"
    s = summarize(values, resamples=resamples)
    spread = f" ± {s.sd:.2f}" if s.runs > 1 else ""
    return f"{s.mean:.2f}{spread} [{s.low:.2f}, {s.high:.2f}]"


def paired_cell(row: Row, baseline: Row, metric: str, resamples: int = DEFAULT_RESAMPLES) -> str:
    """``Δ [low, high] p=…`` of ``row − baseline`` on the same queries; ``-`` if not pairable."""
    values, base = row.values(metric), baseline.values(metric)
    if values is None or base is None:
        return "-"
    _check_same_queries(row.runs[0], baseline.runs[0], f"rows {row.name!r} and {baseline.name!r}")
    test = paired_test(values, base, resamples=resamples)
    return f"{test.delta:+.2f} [{test.low:+.2f}, {test.high:+.2f}] {_format_p(test.p_value)}"


def _format_p(p: float) -> str:
    return f"p={p:.3f}" if p >= 0.001 else "p<0.001"


def markdown_table(
    rows: Sequence[tuple[str, str | Path] | Row],
    metrics: Sequence[str] = DEFAULT_METRICS,
    baseline: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
) -> str:
    """One row per model, one column per metric, with 95% CIs where per-query values exist.

    ``rows`` are :class:`Row` objects or ``(name, results.json)`` pairs. With ``baseline``
    (a row name), a second table gives every other row's paired difference to it.
    """
    rows = [row if isinstance(row, Row) else load_row(row[0], [row[1]]) for row in rows]
    header = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    lines = [*header]
    for row in rows:
        cells = [summary_cell(row, m, resamples) for m in metrics]
        lines.append(f"| {_row_label(row)} | " + " | ".join(cells) + " |")
    if baseline is None:
        return "\n".join(lines)
    base = _find_row(rows, baseline)
    lines += ["", f"Paired difference to {baseline} (Δ, 95% CI, p):", "", *header]
    for row in rows:
        if row is not base:
            cells = [paired_cell(row, base, m, resamples) for m in metrics]
            lines.append(f"| {_row_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _row_label(row: Row) -> str:
    return row.name if len(row.runs) == 1 else f"{row.name} ({len(row.runs)} runs)"


def _find_row(rows: Sequence[Row], name: str) -> Row:
    for row in rows:
        if row.name == name:
            return row
    raise ValueError(f"baseline {name!r} is not a table row (rows: {[r.name for r in rows]})")


def _points_with_intervals(paths: Sequence[str | Path], metric: str) -> tuple[list, np.ndarray]:
    """Metric values and their CI half-widths as ``[2, N]`` error bars (0 without per-query)."""
    values, errors = [], np.zeros((2, len(paths)))
    for i, path in enumerate(paths):
        run = read_run(path)
        values.append(run.metrics.get(metric))
        if metric in run.per_query:
            s = summarize(run.per_query[metric])
            errors[:, i] = (s.mean - s.low, s.high - s.mean)
    return values, errors


def plot_scaling(
    points: Sequence[tuple[int, str | Path]],
    path: str | Path,
    metrics: Sequence[str] = ("R@1", "R@10"),
    baselines: Sequence[tuple[str, str | Path]] = (),
    title: str = "data scaling",
) -> Path:
    """Metric vs number of generated triplets (log x), with baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points)
    figure, axis = plt.subplots(figsize=(8.5, 4), dpi=120)
    colours = {}
    for metric in metrics:
        xs = [n for n, _ in points]
        values, errors = _points_with_intervals([p for _, p in points], metric)
        line, *_ = axis.errorbar(xs, values, yerr=errors, marker="o", capsize=3,
                                 label=f"S1 {metric} (95% CI)")  # fmt: skip
        colours[metric] = line.get_color()
    styles = ("--", ":", "-.", (0, (1, 3)), (0, (5, 1)), (0, (3, 1, 1, 1)))
    for (name, result), style in zip(baselines, styles * len(baselines), strict=False):
        values = read_metrics(result)
        for metric in metrics:  # same colour as the metric's S1 line, one dash style per row
            axis.axhline(values[metric], linestyle=style, color=colours[metric], alpha=0.6,
                         label=f"{name} {metric}")  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlabel("generated training triplets")
    axis.set_ylabel("recall (%)")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
