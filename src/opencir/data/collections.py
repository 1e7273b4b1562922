"""Image collections: folders, WebDataset tar shards and JSONL/Parquet manifests.

Every collection lists its images as :class:`CollectionItem` (a string ``key`` plus a
metadata dict) in a stable, sorted order and resolves a key back to bytes or to a PIL image
through the shared robust loader (:func:`opencir.data.images.load_image`). Keys are:

* folders: the image's path relative to the root (``"cats/001.jpg"``);
* WebDataset shards: the member key (``"000000017"``, the name up to the first dot);
* manifests: the row's id field (``id``, else ``key``).

Side information travels in ``meta``: a sidecar ``.txt`` becomes ``meta["caption"]``, a
sidecar ``.json`` (or a tar member ``.json``) is merged in, a folder image's parent folder is
``meta["class"]``, and a manifest row is its own metadata (the miniature worlds' ``alt_text``,
``attributes``, ``split``). ``where`` filters (``split=train``) select items by metadata.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from opencir.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    listable_image_file,
    load_image,
    open_regular_file,
    utf8_lines,
    valid_text_name,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})
KINDS = ("auto", "folder", "webdataset", "manifest")
MANIFEST_SUFFIXES = (".jsonl", ".json", ".parquet")
KEY_FIELDS = ("id", "key")
FILE_FIELDS = ("file", "path", "image_path", "filepath", "image")
WORLD_MANIFEST = "images.jsonl"


@dataclass(frozen=True)
class CollectionItem:
    """One image of a collection: its key and whatever metadata came with it."""

    key: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CollectionSpec:
    """Where a collection lives and how to read it (JSON-serialisable, for manifests).

    ``where`` holds ``(field, value)`` filters on metadata (dotted fields reach into nested
    dicts); an item is kept when every filter matches its value as a string.
    """

    path: str
    kind: str = "auto"
    key_field: str | None = None
    file_field: str | None = None
    where: tuple[tuple[str, str], ...] = ()
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"collection kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "where", tuple((str(k), str(v)) for k, v in self.where))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["where"] = [list(pair) for pair in self.where]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CollectionSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["where"] = tuple(tuple(pair) for pair in known.get("where", ()))
        return cls(**known)


def parse_where(filters: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """``["split=train", "attributes.group=animal"]`` → ``(("split", "train"), ...)``."""
    parsed = []
    for text in filters:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"a filter must look like FIELD=VALUE, got {text!r}")
        parsed.append((name.strip(), value.strip()))
    return tuple(parsed)


def get_field(meta: Mapping[str, Any], name: str) -> Any:
    """``meta["a"]["b"]`` for ``name="a.b"``; ``None`` when any step is missing."""
    value: Any = meta
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _matches(meta: Mapping[str, Any], where: Sequence[tuple[str, str]]) -> bool:
    return all(str(get_field(meta, name)) == value for name, value in where)


class ImageCollection(ABC):
    """A keyed set of images; subclasses provide listing and raw bytes."""

    def __init__(self, spec: CollectionSpec) -> None:
        self.spec = spec
        self._items: list[CollectionItem] | None = None

    @abstractmethod
    def _scan(self) -> Iterator[CollectionItem]:
        """Every item, in any order, before filtering."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The raw file bytes of ``key``; :class:`ImageLoadError` (``missing``) if absent."""

    def items(self) -> list[CollectionItem]:
        """Items that pass the ``where`` filters, sorted by key (a stable order for sampling)."""
        if self._items is None:
            kept = [item for item in self._scan() if _matches(item.meta, self.spec.where)]
            self._items = sorted(kept, key=lambda item: item.key)
            log.debug("collection %s: %d items", self.spec.path, len(self._items))
        return self._items

    def keys(self) -> list[str]:
        return [item.key for item in self.items()]

    def __len__(self) -> int:
        return len(self.items())

    def load(self, key: str) -> Image.Image:
        """Decode ``key`` as an upright RGB image, or raise :class:`ImageLoadError`."""
        return load_image(self.read_bytes(key), max_pixels=self.spec.max_pixels, name=key)

    def describe(self) -> dict[str, Any]:
        """The spec with an absolute path: enough to reopen the collection elsewhere."""
        data = self.spec.to_dict()
        data["path"] = _absolute(self.spec.path)
        data["kind"] = self.kind
        return data

    @property
    @abstractmethod
    def kind(self) -> str: ...


def _absolute(path: str) -> str:
    return path if any(c in path for c in "*?[{") else str(Path(path).resolve())


def _read_file(path: Path, key: str) -> bytes:
    with open_regular_file(path, key) as stream:
        try:
            return stream.read()
        except OSError as error:
            raise ImageLoadError(key, "unreadable", str(error)) from error


def _image_extension(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS if "." in name else False


def _sidecar_meta(image: Path) -> dict[str, Any]:
    """A sidecar ``<stem>.txt`` (caption) and ``<stem>.json`` (metadata) next to an image."""
    meta: dict[str, Any] = {}
    text, extra = image.with_suffix(".txt"), image.with_suffix(".json")
    if text.is_file():
        meta["caption"] = text.read_text(encoding="utf-8", errors="replace").strip()
    if extra.is_file():
        try:
            data = json.loads(extra.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            log.warning("ignoring unreadable sidecar %s: %s", extra, error)
        else:
            if isinstance(data, dict):
                meta.update(data)
    return meta


class FolderCollection(ImageCollection):
    """Images anywhere under a root folder (hidden files and folders skipped)."""

    kind = "folder"

    def __init__(self, spec: CollectionSpec) -> None:
        super().__init__(spec)
        self.root = Path(spec.path)
        if not self.root.is_dir():
            raise ValueError(f"image folder {self.root} does not exist or is not a folder")

    def _scan(self) -> Iterator[CollectionItem]:
        for directory, subdirs, files in os.walk(self.root):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or not _image_extension(name):
                    continue
                path = Path(directory) / name
                if not listable_image_file(path):
                    continue
                key = path.relative_to(self.root).as_posix()
                parent = Path(key).parent.as_posix()
                meta = {"class": "" if parent == "." else parent, **_sidecar_meta(path)}
                yield CollectionItem(key, meta)

    def read_bytes(self, key: str) -> bytes:
        path = self.root / key
        if ".." in Path(key).parts:
            raise ImageLoadError(key, "missing", "key points outside the collection root")
        return _read_file(path, key)


# ----------------------------------------------------------------------------- WebDataset


def expand_braces(pattern: str) -> list[str]:
    """``"shard-{000..002}.tar"`` → three names (WebDataset's numeric range notation)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    start, stop = match.group(1), match.group(2)
    width = len(start)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    names = []
    for number in range(int(start), int(stop) + 1):
        names.extend(expand_braces(f"{head}{number:0{width}d}{tail}"))
    return names


def _shard_paths(path: str) -> list[Path]:
    target = Path(path)
    if target.is_dir():
        shards = sorted(target.glob("*.tar"))
    elif target.is_file():
        shards = [target]
    else:
        shards = [Path(p) for name in expand_braces(path) for p in sorted(glob.glob(name))]
    if not shards:
        raise ValueError(f"no WebDataset .tar shards found at {path!r}")
    return shards


def split_member(name: str) -> tuple[str, str]:
    """WebDataset naming: ``"dir/abc.seg.jpg"`` → key ``"dir/abc"``, extension ``"seg.jpg"``."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


@dataclass(frozen=True)
class _Member:
    shard: str
    offset: int
    size: int


class WebDatasetCollection(ImageCollection):
    """Uncompressed tar shards; members grouped by key, images read by offset (random access)."""

    kind = "webdataset"

    def __init__(self, spec: CollectionSpec) -> None:
        super().__init__(spec)
        self.shards = _shard_paths(spec.path)
        self._index: dict[str, _Member] = {}

    def _scan(self) -> Iterator[CollectionItem]:
        for shard in self.shards:
            yield from self._scan_shard(shard)

    def _scan_shard(self, shard: Path) -> Iterator[CollectionItem]:
        groups: dict[str, dict[str, Any]] = {}
        images: dict[str, _Member] = {}
        with open(shard, "rb") as handle:
            for info in _members(shard):
                if not info.isfile() or not valid_text_name(info.name):
                    continue
                key, ext = split_member(info.name)
                if ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS and key not in images:
                    images[key] = _Member(str(shard), info.offset_data, info.size)
                elif ext in ("txt", "json", "cls"):
                    handle.seek(info.offset_data)
                    _merge_side(groups.setdefault(key, {}), ext, handle.read(info.size))
        for key, member in images.items():
            if key in self._index:
                first = self._index[key].shard
                log.warning("key %s is in %s and %s; keeping the first", key, first, shard)
                continue
            self._index[key] = member
            yield CollectionItem(key, {"shard": shard.name, **groups.get(key, {})})

    def read_bytes(self, key: str) -> bytes:
        if not self._index:
            self.items()
        member = self._index.get(key)
        if member is None:
            raise ImageLoadError(key, "missing", "no such member in the shards")
        with open(member.shard, "rb") as handle:
            handle.seek(member.offset)
            data = handle.read(member.size)
        if len(data) != member.size:
            raise ImageLoadError(key, "corrupt", "tar member truncated")
        return data


def _members(shard: Path) -> list[tarfile.TarInfo]:
    """All readable members; a truncated shard keeps the members before the damage."""
    try:
        archive = tarfile.open(shard, "r:")  # noqa: SIM115 - members are read incrementally
    except tarfile.ReadError as error:
        raise ValueError(f"{shard} is not an uncompressed tar shard: {error}") from error
    members: list[tarfile.TarInfo] = []
    try:
        for info in archive:
            members.append(info)
    except (tarfile.TarError, EOFError, OSError) as error:
        log.warning("shard %s is damaged after %d members: %s", shard, len(members), error)
    finally:
        archive.close()
    return members


def _merge_side(meta: dict[str, Any], ext: str, data: bytes) -> None:
    text = data.decode("utf-8", errors="replace").strip()
    if ext == "txt":
        meta["caption"] = text
    elif ext == "cls":
        meta["class"] = text
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return
        if isinstance(value, dict):
            meta.update(value)


# ----------------------------------------------------------------------------- manifests


def _manifest_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / WORLD_MANIFEST).is_file():
        return [path / WORLD_MANIFEST]
    files = sorted(path.glob("*.parquet")) or sorted(path.glob("*.jsonl"))
    if not files:
        raise ValueError(f"no manifest (.jsonl or .parquet) found in {path}")
    return files


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of one JSONL (or JSON list) or Parquet file."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as error:
            raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from error
        return pq.read_table(path).to_pylist()
    lines = list(utf8_lines(path))
    if path.suffix == ".json":
        data = json.loads("".join(line for _, line in lines))
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json manifest must hold a list of rows")
        return data
    rows = []
    for number, line in lines:
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON row ({error.msg})") from error
    return rows


def _pick(row: Mapping[str, Any], wanted: str | None, fallbacks: Sequence[str]) -> Any:
    for name in (wanted,) if wanted else fallbacks:
        value = get_field(row, name)
        if value not in (None, ""):
            return value
    return None


class ManifestCollection(ImageCollection):
    """JSONL/Parquet rows naming image files (worlds' ``images.jsonl``, img2dataset parquet).

    A row's image is its file field (relative to the manifest's folder) or, in img2dataset's
    ``files`` layout, ``<manifest stem>/<key>.<ext>``; img2dataset rows whose ``status`` is
    not ``success`` have no image and are skipped.
    """

    kind = "manifest"

    def __init__(self, spec: CollectionSpec) -> None:
        super().__init__(spec)
        path = Path(spec.path)
        if not path.exists():
            raise ValueError(f"manifest {path} does not exist")
        self.files = _manifest_files(path)
        self._paths: dict[str, Path] = {}

    def _scan(self) -> Iterator[CollectionItem]:
        skipped = 0
        for manifest in self.files:
            for number, row in enumerate(read_rows(manifest), 1):
                if row.get("status", "success") != "success":
                    skipped += 1
                    continue
                key = _pick(row, self.spec.key_field, KEY_FIELDS)
                if key is None:
                    wanted = self.spec.key_field or " or ".join(KEY_FIELDS)
                    raise ValueError(f"{manifest}:{number}: row has no key field {wanted}")
                key = str(key)
                if key in self._paths:
                    raise ValueError(f"{manifest}:{number}: duplicate key {key!r}")
                self._paths[key] = self._image_path(manifest, row, key)
                yield CollectionItem(key, row)
        if skipped:
            log.info("skipped %d manifest rows whose status is not success", skipped)

    def _image_path(self, manifest: Path, row: Mapping[str, Any], key: str) -> Path:
        name = _pick(row, self.spec.file_field, FILE_FIELDS)
        if isinstance(name, str):
            return manifest.parent / name
        folder = manifest.parent / manifest.stem  # img2dataset "files" output
        for ext in ("jpg", "jpeg", "png", "webp"):
            if (folder / f"{key}.{ext}").exists():
                return folder / f"{key}.{ext}"
        return folder / f"{key}.jpg"

    def read_bytes(self, key: str) -> bytes:
        if not self._paths:
            self.items()
        path = self._paths.get(key)
        if path is None:
            raise ImageLoadError(key, "missing", "no such key in the manifest")
        return _read_file(path, key)


# ----------------------------------------------------------------------------- opening

_CLASSES: dict[str, type[ImageCollection]] = {
    "folder": FolderCollection,
    "webdataset": WebDatasetCollection,
    "manifest": ManifestCollection,
}


def detect_kind(path: str) -> str:
    """Guess the collection kind of a path (see the module docstring for the rules)."""
    target = Path(path)
    if target.is_file():
        if target.suffix in MANIFEST_SUFFIXES:
            return "manifest"
        if target.suffix == ".tar":
            return "webdataset"
        raise ValueError(f"{path}: expected a folder, a .tar shard or a .jsonl/.parquet manifest")
    if target.is_dir():
        if (target / WORLD_MANIFEST).is_file():
            return "manifest"
        if any(target.glob("*.tar")):
            return "webdataset"
        if any(target.glob("*.parquet")):
            return "manifest"
        return "folder"
    if any(c in path for c in "*?[{"):
        return "webdataset"
    raise ValueError(f"image source {path!r} does not exist")


def open_collection(source: str | Path | CollectionSpec | Mapping[str, Any]) -> ImageCollection:
    """Open an image collection from a path, a :class:`CollectionSpec` or its dict form."""
    if isinstance(source, Mapping):
        spec = CollectionSpec.from_dict(source)
    elif isinstance(source, CollectionSpec):
        spec = source
    else:
        spec = CollectionSpec(path=str(source))
    kind = detect_kind(spec.path) if spec.kind == "auto" else spec.kind
    return _CLASSES[kind](spec)
