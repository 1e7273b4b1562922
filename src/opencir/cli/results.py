"""``opencir results``: a Markdown table (and a scaling plot) from eval result files."""

from __future__ import annotations

import argparse
from pathlib import Path


def _pair(item: str) -> tuple[str, str]:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{item!r} must look like NAME=results.json")
    return name, path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("results", help="tabulate opencir eval results (Markdown, plot)")
    parser.add_argument("rows", nargs="+", type=_pair, metavar="NAME=RESULTS.json")
    parser.add_argument("--metrics", default="R@1,R@5,R@10,R@50,mAP@10", help="comma-separated")
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


def run(args: argparse.Namespace) -> int:
    from opencir.eval.tables import markdown_table, plot_scaling

    table = markdown_table(args.rows, [m.strip() for m in args.metrics.split(",") if m.strip()])
    if args.out:
        Path(args.out).write_text(table + "\n")
        print(f"wrote {args.out}")
    else:
        print(table)
    if args.plot:
        if not args.scaling:
            raise ValueError("--plot needs --scaling N=RESULTS.json points")
        points = [(int(n), path) for n, path in args.scaling]
        wanted = {name.strip() for name in args.baselines.split(",") if name.strip()}
        unknown = wanted - {name for name, _ in args.rows}
        if unknown:
            raise ValueError(f"--baselines names {sorted(unknown)} are not table rows")
        baselines = [row for row in args.rows if row[0] in wanted]
        print(f"wrote {plot_scaling(points, args.plot, baselines=baselines)}")
    return 0
