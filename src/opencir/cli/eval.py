"""``opencir eval``: evaluate a model on a benchmark split under its exact protocol."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml

from opencir.cli import UsageError


def register(sub: argparse._SubParsersAction) -> None:
    from opencir.eval.benchmarks import list_benchmarks

    parser = sub.add_parser(
        "eval",
        help="evaluate a model on a benchmark (metrics table + results JSON)",
        description="Protocol switches are listed in docs/BENCHMARKS.md; every report prints them.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint directory or Hugging Face repo OWNER/REPO, registry NAME, "
        "NAME@HF_DIR, cirevl:CONFIG.json "
        "(the training-free CIReVL-style baseline), or MODULE:FACTORY (a model from outside "
        "OpenCIR: FACTORY() returns an object with encode_query/encode_target; MODULE is "
        "imported from the current directory or PYTHONPATH)",
    )
    parser.add_argument(
        "--pretrained",
        help="backbone weights for a registry NAME: hub id, HF directory or OpenCIR checkpoint "
        "(its backbone, tokenizer and preprocessing); for MODULE:FACTORY, passed to FACTORY",
    )
    parser.add_argument("--benchmark", required=True, choices=list_benchmarks())
    parser.add_argument("--data-root", required=True, help="dataset root in its official layout")
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE",
        help="protocol option, e.g. exclude_reference=false, category=dress (repeatable)",
    )  # fmt: skip
    parser.add_argument("--out", help="write the results JSON here")
    parser.add_argument(
        "--no-rankings", action="store_true",
        help="leave the per-query top-50 rankings out of the --out JSON (metrics and per-query "
        "hits stay, all `opencir results` needs; a 2,000-query ShapesCIR result shrinks from "
        "2.4 MB to 0.25 MB)",
    )  # fmt: skip
    parser.add_argument("--submission", metavar="DIR", help="write test-server files (cirr, circo)")
    parser.add_argument("--report", metavar="DIR", help="write qualitative grid + recall plot")
    parser.add_argument(
        "--card", action="store_true",
        help="add the results to the model card (README.md) of the --model checkpoint folder",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--backend", choices=("torch", "onnx"), default="torch",
        help="run the encoders in PyTorch or exported to ONNX Runtime (CPU; needs opencir[onnx]; "
        "faster on the CPU measured in docs/PERFORMANCE.md)",
    )  # fmt: skip
    parser.add_argument("--cache-dir", default=".cache/opencir/gallery", help="gallery cache")
    parser.add_argument("--no-cache", action="store_true", help="do not cache gallery embeddings")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run)


def parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {item!r} must look like KEY=VALUE")
        options[key] = yaml.safe_load(value)
    return options


def load_eval_model(args: argparse.Namespace) -> Any:
    """The model ``--model`` names, on the ``--backend`` asked for."""
    from opencir.models import CIRModel, load_model
    from opencir.models.external import is_factory_spec, load_factory_model

    if args.model.startswith("cirevl:"):
        from opencir.cli.generate import quiet_request_logs
        from opencir.generate.cirevl import load_cirevl

        quiet_request_logs()  # one rewrite request per query
        return load_cirevl(args.model.removeprefix("cirevl:"), progress=not args.no_progress)
    if is_factory_spec(args.model):
        if os.getcwd() not in sys.path:  # as `python -m` does: modules here are importable
            sys.path.insert(0, os.getcwd())
        model = load_factory_model(args.model, args.pretrained)
    else:
        model = load_model(args.model, pretrained=args.pretrained)
    if args.backend == "torch":
        return model
    if not isinstance(model, CIRModel):
        raise ValueError(
            f"--backend {args.backend} exports an OpenCIR model; {args.model!r} gave a "
            f"{type(model).__name__} (use --backend torch)"
        )
    from opencir.models.onnx_export import with_backend

    return with_backend(model, args.backend)


def run(args: argparse.Namespace) -> int:
    from opencir.eval.run import EvalRequest, run_evaluation
    from opencir.models.checkpoint import is_checkpoint, update_model_card

    if args.card and not is_checkpoint(args.model):
        raise UsageError(
            f"--card adds the results to a checkpoint folder's model card; --model "
            f"{args.model!r} is not a local OpenCIR checkpoint folder"
        )
    request = EvalRequest(
        benchmark=args.benchmark,
        data_root=args.data_root,
        split=args.split,
        options=parse_options(args.option),
        batch_size=args.batch_size,
        cache_dir=None if args.no_cache else args.cache_dir,
        out=args.out,
        out_rankings=not args.no_rankings,
        submission_dir=args.submission,
        report_dir=args.report,
        progress=not args.no_progress,
    )
    result, written = run_evaluation(load_eval_model(args), request)
    print(result.format_table())
    if args.card:
        written.append(update_model_card(args.model, json.loads(result.to_json())))
    for path in written:
        print(f"wrote {path}")
    return 0
