"""Results tables and scaling plots from ``opencir eval`` JSON files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

DEFAULT_METRICS = ("R@1", "R@5", "R@10", "R@50", "mAP@10")


def read_metrics(path: str | Path) -> dict[str, float]:
    """The overall metrics of one results JSON written by ``opencir eval --out``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} not found (write it with opencir eval --out)")
    data = json.loads(path.read_text())
    if "metrics" not in data:
        raise ValueError(f"{path} is not an opencir eval results file (no 'metrics' key)")
    return data["metrics"]


def markdown_table(
    rows: Sequence[tuple[str, str | Path]], metrics: Sequence[str] = DEFAULT_METRICS
) -> str:
    """One row per ``(name, results.json)``, one column per metric (``-`` when absent)."""
    header = "| model | " + " | ".join(metrics) + " |"
    lines = [header, "|---|" + "---:|" * len(metrics)]
    for name, path in rows:
        values = read_metrics(path)
        cells = [f"{values[m]:.2f}" if m in values else "-" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
        values = [read_metrics(p).get(metric) for _, p in points]
        (line,) = axis.plot([n for n, _ in points], values, marker="o", label=f"S1 {metric}")
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
