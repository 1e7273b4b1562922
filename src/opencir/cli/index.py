"""``opencir index``: build, extend, shrink, inspect and verify a gallery index."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opencir.index import BuildConfig


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("index", help="build and maintain a gallery index (FAISS + metadata)")
    actions = parser.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    _register_build(actions)
    _register_add(actions)
    _register_remove(actions)
    info = actions.add_parser("info", help="print an index's manifest")
    info.add_argument("--index", required=True, help="index folder")
    info.set_defaults(handler=run_info)
    verify = actions.add_parser("verify", help="check every file of an index against its checksums")
    verify.add_argument("--index", required=True, help="index folder")
    verify.set_defaults(handler=run_verify)


def _embedding_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call")
    parser.add_argument("--workers", type=int, default=4, help="image-decoding threads")
    parser.add_argument(
        "--shard-size", type=int, default=1024, help="images per resumable shard (default 1024)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _register_build(actions: argparse._SubParsersAction) -> None:
    build = actions.add_parser(
        "build",
        help="embed an image folder or list and write an index",
        description="Embed every image of SRC and write INDEX. Re-running an interrupted "
        "build resumes it.",
    )
    build.add_argument(
        "--model",
        required=True,
        help="checkpoint folder or Hugging Face repo OWNER/REPO, NAME@HF_DIR, or NAME",
    )
    build.add_argument(
        "--images", required=True, help="image folder (recursive), or a .txt/.jsonl list"
    )
    build.add_argument("--out", required=True, help="index folder to write")
    build.add_argument(
        "--factory",
        default="Flat",
        help="FAISS index factory string: Flat (exact, default), IVF1024,Flat, HNSW32, "
        "IVF4096,PQ32, ... (trained on a sample)",
    )
    build.add_argument("--train-size", type=int, default=100_000, help="training sample size")
    build.add_argument(
        "--search-params", default=None, help='e.g. "nprobe=32" (default: chosen per factory)'
    )
    build.add_argument("--overwrite", action="store_true", help="replace an existing index")
    _embedding_options(build)
    build.set_defaults(handler=run_build)


def _register_add(actions: argparse._SubParsersAction) -> None:
    add = actions.add_parser("add", help="embed and add images not yet in an index")
    add.add_argument("--index", required=True, help="index folder")
    add.add_argument("--images", required=True, help="image folder or .txt/.jsonl list")
    add.add_argument("--model", default=None, help="model (default: the one the index records)")
    _embedding_options(add)
    add.set_defaults(handler=run_add)


def _register_remove(actions: argparse._SubParsersAction) -> None:
    remove = actions.add_parser("remove", help="remove images from an index")
    remove.add_argument("--index", required=True, help="index folder")
    remove.add_argument("--id", type=int, nargs="*", default=[], help="ids to remove")
    remove.add_argument("--name", nargs="*", default=[], help="names to remove")
    remove.add_argument(
        "--missing", action="store_true", help="remove images whose file no longer exists"
    )
    remove.set_defaults(handler=run_remove)


def _config(args: argparse.Namespace, **extra: Any) -> BuildConfig:
    from opencir.index import BuildConfig

    return BuildConfig(
        batch_size=args.batch_size,
        workers=args.workers,
        shard_size=args.shard_size,
        progress=not args.no_progress,
        **extra,
    )


def prepare_faiss() -> None:
    """Tune FAISS for this process: the CLI owns it, while the library leaves process-wide
    settings to its caller."""
    from opencir.index.tuning import configure_faiss

    configure_faiss()


def run_build(args: argparse.Namespace) -> int:
    from opencir.index import build_index, resolve_model

    prepare_faiss()
    config = _config(
        args,
        factory=args.factory,
        train_size=args.train_size,
        search_params=args.search_params,
        overwrite=args.overwrite,
    )
    manifest = build_index(resolve_model(args.model), args.images, args.out, config, args.model)
    print(f"indexed {manifest.count} images into {args.out} ({manifest.factory})")
    if manifest.skipped:
        print(f"skipped unreadable images: {dict(manifest.skipped)} (see {args.out}/skipped.jsonl)")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from opencir.index import add_images, read_manifest, resolve_model

    prepare_faiss()
    spec = args.model or read_manifest(args.index).model.spec
    manifest = add_images(args.index, args.images, resolve_model(spec), _config(args))
    print(f"index {args.index} now holds {manifest.count} images")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from opencir.cli import UsageError
    from opencir.index import remove_images

    if not (args.id or args.name or args.missing):
        raise UsageError("say what to remove: --id, --name or --missing")
    prepare_faiss()
    manifest = remove_images(args.index, args.id, args.name, missing_files=args.missing)
    print(f"index {args.index} now holds {manifest.count} images")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from opencir.index import read_manifest

    print(json.dumps(read_manifest(args.index).to_json(), indent=2))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from opencir.index import GalleryIndex

    prepare_faiss()
    index = GalleryIndex.open(args.index, verify=True)
    print(f"{args.index}: OK ({len(index)} images, all checksums match)")
    index.close()
    return 0
