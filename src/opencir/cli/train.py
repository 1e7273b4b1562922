"""``opencir train``: run one training stage from a YAML recipe with overrides."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train one stage (pretrain, cir, combiner, lm, writer) from a YAML recipe",
        description=(
            "Train from a recipe. Overrides are key=value pairs (YAML values), e.g. "
            "steps=200 optim.lr=3e-4 data.labelled_ratio=0.25 model_overrides.ema=false. "
            "Multi-GPU/CPU: torchrun --nproc-per-node N -m opencir.cli train ...; batch_size "
            "is the global batch of one optimizer step, split over the N ranks and grad_accum "
            "micro-batches (it must divide evenly)."
        ),
    )
    parser.add_argument("--recipe", required=True, help="YAML recipe file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument(
        "--resume",
        metavar="latest|step-N|DIR",
        help="continue from a checkpoint of out_dir (latest: the newest usable one; a damaged "
        "newest checkpoint is skipped with a warning)",
    )
    parser.add_argument("--stop-at", type=int, help="stop after this step (train in chunks)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from opencir.train import load_recipe, train

    config = load_recipe(args.recipe, args.overrides)
    result = train(config, resume=args.resume, stop_at=args.stop_at, progress=not args.no_progress)
    if result.final is not None:
        print(f"trained {result.steps_done} steps; final model: {result.final}")
    else:
        print(f"stopped at step {result.steps_done}; resume with --resume latest")
    return 0
