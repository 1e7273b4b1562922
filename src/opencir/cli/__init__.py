"""The ``opencir`` command: a thin shell over library calls (the library never imports this).

Each area registers its subcommands from its own module here (``register(subparsers)``),
so the command stays one console script while the code stays findable by folder.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

log = logging.getLogger("opencir")

Handler = Callable[[argparse.Namespace], int]

# Modules under opencir.cli that contribute subcommands, in --help order.
COMMAND_MODULES = (
    "models",
    "world",
    "generate",
    "writer",
    "train",
    "eval",
    "results",
    "index",
    "search",
    "serve",
    "demo",
)


# Third-party loggers whose INFO lines only matter when debugging (FAISS reports every
# SIMD build it tries before the one that loads): WARNING and up unless --verbose.
QUIET_LOGGERS = ("faiss.loader",)


class UsageError(ValueError):
    """A command-line input is wrong; printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opencir",
        description="Composed image retrieval: generate triplets, train, evaluate, index, search.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"opencir.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if args.verbose else logging.WARNING)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (ValueError, OSError) as error:
        if args.verbose:
            raise
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
