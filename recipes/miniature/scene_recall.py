"""Same-scene recall of a model's gallery encoder in a miniature world (a backbone diagnostic).

Every train-side image whose attribute set (its scene) occurs more than once is a query; a
hit is when its nearest *other* train-side image by the model's gallery embedding shows the
same scene. A composed-retrieval model cannot rank the edited scene first among near misses
if its gallery embedding cannot even find a second rendering of one scene, so this bounds
what any training on top of the encoder can reach. Prints R@1 with its 95% bootstrap CI.

    .venv/bin/python recipes/miniature/scene_recall.py WORLD MODEL [--pretrained DIR] \\
        [--limit N] [--out FILE.json]

MODEL is anything ``opencir eval --model`` takes (a checkpoint folder, ``NAME`` with
``--pretrained``); ``image-only-vit-mini-minilm --pretrained BACKBONE`` measures a backbone.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image

from opencir.eval.stats import summarize
from opencir.models import load_model


def scene_hits(root: Path, model, limit: int, batch_size: int = 256) -> list[float]:
    """1.0/0.0 per repeated-scene image among the first ``limit`` train-side images."""
    rows = [json.loads(line) for line in (root / "images.jsonl").open(encoding="utf-8")]
    rows = [r for r in rows if r["split"] == "train"][:limit]
    scenes: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        scenes[json.dumps(row["attributes"], sort_keys=True)].append(i)
    with torch.inference_mode():
        chunks = [
            model.encode_target([Image.open(root / r["file"]).convert("RGB") for r in part])
            for part in (rows[s : s + batch_size] for s in range(0, len(rows), batch_size))
        ]
    gallery = torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1)
    similarity = gallery @ gallery.T
    similarity.fill_diagonal_(float("-inf"))
    nearest = similarity.argmax(dim=1).tolist()
    return [
        float(nearest[i] in members)
        for members in scenes.values()
        if len(members) > 1
        for i in members
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("world", type=Path, help="world root (images.jsonl)")
    parser.add_argument("model", help="checkpoint folder or registry NAME")
    parser.add_argument("--pretrained", help="backbone weights for a registry NAME")
    parser.add_argument("--limit", type=int, default=4000, help="first N train-side images")
    parser.add_argument("--out", type=Path, help="write the result as JSON")
    args = parser.parse_args()
    if not (args.world / "images.jsonl").is_file():
        raise SystemExit(f"{args.world} is not a world folder: no images.jsonl in it")
    model = load_model(args.model, pretrained=args.pretrained)
    hits = scene_hits(args.world, model, args.limit)
    if not hits:
        raise SystemExit(f"no scene occurs twice among the first {args.limit} train-side images")
    summary = summarize(hits)
    print(
        f"{args.model}: same-scene R@1 {summary.mean:.1f} "
        f"[{summary.low:.1f}, {summary.high:.1f}] over {len(hits)} images"
    )
    if args.out:
        result = {
            "model": args.model,
            "pretrained": args.pretrained,
            "limit": args.limit,
            "r_at_1": summary.mean,
            "ci": [summary.low, summary.high],
            "hits": hits,
        }
        args.out.write_text(json.dumps(result) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
