"""The ``opencir`` command: a thin shell over library calls (the library never imports this)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger("opencir")

Handler = Callable[[argparse.Namespace], int]


def _cmd_models(args: argparse.Namespace) -> int:
    from opencir.models.registry import get_model_config, list_models

    names = [n for n in list_models() if args.filter in n]
    if args.json:
        print(json.dumps({n: get_model_config(n).to_dict() for n in names}, indent=2))
    else:
        print("\n".join(names))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from opencir.demo import run_demo

    return run_demo(serve=args.serve, workdir=args.workdir)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opencir",
        description="Composed image retrieval: generate triplets, train, evaluate, index, search.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list registered model names (<method>-<backbone>)")
    models.add_argument("--filter", default="", help="only names containing this text")
    models.add_argument("--json", action="store_true", help="print the full configs as JSON")
    models.set_defaults(handler=_cmd_models)

    demo = sub.add_parser("demo", help="run the end-to-end demo on a built-in miniature world")
    demo.add_argument("--workdir", default="runs/demo", help="where the demo writes its files")
    demo.add_argument(
        "--serve",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve the search page afterwards (default: the DEMO_SERVE env var, else yes)",
    )
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        log.error("%s", error)
        return 2


if __name__ == "__main__":
    sys.exit(main())
