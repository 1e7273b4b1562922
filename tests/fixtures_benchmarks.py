"""Tiny replicas of the official CIRR, FashionIQ, CIRCO and GeneCIS layouts.

Each builder writes a handful of small images and annotation files with the official file
names and fields into a folder (a pytest ``tmp_path``) and returns that folder. Sizes and
counts are module constants so tests can check them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

# CIRR: two image sets of six members per split, two queries per set.
CIRR_SETS = 2
CIRR_MEMBERS = 6
CIRR_QUERIES_PER_SET = 2

# FashionIQ: five images and three pairs per category; shirt images are JPEGs.
FIQ_CATEGORIES = ("dress", "shirt", "toptee")
FIQ_IMAGES = 5
FIQ_PAIRS = 3
FIQ_EXT = {"dress": ".png", "shirt": ".jpg", "toptee": ".png"}

# CIRCO: ten unlabeled COCO images.
CIRCO_IDS = (8, 12, 25, 37, 51, 64, 77, 90, 103, 116)
CIRCO_VAL = [
    {"id": 0, "ref": 8, "target": 12, "gts": [12, 25, 37], "concept": "a dog", "cap": "is asleep"},
    {"id": 1, "ref": 51, "target": 64, "gts": [64], "concept": "a car", "cap": "is red"},
    {"id": 2, "ref": 77, "target": 90, "gts": [90, 103], "concept": "a cake", "cap": "has candles"},
]

# GeneCIS: VG images of VG_SIZE; every attribute record crops VG_BOX.
VG_SIZE = (100, 80)
VG_BOX = [40, 30, 20, 10]
VG_IDS = (1, 2, 3, 4, 5, 6)
COCO_VAL_IDS = (139, 285, 632, 724, 776, 785)
GENECIS_RECORDS = 2
GENECIS_DISTRACTORS = 3


def save_image(path: Path, size: tuple[int, int] = (8, 8), seed: int = 0) -> None:
    """A small solid-colour image (colour varies with ``seed``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((seed * 53) % 256, (seed * 97) % 256, (seed * 151) % 256)
    Image.new("RGB", size, colour).save(path)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- CIRR


def _cirr_split(root: Path, ann: Path, split: str, prefix: str) -> None:
    paths, captions = {}, []
    for s in range(CIRR_SETS):
        members = [f"{prefix}-{s}-{m}-img0" for m in range(CIRR_MEMBERS)]
        for m, name in enumerate(members):
            rel = f"./{prefix}/{s}/{name}.png" if split == "train" else f"./{prefix}/{name}.png"
            paths[name] = rel
            save_image(root / rel, seed=s * 10 + m)
        for q in range(CIRR_QUERIES_PER_SET):
            record = {
                "pairid": 1000 * (1 + ["train", "val", "test1"].index(split)) + 10 * s + q,
                "reference": members[0],
                "caption": f"make it number {q}",
                "img_set": {"id": s, "members": members},
            }
            if split != "test1":
                record["target_hard"] = members[1 + q]
                record["target_soft"] = {members[1 + q]: 1.0}
            captions.append(record)
    write_json(ann / "captions" / f"cap.rc2.{split}.json", captions)
    write_json(ann / "image_splits" / f"split.rc2.{split}.json", paths)


def make_cirr(root: Path, nested: bool = False) -> Path:
    """CIRR train/val/test1; ``nested`` puts captions/ and image_splits/ under ``cirr/``."""
    ann = root / "cirr" if nested else root
    for split, prefix in (("train", "train"), ("val", "dev"), ("test1", "test1")):
        _cirr_split(root, ann, split, prefix)
    return root


# ----------------------------------------------------------------------------- FashionIQ


def make_fashioniq(root: Path) -> Path:
    """FashionIQ val (with targets) and test (without) for the three categories."""
    for c in FIQ_CATEGORIES:
        names = [f"{c.upper()}{i:03d}" for i in range(FIQ_IMAGES)]
        for i, name in enumerate(names):
            save_image(root / "images" / f"{name}{FIQ_EXT[c]}", seed=i)
        for split in ("val", "test"):
            write_json(root / "image_splits" / f"split.{c}.{split}.json", names)
            pairs = []
            for p in range(FIQ_PAIRS):
                pair = {"candidate": names[p], "captions": [f"is {c} {p}.", f"has {p} dots?"]}
                if split == "val":
                    pair["target"] = names[p + 1]
                pairs.append(pair)
            write_json(root / "captions" / f"cap.{c}.{split}.json", pairs)
    return root


# ----------------------------------------------------------------------------- CIRCO


def make_circo(root: Path) -> Path:
    """CIRCO val (with ground truth), test (without) and the COCO unlabeled gallery."""
    base = root / "COCO2017_unlabeled"
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 8, "height": 8} for i in CIRCO_IDS]
    for i, info in enumerate(images):
        save_image(base / "unlabeled2017" / info["file_name"], seed=i)
    write_json(base / "annotations" / "image_info_unlabeled2017.json", {"images": images})
    val = [
        {
            "id": q["id"],
            "reference_img_id": q["ref"],
            "target_img_id": q["target"],
            "gt_img_ids": q["gts"],
            "shared_concept": q["concept"],
            "relative_caption": q["cap"],
        }
        for q in CIRCO_VAL
    ]
    test = [
        {
            "id": 10 + i,
            "reference_img_id": q["ref"],
            "shared_concept": q["concept"],
            "relative_caption": q["cap"],
        }
        for i, q in enumerate(CIRCO_VAL[:2])
    ]
    write_json(root / "annotations" / "val.json", val)
    write_json(root / "annotations" / "test.json", test)
    return root


# ----------------------------------------------------------------------------- GeneCIS


def _genecis_item(attribute: bool, n: int) -> dict[str, Any]:
    if attribute:
        return {"image_id": VG_IDS[n % len(VG_IDS)], "instance_bbox": VG_BOX, "object_name": "cup"}
    return {"val_image_id": COCO_VAL_IDS[n % len(COCO_VAL_IDS)]}


def make_genecis(root: Path) -> Path:
    """The four GeneCIS task files, VG images split over two folders, COCO val images."""
    for n, image_id in enumerate(VG_IDS):
        folder = "VG_100K" if n < len(VG_IDS) // 2 else "VG_100K_2"
        save_image(root / folder / f"{image_id}.jpg", size=VG_SIZE, seed=n)
    for n, image_id in enumerate(COCO_VAL_IDS):
        save_image(root / "val2017" / f"{image_id:012d}.jpg", size=(10, 10), seed=n)
    for task in ("focus_attribute", "change_attribute", "focus_object", "change_object"):
        attribute = task.endswith("attribute")
        records = []
        for r in range(GENECIS_RECORDS):
            items = [_genecis_item(attribute, r + k) for k in range(2 + GENECIS_DISTRACTORS)]
            if attribute:  # distinct boxes make distinct crops of the same image
                items = [
                    {**it, "instance_bbox": [40, 30, 20, 10 + k]} for k, it in enumerate(items)
                ]
            records.append(
                {
                    "reference": items[0],
                    "target": items[1],
                    "gallery": items[2:],
                    "condition": f"{task} condition {r}",
                }
            )
        write_json(root / "genecis" / f"{task}.json", records)
    return root
