"""``opencir search``: one composed query against an index, as a ranked table (and a grid PNG)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opencir.index import SearchResult


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "search",
        help="search an index with a reference image (or gallery id) and a text",
        description="Composed search: the reference is --image FILE or --id N (a gallery id).",
    )
    parser.add_argument("--index", required=True, help="index folder")
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--image", help="reference image file")
    reference.add_argument("--id", type=int, help="gallery id of the reference")
    parser.add_argument("--text", required=True, help="what to change in the reference")
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--model", default=None, help="model (default: the one the index records)")
    parser.add_argument("--grid", default=None, help="also write a result grid PNG here")
    parser.add_argument(
        "--keep-reference", action="store_true", help="with --id: keep the reference in results"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from opencir.cli.index import prepare_faiss
    from opencir.data.images import load_image
    from opencir.index import QueryLimits, Searcher, render_grid

    prepare_faiss()
    searcher = Searcher.open(args.index, args.model, limits=QueryLimits(max_k=10_000))
    try:
        image = load_image(args.image) if args.image else None
        result = searcher.search(
            args.text,
            image=image,
            reference_id=args.id,
            k=args.k,
            exclude_reference=not args.keep_reference,
        )
        if args.grid:
            if image is None and result.reference is not None:
                image = searcher.load_gallery_image(result.reference)
            render_grid(image, result.text, result.hits, args.grid)
    finally:
        searcher.close()
    print(_as_json(result) if args.json else _as_table(result))
    if args.grid:
        print(f"grid written to {args.grid}")
    return 0


def _as_table(result: SearchResult) -> str:
    rows = [(str(h.rank), f"{h.score:.4f}", str(h.item.id), h.item.name) for h in result.hits]
    header = ("rank", "score", "id", "name")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
             for r in [header, *rows]]  # fmt: skip
    note = " (text truncated to the model's token window)" if result.text_truncated else ""
    return f"query: {result.text!r}{note}\n" + "\n".join(lines)


def _as_json(result: SearchResult) -> str:
    hits = [
        {"rank": h.rank, "score": h.score, "id": h.item.id, "name": h.item.name,
         "path": str(h.item.path)}
        for h in result.hits
    ]  # fmt: skip
    return json.dumps(
        {"text": result.text, "text_truncated": result.text_truncated, "results": hits}
    )
