"""CIRR (Liu et al., ICCV 2021) in its official release-2 (``rc2``) layout.

Expected under ``data_root`` (the annotation folder may also sit in ``data_root/cirr``)::

    captions/cap.rc2.{train,val,test1}.json       pairid, reference, target_hard, caption, img_set
    image_splits/split.rc2.{train,val,test1}.json image name -> "./dev/dev-0-0-img0.png"
    train/ dev/ test1/                            the NLVR2 images, as the split files point

Protocol (the common one): gallery = every image of the split, reference removed,
R@{1,5,10,50} plus Recall_subset@{1,2,3} over the other five members of the query's image set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from opencir.eval.benchmark import BenchmarkSplit, CIRQuery
from opencir.eval.benchmarks.common import (
    ImageEntry,
    ImageFolders,
    ImageTable,
    JsonFile,
    check_root,
    find_path,
    make_options,
    resolve_split,
    unique,
    warn_outside_gallery,
)

BENCHMARK = "cirr"
VERSION = "rc2"
SPLITS = {"train": "train", "val": "val", "dev": "val", "test": "test1", "test1": "test1"}
ANNOTATION_DIRS = (".", "cirr")


@dataclass(frozen=True)
class CIRROptions:
    """Protocol switches for CIRR.

    ``exclude_reference``: drop the query's reference image from its ranking (official: on).
    """

    exclude_reference: bool = True


def _annotation_dir(root: Path, name: str) -> Path:
    """The folder holding ``captions/`` and ``image_splits/`` (``root`` or ``root/cirr``)."""
    rel = f"captions/cap.{VERSION}.{name}.json"
    found = find_path(BENCHMARK, rel, [root / d for d in ANNOTATION_DIRS], f"file '{rel}'")
    return found.parent.parent


def _query(src: JsonFile, record: dict, index: int, hidden: bool) -> CIRQuery:
    """One CIRR caption record as a query (``hidden``: test1, no target)."""
    reference = str(src.field(record, "reference", index))
    members = src.field(record, "img_set.members", index)
    if not isinstance(members, list):
        raise src.malformed(f"record {index}: field 'img_set.members' must be a list")
    targets = () if hidden else (str(src.field(record, "target_hard", index)),)
    meta = {"img_set_id": record["img_set"].get("id")}
    if not hidden:
        meta["target_soft"] = dict(record.get("target_soft") or {})
    return CIRQuery(
        id=str(src.field(record, "pairid", index)),
        reference=reference,
        text=str(src.field(record, "caption", index)),
        targets=targets,
        subset=tuple(str(m) for m in members if str(m) != reference),
        meta=meta,
    )


def _image_table(images: JsonFile, bases: tuple[Path, ...]) -> ImageTable:
    """Image name → file, from the split file's paths relative to the dataset root."""
    paths = images.load(dict)
    bad = next((k for k, v in paths.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise images.malformed(f"entry {bad!r} must map to a relative image path (a string)")
    folders = ImageFolders(BENCHMARK, unique(bases))
    table = ImageTable({str(k): ImageEntry(folders, v) for k, v in paths.items()})
    table.check_first()
    return table


def load_cirr(data_root: str | Path, split: str = "val", **options) -> BenchmarkSplit:
    """Load one CIRR split (``train``, ``val``/``dev`` or ``test1``/``test``)."""
    opts = make_options(CIRROptions, BENCHMARK, options)
    name = resolve_split(BENCHMARK, split, SPLITS)
    root = check_root(BENCHMARK, data_root)
    ann = _annotation_dir(root, name)
    captions = JsonFile(BENCHMARK, ann / "captions" / f"cap.{VERSION}.{name}.json")
    images = JsonFile(BENCHMARK, ann / "image_splits" / f"split.{VERSION}.{name}.json")
    hidden = name == "test1"
    required = ("pairid", "reference", "caption", "img_set.members")
    records = captions.records(required if hidden else (*required, "target_hard"))
    queries = [_query(captions, r, i, hidden) for i, r in enumerate(records)]
    table = _image_table(images, (root, ann, ann.parent))
    gallery = tuple(table.entries)
    warn_outside_gallery(BENCHMARK, queries, gallery)
    protocol = {
        "benchmark": BENCHMARK,
        "split": name,
        "version": VERSION,
        "gallery": f"all images of image_splits/split.{VERSION}.{name}.json",
        "target": "target_hard",
        "subset": "img_set.members without the reference",
        **asdict(opts),
    }
    return BenchmarkSplit(
        benchmark=BENCHMARK,
        split=name,
        gallery=gallery,
        queries=queries,
        load_image=table,
        protocol=protocol,
        ks=(1, 5, 10, 50),
        metrics=("recall", "recall_subset"),
        subset_ks=(1, 2, 3),
        exclude_reference=opts.exclude_reference,
        fingerprint_files=(str(captions.path), str(images.path)),
    )
