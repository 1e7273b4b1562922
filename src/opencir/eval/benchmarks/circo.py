"""CIRCO (Baldrati et al., ICCV 2023) in its official layout.

Expected under ``data_root``::

    annotations/{val,test}.json          id, reference_img_id, target_img_id, gt_img_ids,
                                         shared_concept, relative_caption (test: no targets)
    COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   "images": [{id, file_name}]
    COCO2017_unlabeled/unlabeled2017/<000000000008>.jpg             the gallery images

Protocol (the common one, as SEARLE / LinCIR): the gallery is the whole COCO 2017 unlabeled
set, the reference is kept, mAP@{5,10,25,50} over all ground truths; R@K counts
``target_img_id`` alone, as the official evaluation (``R_anyGT@K``: any ground truth); the query
text is the relative caption alone. Image keys are the COCO image ids as strings. Val and test
share one gallery, so its cached embeddings serve both.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass
from pathlib import Path

from opencir.eval.benchmark import BenchmarkSplit, CIRQuery
from opencir.eval.benchmarks.common import (
    ImageEntry,
    ImageFolders,
    ImageTable,
    JsonFile,
    check_root,
    existing_folders,
    make_options,
    resolve_split,
    unique,
    warn_outside_gallery,
)

BENCHMARK = "circo"
SPLITS = {"val": "val", "dev": "val", "test": "test"}
PLACEHOLDERS = ("relative_caption", "shared_concept")
DEFAULT_TEMPLATE = "{relative_caption}"
TEMPLATE_WITH_CONCEPT = "{shared_concept} that {relative_caption}"
IMAGE_DIR = "COCO2017_unlabeled/unlabeled2017"
IMAGE_INFO = "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"


@dataclass(frozen=True)
class CIRCOOptions:
    """Protocol switches for CIRCO.

    ``query_template``: builds the query text from ``{relative_caption}`` and
    ``{shared_concept}`` (default: the relative caption alone; see ``TEMPLATE_WITH_CONCEPT``).
    ``exclude_reference``: remove the reference from its ranking (default: kept).
    """

    query_template: str = DEFAULT_TEMPLATE
    exclude_reference: bool = False

    def __post_init__(self) -> None:
        bad = [n for n in self.fields if n not in PLACEHOLDERS]
        if bad:
            raise ValueError(
                f"circo: query_template uses unknown placeholder(s) {bad}; "
                "expected only {relative_caption} and {shared_concept}"
            )

    @property
    def fields(self) -> tuple[str, ...]:
        """The annotation fields the template needs."""
        try:
            parsed = list(string.Formatter().parse(self.query_template))
        except ValueError as err:
            raise ValueError(f"circo: bad query_template {self.query_template!r}: {err}") from err
        return tuple(f for _, f, _, _ in parsed if f is not None)


def _query(src: JsonFile, record: dict, index: int, opts: CIRCOOptions, hidden: bool) -> CIRQuery:
    values = {f: str(src.field(record, f, index)) for f in opts.fields}
    targets: tuple[str, ...] = ()
    meta = {"shared_concept": record.get("shared_concept")}
    if not hidden:
        target = src.field(record, "target_img_id", index)
        gts = src.field(record, "gt_img_ids", index)
        if not isinstance(gts, list):
            raise src.malformed(f"record {index}: field 'gt_img_ids' must be a list of image ids")
        targets = unique(str(i) for i in [target, *gts])
        meta["target_img_id"] = str(target)
    return CIRQuery(
        id=str(src.field(record, "id", index)),
        reference=str(src.field(record, "reference_img_id", index)),
        text=opts.query_template.format(**values),
        targets=targets,
        meta=meta,
    )


def _gallery(root: Path) -> tuple[tuple[str, ...], ImageTable, Path]:
    """Gallery keys and image table from the COCO 2017 unlabeled image list."""
    info = JsonFile(BENCHMARK, root / IMAGE_INFO)
    records = info.records(("id", "file_name"), key="images")
    folders = ImageFolders(
        BENCHMARK, existing_folders(BENCHMARK, root, [IMAGE_DIR], "COCO 2017 unlabeled images")
    )
    table = {str(r["id"]): ImageEntry(folders, str(r["file_name"])) for r in records}
    return tuple(table), ImageTable(table), info.path


def load_circo(data_root: str | Path, split: str = "val", **options) -> BenchmarkSplit:
    """Load CIRCO ``val`` or ``test`` (test has no ground truth: submission only)."""
    opts = make_options(CIRCOOptions, BENCHMARK, options)
    name = resolve_split(BENCHMARK, split, SPLITS)
    root = check_root(BENCHMARK, data_root)
    src = JsonFile(BENCHMARK, root / "annotations" / f"{name}.json")
    hidden = name == "test"
    required = ("id", "reference_img_id", *opts.fields)
    records = src.records(required if hidden else (*required, "target_img_id", "gt_img_ids"))
    queries = [_query(src, r, i, opts, hidden) for i, r in enumerate(records)]
    gallery, table, info_path = _gallery(root)
    table.check_first()
    warn_outside_gallery(BENCHMARK, queries, gallery)
    return BenchmarkSplit(
        benchmark=BENCHMARK,
        split=name,
        gallery=gallery,
        queries=queries,
        load_image=table,
        protocol={
            "benchmark": BENCHMARK,
            "split": name,
            "gallery": "COCO 2017 unlabeled (image_info_unlabeled2017.json)",
            "ground_truth": "target_img_id + gt_img_ids",
            "recall": "R@K: target_img_id only (official); R_anyGT@K: any ground truth",
            **asdict(opts),
        },
        ks=(5, 10, 25, 50),
        metrics=("map", "recall"),
        exclude_reference=opts.exclude_reference,
        fingerprint_files=(str(src.path), str(info_path)),
        recall_first_target=True,
        gallery_files=(str(info_path),),
    )
