"""``opencir demo``: the end-to-end demo behind ``make demo``."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the end-to-end demo on a built-in miniature world")
    parser.add_argument("--workdir", default="runs/demo", help="where the demo writes its files")
    parser.add_argument(
        "--serve",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the search page afterwards (default: DEMO_SERVE env var, else yes)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from opencir.demo import run_demo

    transformers_logging.disable_progress_bar()  # a one-second weight load needs no bar here
    serve = args.serve if args.serve is not None else os.environ.get("DEMO_SERVE", "1") != "0"
    return run_demo(serve=serve, workdir=args.workdir)
