"""``opencir models``: list the registry."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list registered model names (<method>-<backbone>)")
    parser.add_argument("--filter", default="", help="only names containing this text")
    parser.add_argument("--json", action="store_true", help="print the full configs as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from opencir.models.registry import get_model_config, list_models

    names = [n for n in list_models() if args.filter in n]
    if args.json:
        print(json.dumps({n: get_model_config(n).to_dict() for n in names}, indent=2))
    else:
        print("\n".join(names))
    return 0
