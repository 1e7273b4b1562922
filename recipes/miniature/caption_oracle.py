"""The caption oracle of a backbone in a miniature world: how well a perfect query could do.

Each query of a split is asked with its first target's full alt text instead of its
modification text, through the backbone's own text tower (the ``text-only`` baseline); the
gallery, ground truth and protocol are the split's. The alt text names every object of the
target scene, so this is the best any query encoder can hope for if it learns to say the edited
scene in the backbone's joint space: when even it misses the target at R@1, the gallery
embedding cannot tell the target from its near misses, and no composed-retrieval training on
top of that backbone's target side can rank it first. Prints the split's metrics table and,
with ``--misses`` (ShapesCIR), how the first result of each missed query differs from its
target scene: in the objects' places or number, or — same places — in which attributes.

    .venv/bin/python recipes/miniature/caption_oracle.py WORLD BACKBONE [--benchmark shapescir] \\
        [--split val] [--out FILE.json] [--cache-dir DIR] [--misses]

BACKBONE is a backbone folder (``opencir train`` stage ``pretrain`` writes ``OUT/backbone``)
or an OpenCIR checkpoint folder, as ``opencir eval --pretrained`` takes it.
"""

from __future__ import annotations

import argparse
import collections
import json
from dataclasses import replace
from pathlib import Path

from opencir.eval.benchmark import BenchmarkSplit
from opencir.eval.benchmarks import load_benchmark
from opencir.eval.evaluate import evaluate
from opencir.models import load_model


def world_images(root: Path) -> dict[str, dict]:
    """The world's ``images.jsonl`` rows by image id."""
    rows = (json.loads(line) for line in (root / "images.jsonl").open(encoding="utf-8"))
    return {row["id"]: row for row in rows}


def oracle_split(split: BenchmarkSplit, images: dict[str, dict]) -> BenchmarkSplit:
    """``split`` with every query's text replaced by its first target's alt text (``images``:
    :func:`world_images`)."""
    alt_text = {key: row["alt_text"] for key, row in images.items()}
    queries = [replace(q, text=alt_text[q.targets[0]]) for q in split.queries if q.targets]
    return replace(split, queries=queries)


def scene_difference(target: list[dict], found: list[dict]) -> str:
    """How a found scene differs from the target one (ShapesCIR objects: shape, colour, size,
    position): ``"places or number"`` when the objects do not stand in the same places, else
    the attributes that differ anywhere ("shape", "colour + shape", ...; "none": the same
    scene in another rendering)."""
    at = {o["position"]: o for o in target}
    there = {o["position"]: o for o in found}
    if at.keys() != there.keys():
        return "places or number"
    fields = ("colour", "shape", "size")
    differ = [f for f in fields if any(at[p][f] != there[p][f] for p in at)]
    return " + ".join(differ) or "none"


def miss_kinds(
    split: BenchmarkSplit, rankings: dict[str, list[str]], images: dict[str, dict]
) -> collections.Counter:
    """Per kind of :func:`scene_difference`, how many queries rank that kind of scene first
    instead of a target (``images``: :func:`world_images`)."""
    objects = {key: row["attributes"]["objects"] for key, row in images.items()}
    kinds: collections.Counter = collections.Counter()
    for query in split.queries:
        first = rankings[query.id][0]
        if first not in query.targets:
            kinds[scene_difference(objects[query.targets[0]], objects[first])] += 1
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("world", type=Path, help="world root (images.jsonl)")
    parser.add_argument("backbone", help="backbone or OpenCIR checkpoint folder")
    parser.add_argument("--benchmark", default="shapescir", help="shapescir or emojicir")
    parser.add_argument("--model", default="text-only-vit-mini-minilm", help="text-only NAME")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    parser.add_argument("--cache-dir", help="gallery embedding cache")
    parser.add_argument(
        "--misses", action="store_true", help="how each missed query's first result differs"
    )
    args = parser.parse_args()
    if not (args.world / "images.jsonl").is_file():
        raise SystemExit(f"{args.world} is not a world folder: no images.jsonl in it")
    if args.misses and args.benchmark != "shapescir":
        raise SystemExit(f"--misses reads ShapesCIR scenes; --benchmark is {args.benchmark}")
    images = world_images(args.world)
    split = oracle_split(load_benchmark(args.benchmark, str(args.world), args.split), images)
    model = load_model(args.model, pretrained=args.backbone)
    result = evaluate(model, split, cache_dir=args.cache_dir)
    print(result.format_table())
    if args.out:
        result.to_json(args.out)
    if args.misses:
        kinds = miss_kinds(split, result.rankings, images)
        print(f"first result of the {sum(kinds.values())} missed queries, against the target:")
        for kind, count in kinds.most_common():
            print(f"  {kind}: {count}")


if __name__ == "__main__":
    main()
