"""What every benchmark adapter shares: layout errors, JSON reading, image lookup.

Adapters describe *where* things live; this module does the reading, checks every record
for the fields the adapter needs and turns any problem into one error that names the file,
the full path it was expected at and where the dataset comes from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, UnidentifiedImageError

from opencir.eval.benchmark import CIRQuery

log = logging.getLogger(__name__)

# Where each dataset comes from, in words (no link here can be fetched by the toolkit).
SOURCES: dict[str, str] = {
    "cirr": (
        "annotations from the official CIRR repository (GitHub Cuberick-Orion/CIRR, branch "
        "cirr_dataset); "
        "images are the NLVR2 images, requested through the NLVR2 project (lil-lab/nlvr)"
    ),
    "fashioniq": (
        "captions and image splits from the official Fashion IQ repository "
        "(GitHub XiaoxiaoGuo/fashion-iq); images from the product image URLs listed there "
        "or a community mirror"
    ),
    "circo": (
        "annotations from the official CIRCO repository (GitHub miccunifi/CIRCO); images are "
        "the COCO 2017 unlabeled set and its image_info_unlabeled2017.json from the COCO website"
    ),
    "genecis": (
        "task files from the official GeneCIS repository (GitHub facebookresearch/genecis); "
        "images are Visual Genome 1.2 (visualgenome.org) and COCO 2017 val (COCO website)"
    ),
}


class DatasetLayoutError(Exception):
    """A benchmark dataset on disk does not match its official layout."""


class MissingDatasetFileError(DatasetLayoutError, FileNotFoundError):
    """A file or folder of a benchmark dataset is not where it is expected."""


class MalformedDatasetFileError(DatasetLayoutError, ValueError):
    """A benchmark file exists but cannot be parsed or lacks a required field."""


def _source_hint(benchmark: str) -> str:
    where = SOURCES.get(benchmark, "the dataset's official project page")
    return f"\n  get it from: {where}\n  layouts: docs/BENCHMARKS.md"


def missing(benchmark: str, what: str, tried: Sequence[Path]) -> MissingDatasetFileError:
    """Build the error for a file/folder found at none of the ``tried`` paths."""
    where = "\n".join(f"    {p}" for p in tried)
    return MissingDatasetFileError(
        f"{benchmark}: {what} not found; expected at\n{where}{_source_hint(benchmark)}"
    )


def find_path(benchmark: str, name: str, folders: Sequence[Path], what: str = "") -> Path:
    """Return the first ``folder / name`` that exists, else raise naming every path tried."""
    tried = [Path(folder) / name for folder in folders]
    for path in tried:
        if path.exists():
            return path
    raise missing(benchmark, what or f"'{name}'", tried)


def check_root(benchmark: str, data_root: str | Path) -> Path:
    """Resolve ``data_root`` and make sure it is an existing folder."""
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise missing(benchmark, "dataset folder", [root])
    return root


@dataclass(frozen=True)
class JsonFile:
    """One annotation file of a benchmark: reads it and checks records with clear errors."""

    benchmark: str
    path: Path

    def malformed(self, detail: str) -> MalformedDatasetFileError:
        return MalformedDatasetFileError(
            f"{self.benchmark}: malformed file {self.path}: {detail}{_source_hint(self.benchmark)}"
        )

    def load(self, kind: type = list) -> Any:
        """Parse the file and check that its top level is a ``kind`` (list or dict)."""
        if not self.path.is_file():
            raise missing(self.benchmark, f"file '{self.path.name}'", [self.path])
        try:
            with self.path.open(encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as err:
            raise self.malformed(f"invalid JSON at line {err.lineno} column {err.colno}") from err
        except UnicodeDecodeError as err:
            raise self.malformed("not UTF-8 text") from err
        if not isinstance(data, kind):
            raise self.malformed(
                f"top level is a {type(data).__name__}, expected a JSON "
                f"{'array' if kind is list else 'object'}"
            )
        return data

    def records(self, required: Iterable[str] = (), key: str | None = None) -> list[dict]:
        """Load a list of objects (or ``data[key]``) and check ``required`` dotted fields."""
        data = self.load(dict if key else list)
        if key is not None:
            data = data.get(key)
            if not isinstance(data, list):
                raise self.malformed(f"missing required field '{key}' (a list of records)")
        required = tuple(required)
        for index, record in enumerate(data):
            if not isinstance(record, dict):
                raise self.malformed(f"record {index} is a {type(record).__name__}, not an object")
            for name in required:
                self.field(record, name, index)
        return data

    def field(self, record: Mapping[str, Any], name: str, index: int) -> Any:
        """``record[name]`` where ``name`` may be dotted (``img_set.members``)."""
        value: Any = record
        for part in name.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise self.malformed(f"record {index} lacks required field '{name}'")
            value = value[part]
        return value


def load_rgb(path: Path) -> Image.Image:
    """Open one image as RGB; an unreadable file raises naming the path."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise MissingDatasetFileError(f"image not found: {path}") from err
    except (UnidentifiedImageError, OSError) as err:
        raise MalformedDatasetFileError(f"cannot read image {path}: {err}") from err


@dataclass(frozen=True)
class ImageFolders:
    """Look image files up in one or more folders, trying each extension (first hit wins)."""

    benchmark: str
    folders: tuple[Path, ...]
    extensions: tuple[str, ...] = ("",)

    def find(self, name: str) -> Path:
        tried = [folder / f"{name}{ext}" for folder in self.folders for ext in self.extensions]
        for path in tried:
            if path.is_file():
                return path
        raise missing(self.benchmark, f"image '{name}'", tried)


def existing_folders(benchmark: str, root: Path, candidates: Sequence[str], what: str) -> tuple:
    """The candidate sub-folders of ``root`` that exist; raise when none does."""
    found = tuple(root / c for c in candidates if (root / c).is_dir())
    if not found:
        raise missing(benchmark, what, [root / c for c in candidates])
    return found


@dataclass(frozen=True)
class ImageEntry:
    """Where one image key lives, plus an optional crop applied after loading."""

    folders: ImageFolders
    name: str
    crop: Callable[[Image.Image], Image.Image] | None = None


@dataclass(frozen=True)
class ImageTable:
    """``load_image`` for a split: image key → RGB PIL image (picklable for DataLoaders)."""

    entries: Mapping[str, ImageEntry]

    def __call__(self, key: str) -> Image.Image:
        entry = self.entries.get(key)
        if entry is None:
            raise KeyError(f"unknown image key {key!r}; not part of this benchmark split")
        image = load_rgb(entry.folders.find(entry.name))
        return entry.crop(image) if entry.crop is not None else image

    def check_first(self) -> None:
        """Fail at load time, not mid-evaluation, when the image folders are wrong."""
        for entry in self.entries.values():
            entry.folders.find(entry.name)
            return


OptionsT = TypeVar("OptionsT")


def make_options(cls: type[OptionsT], benchmark: str, options: Mapping[str, Any]) -> OptionsT:
    """Build an options dataclass, turning unknown names into a clear ``ValueError``."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(
            f"{benchmark}: unknown option(s) {unknown}; expected any of {sorted(known)}"
        )
    return cls(**options)


def resolve_split(benchmark: str, split: str, aliases: Mapping[str, str]) -> str:
    """Map a user split name (``dev``, ``val``, ...) onto the dataset's own name."""
    name = aliases.get(str(split).lower())
    if name is None:
        raise ValueError(f"{benchmark}: unknown split {split!r}; expected one of {sorted(aliases)}")
    return name


H = TypeVar("H", bound=Hashable)


def unique(items: Iterable[H]) -> tuple[H, ...]:
    """Items in first-seen order without repeats."""
    return tuple(dict.fromkeys(items))


def warn_outside_gallery(benchmark: str, queries: Sequence[CIRQuery], gallery: Sequence[str]):
    """Log (not raise) when targets fall outside their gallery: those queries score 0."""
    sets: dict[int, set[str]] = {id(gallery): set(gallery)}
    bad = []
    for q in queries:
        own = q.gallery if q.gallery is not None else gallery
        members = sets.setdefault(id(own), set(own))
        if any(t not in members for t in q.targets):
            bad.append(q.id)
    if bad:
        log.warning(
            "%s: %d queries have a target outside their gallery (e.g. %s); they can never hit",
            benchmark,
            len(bad),
            ", ".join(bad[:5]),
        )
