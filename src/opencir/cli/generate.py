"""``opencir generate``: make CIR triplets from an unannotated image collection."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  # offline: miniature world, alt-text captions, template changes
  opencir generate --images worlds/shapes --where split=train --out triplets/shapes \\
      --pairs 20000 --captioner sidecar --writer template

  # seed 002 (S1): a vision model captions, an LLM writes the change (vLLM / Ollama / ...)
  opencir generate --images photos/ --out triplets/photos --pairs 5000 \\
      --captioner openai --caption-model Qwen/Qwen2.5-VL-7B-Instruct \\
      --writer llm --writer-model Qwen/Qwen2.5-7B-Instruct --endpoint http://localhost:8000/v1

  # seed 001 (S3): related targets by nearest neighbours, one pair-vision request
  opencir generate --images shards/ --out triplets/related --pairs 5000 --sampler related \\
      --embed-model CHECKPOINT_DIR --writer pair-vlm --writer-model MODEL
"""


def _text_or_file(value: str | None) -> str | None:
    """``@path`` reads the prompt from a file; anything else is the prompt itself."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    return path.read_text(encoding="utf-8").rstrip("\n")


def _add_source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("images")
    group.add_argument(
        "--images",
        required=True,
        metavar="SRC",
        help="image folder, WebDataset shards (dir, .tar, glob, {000..009}) "
        "or a JSONL/Parquet manifest (a world folder works)",
    )
    group.add_argument(
        "--kind", default="auto", choices=("auto", "folder", "webdataset", "manifest")
    )
    group.add_argument("--key-field", help="manifest key field (default id, then key)")
    group.add_argument("--file-field", help="manifest image path field (default file, path, ...)")
    group.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="keep images whose metadata matches (repeatable), e.g. split=train",
    )
    group.add_argument("--max-pixels", type=int, default=None, help="decompression-bomb cap")


def _add_sampler(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pair sampling")
    group.add_argument("--pairs", type=int, required=True, help="number of pairs to sample")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--sampler", default="random", choices=("random", "class", "related"))
    group.add_argument("--class-field", default="class", help="metadata field for --sampler class")
    group.add_argument("--k", type=int, default=10, help="neighbours per image (related)")
    group.add_argument(
        "--min-distance",
        type=float,
        default=0.02,
        help="near-duplicate floor, cosine distance (related)",
    )
    group.add_argument(
        "--max-distance", type=float, default=0.6, help="too-far ceiling, cosine distance (related)"
    )
    group.add_argument("--embeddings", help=".npz with keys and vectors (related)")
    group.add_argument("--embed-model", help="OpenCIR model name or checkpoint to embed (related)")


def _add_models(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("captioner and change writer")
    group.add_argument(
        "--captioner", default="sidecar", choices=("sidecar", "openai", "hf", "none")
    )
    group.add_argument(
        "--caption-field", default="auto", help="sidecar field (auto: caption, alt_text, text)"
    )
    group.add_argument("--caption-model", help="vision model name (openai) or HF id/folder (hf)")
    group.add_argument("--caption-prompt", help="caption prompt, or @FILE")
    group.add_argument("--caption-endpoint", help="endpoint for captions (default --endpoint)")
    group.add_argument("--prompt-mode", default="auto", choices=("auto", "none", "prefix", "chat"))
    add_writer_arguments(parser)


def add_writer_arguments(parser: argparse.ArgumentParser) -> None:
    """The change writer's options (``generate`` and ``writer eval`` share them)."""
    group = parser.add_argument_group("change writer")
    group.add_argument("--hf-device", default="cpu", help="device of local (hf) models")
    group.add_argument("--hf-batch-size", type=int, default=8, help="batch of local (hf) models")
    group.add_argument(
        "--writer", default="template", choices=("llm", "pair-vlm", "template", "hf")
    )
    group.add_argument(
        "--writer-model",
        help="LLM (llm) or vision model (pair-vlm) name; local folder or .gguf (hf), "
        "e.g. a tuned writer's final/ or adapter/, or a shipped writer: shapes-writer, "
        "emoji-writer",
    )
    group.add_argument(
        "--writer-prompt", help="change prompt, or @FILE ({caption_a}, {caption_b}, {max_words})"
    )
    group.add_argument("--writer-endpoint", help="endpoint for changes (default --endpoint)")
    group.add_argument(
        "--writer-api",
        default="chat",
        choices=("chat", "completions"),
        help="completions: plain-text prompt for base (non-chat) models",
    )
    group.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    group.add_argument("--max-words", type=int, default=12)
    group.add_argument("--reject-retries", type=int, default=1)
    group.add_argument("--attributes-field", default="attributes", help="template writer metadata")


def add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Where OpenAI-compatible model calls go, and how hard to push the server."""
    group = parser.add_argument_group("OpenAI-compatible endpoint")
    group.add_argument("--endpoint", default="http://localhost:8000/v1", help="base URL (…/v1)")
    group.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env variable with the key")
    group.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="most requests in flight per model (default: EndpointConfig's, 64); the client "
        "halves its limit on timeouts and 429/503/504 answers and grows it back on successes",
    )
    group.add_argument(
        "--fixed-concurrency",
        action="store_true",
        help="keep --concurrency requests in flight whatever the server answers (no adapting)",
    )
    group.add_argument("--rate", type=float, default=None, help="max requests per second per model")
    group.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    group.add_argument("--max-retries", type=int, default=4)
    group.add_argument(
        "--max-tokens", type=int, default=None, help="default 200 captions, 40 changes"
    )
    group.add_argument("--temperature", type=float, default=0.0)
    group.add_argument("--image-side", type=int, default=768, help="longest side of images sent")


def _add_runner(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runner")
    group.add_argument("--out", required=True, help="output folder (rerun the command to resume)")
    group.add_argument("--format", default="jsonl", choices=("jsonl", "parquet"))
    group.add_argument("--shard-size", type=int, default=256, help="pairs committed at a time")
    group.add_argument("--cache-dir", help="answer cache (default OUT/cache; share it across runs)")
    group.add_argument(
        "--no-verify-images",
        action="store_true",
        help="do not decode images no stage needs (faster, fewer checks)",
    )
    group.add_argument(
        "--no-retry-failed",
        action="store_true",
        help="keep the pairs that earlier runs lost to endpoint errors as failures "
        "(default: a rerun asks for them again)",
    )
    group.add_argument("--engine", default="local", choices=("local", "ray"))
    group.add_argument("--ray-address", help="Ray cluster address (default: start Ray locally)")
    group.add_argument("--ray-workers", type=int, default=2)
    group.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per Ray worker (hf)")
    group.add_argument("--no-progress", action="store_true")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "generate",
        help="make CIR triplets from unannotated images (captions + LLM, pair VLM or templates)",
        description="Sample image pairs, caption them and write the change text; resumable.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for add in (_add_source, _add_sampler, _add_models, add_endpoint_arguments, _add_runner):
        add(parser)
    parser.set_defaults(handler=run)


def _endpoint(args: argparse.Namespace, model: str | None, url: str | None, **fields: object):
    from opencir.generate.client import EndpointConfig

    if not model:
        raise ValueError(
            "this captioner/writer needs a model name (--caption-model / --writer-model)"
        )
    if args.concurrency is not None:
        fields["concurrency"] = args.concurrency
    return EndpointConfig(
        model=model,
        base_url=url or args.endpoint,
        api_key=os.environ.get(args.api_key_env),
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        adaptive_concurrency=not args.fixed_concurrency,
        rate_per_s=args.rate,
        temperature=args.temperature,
        image_max_side=args.image_side,
        **fields,
    )  # type: ignore[arg-type]


def build_config(args: argparse.Namespace):
    """The :class:`GenerateConfig` of parsed arguments (the library never sees argparse)."""
    from opencir.data.collections import CollectionSpec, parse_where
    from opencir.generate.captioners import CaptionerConfig
    from opencir.generate.pipeline import GenerateConfig
    from opencir.generate.prompts import CAPTION_PROMPT
    from opencir.generate.sampling import SamplerConfig

    source = CollectionSpec(
        path=args.images,
        kind=args.kind,
        key_field=args.key_field,
        file_field=args.file_field,
        where=parse_where(args.where),
        **({"max_pixels": args.max_pixels} if args.max_pixels else {}),
    )
    sampler = SamplerConfig(
        kind=args.sampler,
        class_field=args.class_field,
        k=args.k,
        min_distance=args.min_distance,
        max_distance=args.max_distance,
        embeddings=args.embeddings,
        embed_model=args.embed_model,
    )
    caption_endpoint = None
    if args.captioner == "openai":
        caption_endpoint = _endpoint(
            args, args.caption_model, args.caption_endpoint, max_tokens=args.max_tokens or 200
        )
    captioner = CaptionerConfig(
        kind=args.captioner,
        field=args.caption_field,
        prompt=_text_or_file(args.caption_prompt) or CAPTION_PROMPT,
        endpoint=caption_endpoint,
        hf_model=args.caption_model,
        device=args.hf_device,
        batch_size=args.hf_batch_size,
        prompt_mode=args.prompt_mode,
    )
    return GenerateConfig(
        source=source,
        out=args.out,
        pairs=args.pairs,
        seed=args.seed,
        sampler=sampler,
        captioner=captioner,
        writer=writer_config(args),
        shard_size=args.shard_size,
        format=args.format,
        cache_dir=args.cache_dir,
        verify_images=not args.no_verify_images,
        retry_failed=not args.no_retry_failed,
        engine=args.engine,
        ray_address=args.ray_address,
        ray_workers=args.ray_workers,
        ray_gpus_per_worker=args.ray_gpus,
        progress=not args.no_progress,
    )


def writer_config(args: argparse.Namespace):
    """The :class:`WriterConfig` of the options :func:`add_writer_arguments` adds."""
    from opencir.generate.validation import ValidationConfig
    from opencir.generate.writers import WriterConfig

    writer_endpoint = None
    if args.writer in ("llm", "pair-vlm"):
        writer_endpoint = _endpoint(
            args,
            args.writer_model,
            args.writer_endpoint,
            api=args.writer_api,
            max_tokens=args.max_tokens or 40,
            stop=tuple(args.stop),
        )
    return WriterConfig(
        kind=args.writer,
        endpoint=writer_endpoint,
        prompt=_text_or_file(args.writer_prompt),
        validation=ValidationConfig(max_words=args.max_words),
        reject_retries=args.reject_retries,
        attributes_field=args.attributes_field,
        hf_model=args.writer_model if args.writer == "hf" else None,
        device=args.hf_device,
        batch_size=args.hf_batch_size,
    )


def quiet_request_logs() -> None:
    """One INFO line per model request drowns the progress: warnings only."""
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from opencir.generate.pipeline import generate

    quiet_request_logs()
    report = generate(build_config(args))
    print(report.summary())
    if report.triplets == 0:
        log.error("no triplets were produced: see %s/failures.jsonl", args.out)
        return 1
    return 0
