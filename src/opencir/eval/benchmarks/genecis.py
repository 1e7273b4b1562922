"""GeneCIS (Vaze et al., CVPR 2023) in the official JSON release.

Expected under ``data_root`` (task files in ``genecis/``, ``annotations/`` or the root)::

    genecis/{focus,change}_attribute.json   reference/target/gallery: {image_id, instance_bbox}
    genecis/{focus,change}_object.json      reference/target/gallery: {val_image_id}
    VG_All/<image_id>.jpg                   Visual Genome 1.2 (or VG_100K/ + VG_100K_2/)
    val2017/<000000000139>.jpg              COCO 2017 val

Every record also carries ``condition`` (the text). Protocol (the official one): each query
ranks only its own gallery ``[target] + gallery``, R@{1,2,3} per task and their mean.
Attribute tasks crop the instance box the way the official loader does: the box is grown
by ``0.7 x`` its size towards the top-left (``left = x - 0.7w``, ``right = left + 1.7w``,
clipped to the image) and the crop is padded to a square with black.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from opencir.eval.benchmark import BenchmarkSplit, CIRQuery
from opencir.eval.benchmarks.common import (
    ImageEntry,
    ImageFolders,
    ImageTable,
    JsonFile,
    check_root,
    existing_folders,
    find_path,
    make_options,
    resolve_split,
    unique,
)

BENCHMARK = "genecis"
TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
ATTRIBUTE_TASKS = ("focus_attribute", "change_attribute")
SPLITS = {"test": "test", "val": "test"}  # GeneCIS has one evaluation set
ANNOTATION_DIRS = ("genecis", "annotations", ".")
VG_DIRS = (
    "VG_All",
    "VG_100K",
    "VG_100K_2",
    "Visual_Genome/VG_All",
    "Visual_Genome/VG_100K",
    "Visual_Genome/VG_100K_2",
)
COCO_DIRS = ("val2017", "coco/val2017", "COCO_val2017")


@dataclass(frozen=True)
class GeneCISOptions:
    """Protocol switches for GeneCIS.

    ``task``: one of ``TASKS`` or ``"all"``. ``crop_dilation`` / ``pad_square``: how attribute
    tasks crop the instance box (official: 0.7 and True; 0 and False crop the bare box).
    """

    task: str = "all"
    crop_dilation: float = 0.7
    pad_square: bool = True

    def __post_init__(self) -> None:
        if self.task not in (*TASKS, "all"):
            raise ValueError(
                f"genecis: unknown task {self.task!r}; expected one of {[*TASKS, 'all']}"
            )
        if self.crop_dilation < 0:
            raise ValueError(f"genecis: crop_dilation must be >= 0, got {self.crop_dilation}")


@dataclass(frozen=True)
class BoxCrop:
    """Crop one ``[x, y, w, h]`` instance box as the official GeneCIS loader does."""

    box: tuple[float, float, float, float]
    dilation: float = 0.7
    pad_square: bool = True

    def __call__(self, image: Image.Image) -> Image.Image:
        x, y, w, h = self.box
        d = self.dilation
        if d:
            left, top = max(0.0, x - d * w), max(0.0, y - d * h)
            right = min(image.width, left + (1 + d) * w)
            bottom = min(image.height, top + (1 + d) * h)
        else:
            left, top, right, bottom = x, y, x + w, y + h
        image = image.crop(tuple(round(v) for v in (left, top, right, bottom)))
        return _pad_square(image) if self.pad_square else image


def _pad_square(image: Image.Image) -> Image.Image:
    """Centre the image on a black square canvas of its longer side."""
    side = max(image.size)
    if image.width == image.height:
        return image
    canvas = Image.new(image.mode, (side, side))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def query_task(query: CIRQuery) -> str:
    """Group queries by task (per-task numbers and their mean)."""
    return query.meta["task"]


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class _Reader:
    """Turns the image dicts of one task file into keys and image entries."""

    src: JsonFile
    attribute: bool
    folders: ImageFolders
    opts: GeneCISOptions

    def image(self, item: Any, index: int, where: str) -> tuple[str, ImageEntry]:
        need = ("image_id", "instance_bbox") if self.attribute else ("val_image_id",)
        if not isinstance(item, dict) or any(n not in item for n in need):
            raise self.src.malformed(
                f"record {index}: '{where}' must be an object with field(s) {list(need)}"
            )
        if not self.attribute:
            image_id = _as_int(item["val_image_id"])
            if image_id is None:
                raise self.src.malformed(
                    f"record {index}: '{where}.val_image_id' must be an integer"
                )
            return f"coco:{image_id}", ImageEntry(self.folders, f"{image_id:012d}.jpg")
        box = item["instance_bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise self.src.malformed(
                f"record {index}: '{where}.instance_bbox' must be 4 numbers [x, y, w, h]"
            )
        key = f"vg:{item['image_id']}@{','.join(_num(v) for v in box)}"
        crop = BoxCrop(tuple(float(v) for v in box), self.opts.crop_dilation, self.opts.pad_square)
        return key, ImageEntry(self.folders, f"{item['image_id']}.jpg", crop)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _task(root: Path, task: str, folders: ImageFolders, opts: GeneCISOptions):
    """Queries, image entries and the file path of one task."""
    path = find_path(BENCHMARK, f"{task}.json", [root / d for d in ANNOTATION_DIRS])
    src = JsonFile(BENCHMARK, path)
    reader = _Reader(src, task in ATTRIBUTE_TASKS, folders, opts)
    entries: dict[str, ImageEntry] = {}
    queries = []
    for index, record in enumerate(src.records(("reference", "target", "gallery", "condition"))):
        if not isinstance(record["gallery"], list):
            raise src.malformed(f"record {index}: field 'gallery' must be a list")
        items = [("reference", record["reference"]), ("target", record["target"])]
        items += [(f"gallery[{j}]", g) for j, g in enumerate(record["gallery"])]
        keys = []
        for where, item in items:
            key, entry = reader.image(item, index, where)
            entries[key] = entry
            keys.append(key)
        queries.append(
            CIRQuery(
                id=f"{task}/{index}",
                reference=keys[0],
                text=str(record["condition"]),
                targets=(keys[1],),
                gallery=tuple(keys[1:]),
                meta={"task": task},
            )
        )
    return queries, entries, path


def _folders(root: Path, task: str) -> ImageFolders:
    if task in ATTRIBUTE_TASKS:
        return ImageFolders(
            BENCHMARK, existing_folders(BENCHMARK, root, VG_DIRS, "Visual Genome images")
        )
    return ImageFolders(
        BENCHMARK, existing_folders(BENCHMARK, root, COCO_DIRS, "COCO 2017 val images")
    )


def load_genecis(data_root: str | Path, split: str = "test", **options) -> BenchmarkSplit:
    """Load one GeneCIS task or all four (``task="all"``, the default)."""
    opts = make_options(GeneCISOptions, BENCHMARK, options)
    name = resolve_split(BENCHMARK, split, SPLITS)
    root = check_root(BENCHMARK, data_root)
    tasks = TASKS if opts.task == "all" else (opts.task,)
    parts = [_task(root, t, _folders(root, t), opts) for t in tasks]
    queries = [q for part in parts for q in part[0]]
    entries = {k: e for part in parts for k, e in part[1].items()}
    table = ImageTable(entries)
    table.check_first()
    return BenchmarkSplit(
        benchmark=BENCHMARK,
        split=name,
        gallery=unique(k for q in queries for k in q.gallery or ()),
        queries=queries,
        load_image=table,
        protocol={
            "benchmark": BENCHMARK,
            "split": name,
            "gallery": "per query: [target] + gallery of the record",
            "crop": "attribute tasks: instance box grown by crop_dilation, then pad_square",
            **asdict(opts),
        },
        ks=(1, 2, 3),
        metrics=("recall",),
        exclude_reference=False,
        group=query_task,
        fingerprint_files=tuple(str(part[2]) for part in parts),
    )
