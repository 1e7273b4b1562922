"""FashionIQ (Wu et al., CVPR 2021) in its official layout.

Expected under ``data_root``::

    captions/cap.{dress,shirt,toptee}.{train,val,test}.json     target, candidate, captions[2]
    image_splits/split.{dress,shirt,toptee}.{train,val,test}.json   list of image names
    images/<name>.png                                            (.jpg / .jpeg also accepted)

Protocol (the common one, as SEARLE / CLIP4Cir): each category is ranked against its own
category gallery, R@{10,50} per category and their mean; the two captions are stripped of
surrounding ``.?, `` and joined with " and "; the reference is kept in the gallery.
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
    existing_folders,
    make_options,
    resolve_split,
    unique,
    warn_outside_gallery,
)

BENCHMARK = "fashioniq"
CATEGORIES = ("dress", "shirt", "toptee")
SPLITS = {"train": "train", "val": "val", "dev": "val", "test": "test"}
EXTENSIONS = (".png", ".jpg", ".jpeg")
STRIP = ".?, "  # what SEARLE and CLIP4Cir strip from both ends of each caption


@dataclass(frozen=True)
class FashionIQOptions:
    """Protocol switches for FashionIQ.

    ``category``: ``"dress"``, ``"shirt"``, ``"toptee"`` or ``"all"`` (each query then carries
    its category's gallery and group, so per-category and mean numbers come out).
    ``caption_join``: word joining the two captions. ``strip_captions``: strip ``.?, `` ends.
    ``both_orders``: also emit the reversed caption order as a second query of the same pair
    (``meta["pair"]``); recall over all queries is then the mean of both orders.
    ``exclude_reference``: remove the reference from its ranking (SEARLE keeps it).
    """

    category: str = "all"
    caption_join: str = "and"
    both_orders: bool = False
    strip_captions: bool = True
    exclude_reference: bool = False

    def __post_init__(self) -> None:
        if self.category not in (*CATEGORIES, "all"):
            raise ValueError(
                f"fashioniq: unknown category {self.category!r}; "
                f"expected one of {[*CATEGORIES, 'all']}"
            )

    def text(self, captions: list[str]) -> str:
        parts = [c.strip(STRIP) if self.strip_captions else c for c in captions]
        word = self.caption_join.strip()
        return (f" {word} " if word else " ").join(parts)


def query_category(query: CIRQuery) -> str:
    """Group queries by category (per-category numbers and their mean)."""
    return query.meta["category"]


def _captions(src: JsonFile, record: dict, index: int) -> list[str]:
    captions = src.field(record, "captions", index)
    if (
        not isinstance(captions, list)
        or not captions
        or not all(isinstance(c, str) for c in captions)
    ):
        raise src.malformed(f"record {index}: field 'captions' must be a non-empty list of strings")
    return captions


def _queries(src: JsonFile, category: str, split: str, opts: FashionIQOptions, gallery: tuple):
    """The queries of one category file (two per pair with ``both_orders``)."""
    hidden = split == "test"
    records = src.records(
        ("candidate", "captions") if hidden else ("candidate", "target", "captions")
    )
    per_query_gallery = gallery if opts.category == "all" else None
    out = []
    for index, record in enumerate(records):
        captions = _captions(src, record, index)
        target = record.get("target")
        orders = [captions, captions[::-1]] if opts.both_orders else [captions]
        pair = f"{category}/{index}"
        for order, caps in enumerate(orders):
            out.append(
                CIRQuery(
                    id=pair if order == 0 else f"{pair}/reversed",
                    reference=str(record["candidate"]),
                    text=opts.text(caps),
                    targets=(str(target),) if target is not None else (),
                    gallery=per_query_gallery,
                    meta={"category": category, "pair": pair, "order": order},
                )
            )
    return out


def _category(root: Path, category: str, split: str, opts: FashionIQOptions):
    """Queries, gallery and files of one category."""
    captions = JsonFile(BENCHMARK, root / "captions" / f"cap.{category}.{split}.json")
    names = JsonFile(BENCHMARK, root / "image_splits" / f"split.{category}.{split}.json")
    listed = names.load(list)
    if not all(isinstance(n, str) for n in listed):
        raise names.malformed("expected a list of image names (strings)")
    gallery = unique(listed)
    return _queries(captions, category, split, opts, gallery), gallery, (captions.path, names.path)


def load_fashioniq(data_root: str | Path, split: str = "val", **options) -> BenchmarkSplit:
    """Load FashionIQ for one category or ``category="all"`` (the default)."""
    opts = make_options(FashionIQOptions, BENCHMARK, options)
    name = resolve_split(BENCHMARK, split, SPLITS)
    root = check_root(BENCHMARK, data_root)
    cats = CATEGORIES if opts.category == "all" else (opts.category,)
    parts = [_category(root, c, name, opts) for c in cats]
    queries = [q for part in parts for q in part[0]]
    gallery = unique(k for part in parts for k in part[1])
    folders = ImageFolders(
        BENCHMARK, existing_folders(BENCHMARK, root, ["images"], "images folder"), EXTENSIONS
    )
    keys = unique(
        [*gallery, *(q.reference for q in queries), *(t for q in queries for t in q.targets)]
    )
    table = ImageTable({k: ImageEntry(folders, k) for k in keys})
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
            "gallery": "each category's image_splits file (per-query gallery with 'all')",
            "caption_strip": STRIP if opts.strip_captions else "",
            **asdict(opts),
        },
        ks=(10, 50),
        metrics=("recall",),
        exclude_reference=opts.exclude_reference,
        group=query_category,
        fingerprint_files=tuple(str(p) for part in parts for p in part[2]),
    )
