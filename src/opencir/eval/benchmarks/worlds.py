"""ShapesCIR and EmojiCIR, the miniature worlds, as benchmark splits.

Layout (written by :mod:`opencir.data.worlds`)::

    ROOT/world.json  ROOT/images.jsonl  ROOT/images/<id>.png  ROOT/queries.{val,test}.jsonl

Protocol: the ``test`` split ranks every test-side image against queries.test.jsonl; ``val``
(alias ``dev``) ranks every train-side image against queries.val.jsonl. The reference is
removed from its own ranking (``exclude_reference``): every query in these worlds changes
something, so the reference is never a valid answer. Ground truth is every gallery image whose
attribute set equals the edited reference (several per query where the world has twins).
Metrics: Recall@K and mAP@K at K = 1, 5, 10, 50; results are grouped by modification kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from opencir.data.worlds.common import (
    IMAGES_FILE,
    WORLD_FILE,
    WorldInfo,
    iter_jsonl,
    queries_file,
    read_world_info,
)
from opencir.eval.benchmark import BenchmarkSplit, CIRQuery
from opencir.eval.benchmarks.common import (
    MalformedDatasetFileError,
    MissingDatasetFileError,
    load_rgb,
    make_options,
    resolve_split,
)

KS = (1, 5, 10, 50)
GENERATORS = {"shapescir": "generate_shapes_world", "emojicir": "generate_emoji_world"}
CLI_NAMES = {"shapescir": "shapes", "emojicir": "emoji"}
SPLITS = {"test": "test", "val": "val", "dev": "val"}  # user name -> queries file split
_SIDE = {"test": "test", "val": "train"}  # queries split -> side whose images form the gallery
_IMAGE_FIELDS = ("id", "file", "split")
_QUERY_FIELDS = ("id", "reference", "text", "targets", "kind")


@dataclass(frozen=True)
class WorldOptions:
    """Protocol switches. ``exclude_reference``: drop the reference from its ranking (on)."""

    exclude_reference: bool = True


def _how_to_generate(benchmark: str | None) -> str:
    names = [benchmark] if benchmark in GENERATORS else sorted(GENERATORS)
    ways = "; ".join(
        f"opencir.data.worlds.{GENERATORS[b]}(root) or `opencir world {CLI_NAMES[b]} --out ROOT`"
        for b in names
    )
    return f"\n  generate it with {ways}"


def _world_info(root: Path, benchmark: str | None) -> WorldInfo:
    """``world.json`` of ``root``, with errors that say how to make the world."""
    label = benchmark or "world"
    if not root.is_dir():
        raise MissingDatasetFileError(
            f"{label}: world folder not found; expected at\n    {root}{_how_to_generate(benchmark)}"
        )
    try:
        info = read_world_info(root)
    except FileNotFoundError as err:
        raise MissingDatasetFileError(
            f"{label}: file '{WORLD_FILE}' not found (the world is missing or was never "
            f"finished); expected at\n    {root / WORLD_FILE}{_how_to_generate(benchmark)}"
        ) from err
    except ValueError as err:
        raise MalformedDatasetFileError(f"{label}: {err}{_how_to_generate(benchmark)}") from err
    if info.world not in GENERATORS:
        raise MalformedDatasetFileError(
            f"{root / WORLD_FILE}: unknown world {info.world!r}; "
            f"expected one of {sorted(GENERATORS)}"
        )
    if benchmark is not None and benchmark != info.world:
        raise ValueError(f"{root} holds a {info.world} world, not {benchmark}")
    return info


def _rows(path: Path, benchmark: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of one JSONL file of the world, each checked for ``required`` fields."""
    if not path.is_file():
        raise MissingDatasetFileError(
            f"{benchmark}: file '{path.name}' not found; expected at\n    {path}"
            f"{_how_to_generate(benchmark)}"
        )
    try:
        rows = list(iter_jsonl(path))
    except ValueError as err:
        raise MalformedDatasetFileError(f"{benchmark}: {err}{_how_to_generate(benchmark)}") from err
    for number, row in enumerate(rows, 1):
        missing = [f for f in required if f not in row]
        if missing:
            raise MalformedDatasetFileError(
                f"{benchmark}: malformed file {path}: row {number} lacks field(s) {missing}"
            )
    return rows


@dataclass(frozen=True)
class WorldImages:
    """``load_image`` of a world split: image id → RGB image (picklable for DataLoaders)."""

    root: Path
    files: dict[str, str]

    def __call__(self, key: str) -> Image.Image:
        file = self.files.get(key)
        if file is None:
            raise KeyError(f"unknown image key {key!r}; not part of this benchmark split")
        return load_rgb(self.root / file)


def query_kind(query: CIRQuery) -> str:
    """Group queries by modification kind (colour, shape, ..., skin_tone, gender, ...)."""
    return str(query.meta.get("kind", "unknown"))


def _query(row: dict[str, Any], gallery: set[str], path: Path, benchmark: str) -> CIRQuery:
    targets = row["targets"]
    if not isinstance(targets, list) or not targets:
        raise MalformedDatasetFileError(
            f"{benchmark}: malformed file {path}: query {row['id']!r} needs a non-empty "
            "'targets' list"
        )
    outside = [k for k in [row["reference"], *targets] if k not in gallery]
    if outside:
        raise MalformedDatasetFileError(
            f"{benchmark}: malformed file {path}: query {row['id']!r} names images outside the "
            f"split's gallery: {outside[:3]}; regenerate the world{_how_to_generate(benchmark)}"
        )
    meta = {k: row.get(k) for k in ("kind", "style", "edit", "distractors")}
    return CIRQuery(
        str(row["id"]), str(row["reference"]), str(row["text"]), tuple(map(str, targets)), meta=meta
    )


def load_world_split(
    root: str | Path, split: str = "test", benchmark: str | None = None, **options: Any
) -> BenchmarkSplit:
    """Load one split (``test`` or ``val``) of a ShapesCIR/EmojiCIR world at ``root``.

    ``benchmark`` ("shapescir" | "emojicir") is checked against ``world.json`` (``None``:
    take it from there). ``options`` are :class:`WorldOptions` fields.
    """
    root = Path(root).expanduser().resolve()
    if benchmark is not None and benchmark not in GENERATORS:
        raise ValueError(
            f"unknown world benchmark {benchmark!r}; expected one of {sorted(GENERATORS)}"
        )
    if split == "train":
        raise ValueError(
            f"{benchmark or 'world'}: the train side is an unannotated image collection (its "
            "optional queries.train.jsonl is supervised training data); evaluate on 'val' "
            "(train-side images) or 'test'"
        )
    info = _world_info(root, benchmark)
    name = info.world
    opts = make_options(WorldOptions, name, options)
    query_split = resolve_split(name, split, SPLITS)
    side = _SIDE[query_split]
    images_path, queries_path = root / IMAGES_FILE, root / queries_file(query_split)
    files = {
        str(r["id"]): str(r["file"])
        for r in _rows(images_path, name, _IMAGE_FIELDS)
        if r["split"] == side
    }
    gallery = set(files)
    queries = [
        _query(r, gallery, queries_path, name) for r in _rows(queries_path, name, _QUERY_FIELDS)
    ]
    return BenchmarkSplit(
        benchmark=name,
        split=query_split,
        gallery=list(files),
        queries=queries,
        load_image=WorldImages(root, files),
        protocol=_protocol(info, query_split, side, opts),
        ks=KS,
        metrics=("recall", "map"),
        exclude_reference=opts.exclude_reference,
        group=query_kind,
        fingerprint_files=[str(images_path), str(queries_path)],
    )


def _protocol(info: WorldInfo, split: str, side: str, opts: WorldOptions) -> dict[str, Any]:
    """Every switch that changes the numbers, plus the world's own parameters."""
    return {
        "gallery": f"every {side}-side image of the world",
        "queries": queries_file(split),
        "exclude_reference": opts.exclude_reference,
        "exclude_reference_why": "every query changes something, so the reference never answers",
        "ground_truth": "every gallery image whose attribute set equals the edited reference",
        "recall_ks": list(KS),
        "map_ks": list(KS),
        "group": "modification kind",
        "world": info.to_json(),
    }


def load_shapescir(root: str | Path, split: str = "test", **options: Any) -> BenchmarkSplit:
    """ShapesCIR split; see :func:`load_world_split`."""
    return load_world_split(root, split, "shapescir", **options)


def load_emojicir(root: str | Path, split: str = "test", **options: Any) -> BenchmarkSplit:
    """EmojiCIR split; see :func:`load_world_split`."""
    return load_world_split(root, split, "emojicir", **options)
