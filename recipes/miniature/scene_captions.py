"""Object-level captions for a ShapesCIR world: write them, and probe a backbone with them.

``write`` adds two fields to every image of a world's ``images.jsonl``:

- ``alt_text_swapped``: the alt text of the same scene with two objects' colours swapped
  (``opencir.data.worlds.shapes.binding_swap``: same colours, same shapes, bound
  differently). Pretraining with ``data.negative_caption_field=alt_text_swapped`` makes it a
  hard negative of its image (NegCLIP). The swap is drawn from the image id, so rewriting
  gives the same file.
- ``alt_text_negatives``: that caption and the alt text with one object's shape changed
  (``shape_change``), both hard negatives with ``data.negative_caption_field=alt_text_negatives``.
- ``regions``: one ``{"box", "caption"}`` per object — its grid cell as a box in fractions of
  the image, and "a large red hexagon" — for the region loss (``data.region_field=regions``
  with ``region_loss_weight``).

The file is replaced atomically.

``probe`` measures how well a backbone binds in its image embedding: for each image of a
split, is its embedding closer to its own alt text than to the swapped one? Prints the share
with its 95% bootstrap CI (chance 50%).

``patches`` asks what the ViT's patch tokens know of the object they show: the mean token
over the patches of each object's grid cell, after every block, is read by a linear probe
(multinomial logistic regression) fitted on the objects of the split's first 70% of images
and scored on the rest — shape (six classes, chance 1/6) and colour (eight, 1/8), each with
its 95% bootstrap CI over the scored objects; and, with no fitting, each object's region
embedding (what the region loss trains) is matched to the nearest of the world's 96 object
captions, scored by size, colour and shape. A query encoder that edits "the hexagon" by
cross-attention from the image tokens to the text needs the hexagon's tokens to know they
are one.

    .venv/bin/python recipes/miniature/scene_captions.py write WORLD
    .venv/bin/python recipes/miniature/scene_captions.py probe WORLD BACKBONE \\
        [--split test] [--limit N] [--out FILE.json]
    .venv/bin/python recipes/miniature/scene_captions.py patches WORLD BACKBONE \\
        [--split test] [--limit N] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from PIL import Image

from opencir.atomic import atomic_open
from opencir.data.worlds.phrasing import article
from opencir.data.worlds.shapes import (
    COLOURS,
    SHAPES,
    SIZES,
    Obj,
    binding_swap,
    describe_scene,
    make_scene,
    object_regions,
    shape_change,
)
from opencir.eval.probes import fit_linear_probe
from opencir.eval.stats import summarize
from opencir.models import load_model
from opencir.train.losses import region_embeddings, region_weights


def swapped_caption(record: dict, seed: str) -> str:
    """The alt text of ``record``'s scene with its colours bound differently."""
    scene = make_scene([Obj(**o) for o in record["attributes"]["objects"]])
    return describe_scene(binding_swap(scene, random.Random(seed)))


def write(world: Path) -> int:
    """Add both fields to every record of ``world/images.jsonl``; returns the count."""
    path = world / "images.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for record in records:
        record["alt_text_swapped"] = swapped_caption(record, f"binding-{record['id']}")
        scene = make_scene([Obj(**o) for o in record["attributes"]["objects"]])
        reshaped = describe_scene(shape_change(scene, random.Random(f"shape-{record['id']}")))
        record["alt_text_negatives"] = [record["alt_text_swapped"], reshaped]
        record["regions"] = object_regions(scene)
    with atomic_open(path, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    return len(records)


@torch.no_grad()
def probe(world: Path, backbone: str, split: str, limit: int, batch_size: int = 256) -> list[float]:
    """Per image of ``split``: 1.0 when its own alt text outscores the swapped one."""
    model = load_model("text-only-vit-mini-minilm", pretrained=backbone).eval()
    lines = (world / "images.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["split"] == split][:limit]
    hits: list[float] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = [Image.open(world / r["file"]).convert("RGB") for r in chunk]
        own = [r["alt_text"] for r in chunk]
        swapped = [swapped_caption(r, f"probe-{r['id']}") for r in chunk]
        image = model.encode_target(images)  # the text-only model's query is the caption's
        own_score = (image * model.encode_query(images, own)).sum(-1)
        swapped_score = (image * model.encode_query(images, swapped)).sum(-1)
        hits += (own_score > swapped_score).float().tolist()
    return hits


@torch.no_grad()
def cell_features(
    world: Path, backbone: str, split: str, limit: int, batch_size: int = 250
) -> tuple[list[torch.Tensor], list[dict]]:
    """Per block of the ViT, ``[objects, width]`` mean patch tokens of each object's cell,
    then the region embeddings (the region loss's: the projected patches pooled, normalised);
    and the objects (with ``image``: the index of their image), in the same order."""
    model = load_model("image-only-vit-mini-minilm", pretrained=backbone).eval()
    tower = model.tower
    lines = (world / "images.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["split"] == split][:limit]
    per_block: list[list[torch.Tensor]] = [[] for _ in range(len(tower.vision_layers) + 1)]
    objects: list[dict] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        pixels = model.pixels([Image.open(world / r["file"]).convert("RGB") for r in chunk])
        boxes, images = [], []
        for i, record in enumerate(chunk):
            scene = make_scene([Obj(**o) for o in record["attributes"]["objects"]])
            for obj, region in zip(scene, object_regions(scene), strict=True):
                boxes.append(region["box"])
                images.append(i)
                objects.append({**obj.as_dict(), "image": start + i})
        boxes_t, images_t = torch.tensor(boxes), torch.tensor(images)
        x = tower.vision_tokens(pixels)
        for block in range(len(tower.vision_layers)):
            x = tower.run_block(block, x)
            per_block[block].append(cell_means(x[:, 1:], boxes_t, images_t))
        per_block[-1].append(region_embeddings(tower.patch_embeddings(x), boxes_t, images_t))
    return [torch.cat(rows) for rows in per_block], objects


def cell_means(patches: torch.Tensor, boxes: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Unnormalised mean patch token in each box (the region loss's pooling, before it
    normalises)."""
    weights = region_weights(patches.shape[1], boxes)
    return torch.einsum("rn,rnd->rd", weights, patches[images])


@torch.no_grad()
def region_caption_hits(
    regions: torch.Tensor, objects: list[dict], backbone: str
) -> dict[str, list[float]]:
    """Each object's region embedding matched against the text embeddings of every object
    caption the world can say ("a small red circle": 2 sizes × 8 colours × 6 shapes); per
    attribute, 1.0/0.0 per object: the best caption says it right."""
    text_model = load_model("text-only-vit-mini-minilm", pretrained=backbone).eval()
    captions = [(size, colour, shape) for size in SIZES for colour in COLOURS for shape in SHAPES]
    words = [f"{article(size)} {colour} {shape}" for size, colour, shape in captions]
    blank = [Image.new("RGB", (8, 8))] * len(words)  # the text-only query ignores the image
    best = (regions @ text_model.encode_query(blank, words).T).argmax(1).tolist()
    return {
        field: [float(captions[b][i] == o[field]) for b, o in zip(best, objects, strict=True)]
        for i, field in enumerate(("size", "colour", "shape"))
    }


def patch_probe(features: torch.Tensor, objects: list[dict], field: str) -> list[float]:
    """1.0/0.0 per scored object: the probe fitted on the first 70% of images names its
    ``field`` right."""
    labels = sorted({o[field] for o in objects})
    y = torch.tensor([labels.index(o[field]) for o in objects])
    cut = int(max(o["image"] for o in objects) * 0.7)
    fit = torch.tensor([o["image"] < cut for o in objects])
    mean, sd = features[fit].mean(0), features[fit].std(0) + 1e-6
    x = (features - mean) / sd
    probe = fit_linear_probe(x[fit], y[fit], classes=len(labels))
    with torch.no_grad():
        return (probe(x[~fit]).argmax(1) == y[~fit]).float().tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="add the three fields to a world's images.jsonl")
    w.add_argument("world", type=Path)
    probes = {
        "probe": "own alt text vs swapped: how often the image prefers its own",
        "patches": "what the patch tokens of an object's cell know of it",
    }
    for name, help_text in probes.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("world", type=Path)
        p.add_argument("backbone")
        p.add_argument("--split", default="test")
        p.add_argument("--limit", type=int, default=2000)
        p.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.command == "write":
        print(f"{write(args.world)} images: alt_text_swapped, alt_text_negatives, regions written")
        return
    if args.command == "patches":
        report_patches(args)
        return
    hits = probe(args.world, args.backbone, args.split, args.limit)
    summary = summarize(hits)
    print(
        f"own alt text preferred to the swapped one: {summary.mean:.1f}% "
        f"[{summary.low:.1f}, {summary.high:.1f}] of {len(hits)} {args.split} images (chance 50)"
    )
    if args.out:
        args.out.write_text(json.dumps({"hits": hits, "backbone": args.backbone}) + "\n")


def report_patches(args: argparse.Namespace) -> None:
    """Print (and with ``--out`` write) the patch probe's accuracies, block by block."""
    features, objects = cell_features(args.world, args.backbone, args.split, args.limit)
    *blocks, regions = features
    result: dict = {"backbone": args.backbone, "blocks": []}
    for block, x in enumerate(blocks, start=1):
        row = {field: patch_probe(x, objects, field) for field in ("shape", "colour")}
        result["blocks"].append(row)
        text = ", ".join(f"{field} {_percent(hits)}" for field, hits in row.items())
        print(f"block {block}: {text} of {len(row['shape'])} objects")
    result["region_captions"] = region_caption_hits(regions, objects, args.backbone)
    text = ", ".join(
        f"{field} {_percent(hits)}" for field, hits in result["region_captions"].items()
    )
    print(f"region embedding → nearest of the 96 object captions: {text}")
    if args.out:
        args.out.write_text(json.dumps(result) + "\n")


def _percent(hits: list[float]) -> str:
    summary = summarize(hits)
    return f"{summary.mean:.1f}% [{summary.low:.1f}, {summary.high:.1f}]"


if __name__ == "__main__":
    main()
