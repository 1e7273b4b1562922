"""The index manifest: what built the index, what it holds, and checksums of its files.

An index is a folder::

    INDEX/vectors.faiss    FAISS index (IDMap2 over the factory index, inner product)
    INDEX/embeddings.npy   the exact L2-normalised float32 vectors, rows in id order
    INDEX/items.sqlite     table ``items(id, name, path, metadata)``
    INDEX/skipped.jsonl    images that could not be read, with the reason
    INDEX/manifest.json    this manifest, written last
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

INDEX_FORMAT = "opencir-index"
INDEX_VERSION = 1
MANIFEST_FILE = "manifest.json"
VECTORS_FILE = "vectors.faiss"
EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.sqlite"
SKIPPED_FILE = "skipped.jsonl"
CODES_FILE = "codes.int8.npy"  # flat indexes: int8 codes of the embeddings (exact search)
CODES_INFO_FILE = "codes.json"  # their column scales and error bounds
DATA_FILES = (
    VECTORS_FILE,
    EMBEDDINGS_FILE,
    ITEMS_FILE,
    SKIPPED_FILE,
    CODES_FILE,
    CODES_INFO_FILE,
)


class GalleryIndexError(ValueError):
    """Base class of index errors (a ``ValueError``: the input is wrong, not the code)."""


class IndexFormatError(GalleryIndexError):
    """A folder is not an OpenCIR index, or its files are damaged."""


class IndexModelMismatchError(GalleryIndexError):
    """The index was built by a different model than the one offered to query it."""


@dataclass(frozen=True)
class ModelInfo:
    """Which model embedded the gallery."""

    spec: str
    fingerprint: str
    name: str
    method: str


@dataclass(frozen=True)
class FileInfo:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """Everything needed to trust and query an index (``manifest.json``)."""

    model: ModelInfo
    dim: int
    count: int
    next_id: int
    factory: str = "Flat"
    search_params: str = ""
    metric: str = "inner_product"
    normalization: str = "l2"
    files: Mapping[str, FileInfo] = field(default_factory=dict)
    skipped: Mapping[str, int] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": INDEX_FORMAT, "version": INDEX_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        data = dict(data)
        data.pop("format", None)
        data.pop("version", None)
        model = ModelInfo(**data.pop("model"))
        files = {k: FileInfo(**v) for k, v in data.pop("files", {}).items()}
        return cls(model=model, files=files, **data)

    def with_files(self, folder: Path) -> Manifest:
        """This manifest with the checksums of the data files now in ``folder``."""
        present = [name for name in DATA_FILES if (folder / name).is_file()]
        return replace(self, files={name: file_info(folder / name) for name in present})


def file_info(path: Path) -> FileInfo:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return FileInfo(digest.hexdigest(), path.stat().st_size)


def read_manifest(folder: str | Path) -> Manifest:
    """Read ``folder/manifest.json`` or raise :class:`IndexFormatError` saying what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise IndexFormatError(
            f"index {folder} does not exist (build it with `opencir index build`)"
        )
    if not path.is_file():
        raise IndexFormatError(f"{folder} is not an OpenCIR index: {MANIFEST_FILE} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise IndexFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise IndexFormatError(f"{path} is not an OpenCIR index manifest")
    if data.get("version") != INDEX_VERSION:
        raise IndexFormatError(
            f"{path} has index format version {data.get('version')}, this OpenCIR reads "
            f"version {INDEX_VERSION}; rebuild the index"
        )
    try:
        return Manifest.from_json(data)
    except (TypeError, KeyError) as error:
        raise IndexFormatError(f"{path} is malformed: {error}") from error


def check_files(folder: Path, manifest: Manifest, checksums: bool) -> None:
    """Sizes always, SHA-256 when ``checksums``; raise :class:`IndexFormatError` on a mismatch."""
    for name, expected in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise IndexFormatError(f"index {folder} is damaged: {name} is missing")
        if path.stat().st_size != expected.bytes:
            raise IndexFormatError(
                f"index {folder} is damaged: {name} has {path.stat().st_size} bytes, "
                f"the manifest says {expected.bytes}"
            )
        if checksums and file_info(path).sha256 != expected.sha256:
            raise IndexFormatError(f"index {folder} is damaged: checksum of {name} differs")


def check_model(manifest: Manifest, fingerprint: str, spec: str, folder: Path) -> None:
    """Refuse to query an index with a model other than the one that built it."""
    if fingerprint != manifest.model.fingerprint:
        raise IndexModelMismatchError(
            f"index {folder} was built by model {manifest.model.spec!r} "
            f"(fingerprint {manifest.model.fingerprint}), but the model given, {spec!r}, has "
            f"fingerprint {fingerprint}; query it with the same model or rebuild the index"
        )
