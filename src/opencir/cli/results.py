"""``opencir results``: a Markdown table with 95% CIs and paired tests (and a scaling plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_METRICS = "R@1,R@5,R@10,R@50,mAP@10"


def _pair(item: str) -> tuple[str, list[list[str]]]:
    """``NAME=run,run,...``; a run is a results file or ``world1.json+world2.json+...``."""
    name, sep, paths = item.partition("=")
    runs = [[f for f in run.split("+") if f] for run in paths.split(",") if run]
    if not sep or not name or not runs or not all(runs):
        raise argparse.ArgumentTypeError(
            f"{item!r} must look like NAME=results.json, NAME=seed0.json,seed1.json,... "
            "or NAME=world1.json+world2.json"
        )
    return name, runs


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "results",
        help="tabulate opencir eval results with 95%% CIs and paired tests (Markdown, plot)",
        description=(
            "One row per NAME. Several files for one NAME (comma-separated, or the NAME "
            "repeated) are runs of the same model, e.g. training seeds: the cell shows "
            "mean ± sd over runs and a 95% CI over runs and queries. Files joined by '+' "
            "are one model on several worlds, taken as one set of queries (each query "
            "weighs the same). With --baseline, a second table gives each row's paired "
            "difference to that row on the same queries (Δ, its 95% CI and a two-sided "
            "p-value)."
        ),
    )
    parser.add_argument("rows", nargs="+", type=_pair, metavar="NAME=RESULTS.json[+...][,...]")
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help="comma-separated")
    parser.add_argument("--baseline", help="row NAME that every other row is paired against")
    parser.add_argument(
        "--resamples", type=int, default=10_000, help="bootstrap/randomisation resamples"
    )
    parser.add_argument("--out", help="write the Markdown table here (default: print)")
    parser.add_argument(
        "--scaling", nargs="*", type=_pair, default=[], metavar="N=RESULTS.json",
        help="data-scaling points (N generated triplets) for --plot",
    )  # fmt: skip
    parser.add_argument("--plot", help="write the scaling plot PNG here")
    parser.add_argument(
        "--baselines",
        default="",
        help="comma-separated row names drawn as horizontal lines on the plot",
    )
    parser.set_defaults(handler=run)


def _group_rows(pairs: list[tuple[str, list[list[str]]]]) -> dict[str, list[list[str]]]:
    """NAME → its runs in order; a repeated NAME adds runs to the same row."""
    grouped: dict[str, list[list[str]]] = {}
    for name, runs in pairs:
        grouped.setdefault(name, []).extend(runs)
    return grouped


def run(args: argparse.Namespace) -> int:
    from opencir.eval.tables import load_row, markdown_table, plot_scaling

    grouped = _group_rows(args.rows)
    rows = [load_row(name, runs) for name, runs in grouped.items()]
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    table = markdown_table(rows, metrics, baseline=args.baseline, resamples=args.resamples)
    if args.out:
        Path(args.out).write_text(table + "\n")
        print(f"wrote {args.out}")
    else:
        print(table)
    if args.plot:
        if not args.scaling:
            raise ValueError("--plot needs --scaling N=RESULTS.json points")
        points = [(int(n), runs[0][0]) for n, runs in args.scaling]
        wanted = {name.strip() for name in args.baselines.split(",") if name.strip()}
        unknown = wanted - set(grouped)
        if unknown:
            raise ValueError(f"--baselines names {sorted(unknown)} are not table rows")
        baselines = [(name, grouped[name][0][0]) for name in grouped if name in wanted]
        print(f"wrote {plot_scaling(points, args.plot, baselines=baselines)}")
    return 0
