"""The triplet format: JSONL or Parquet rows ``id, reference, target, text, provenance``.

``reference`` and ``target`` are keys of an image collection
(:mod:`opencir.data.collections`). A folder written by ``opencir generate`` holds a
``manifest.json`` naming that collection, so :func:`open_triplets` can hand the trainer both
the rows and a key → image loader. Extra columns (``reference_caption``,
``target_caption``, ...) are kept in :attr:`Triplet.extra`. In Parquet the nested
``provenance`` is stored as a JSON string (its keys differ between generators).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from opencir.atomic import atomic_write
from opencir.data.collections import CollectionSpec, ImageCollection, open_collection, read_rows

FORMAT_NAME = "opencir.triplets"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TRIPLET_FILES = ("triplets.jsonl", "triplets.parquet")
FORMATS = ("jsonl", "parquet")
CORE_FIELDS = ("id", "reference", "target", "text", "provenance")


@dataclass(frozen=True)
class Triplet:
    """One (reference, modification text, target) example with where it came from."""

    id: str
    reference: str
    target: str
    text: str
    provenance: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        row = {"id": self.id, "reference": self.reference, "target": self.target}
        row.update({"text": self.text, **self.extra, "provenance": dict(self.provenance)})
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any], where: str = "row") -> Triplet:
        missing = [name for name in ("reference", "target", "text") if row.get(name) is None]
        if missing:
            raise ValueError(f"{where}: triplet row lacks {', '.join(missing)}")
        provenance = row.get("provenance") or {}
        if isinstance(provenance, str):
            provenance = json.loads(provenance)
        ident = row.get("id")
        if ident is None:
            ident = f"{row['reference']}->{row['target']}"
        extra = {k: v for k, v in row.items() if k not in CORE_FIELDS and v is not None}
        return cls(
            str(ident),
            str(row["reference"]),
            str(row["target"]),
            str(row["text"]),
            provenance,
            extra,
        )


# ----------------------------------------------------------------------------- atomic files


def jsonl_bytes(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


# ----------------------------------------------------------------------------- write / read


def _format_of(path: Path, fmt: str | None) -> str:
    fmt = fmt or ("parquet" if path.suffix == ".parquet" else "jsonl")
    if fmt not in FORMATS:
        raise ValueError(f"triplet format must be one of {FORMATS}, got {fmt!r}")
    return fmt


def write_triplets(triplets: Iterable[Triplet], path: str | Path, fmt: str | None = None) -> Path:
    """Write triplets atomically as JSONL or Parquet (chosen by ``fmt`` or the suffix)."""
    path = Path(path)
    rows = [t.to_row() for t in triplets]
    if _format_of(path, fmt) == "jsonl":
        return atomic_write(path, jsonl_bytes(rows))
    return atomic_write(path, _parquet_bytes(rows))


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError("writing Parquet needs pyarrow: pip install pyarrow") from error
    columns: dict[str, list[Any]] = {}
    for name in dict.fromkeys(k for row in rows for k in row):
        values = [row.get(name) for row in rows]
        if any(isinstance(v, (dict, list)) for v in values):  # nested → JSON text
            values = [None if v is None else json.dumps(v, sort_keys=True) for v in values]
        columns[name] = values
    if not rows:
        columns = {name: [] for name in ("id", "reference", "target", "text", "provenance")}
        table = pa.table({name: pa.array([], pa.string()) for name in columns})
    else:
        table = pa.table(columns)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def triplet_file(path: str | Path) -> Path:
    """A triplet file itself, or the one inside a ``generate`` output folder."""
    path = Path(path)
    if path.is_dir():
        for name in TRIPLET_FILES:
            if (path / name).is_file():
                return path / name
        raise ValueError(
            f"{path} holds no {' or '.join(TRIPLET_FILES)}: is the generate run finished? "
            "(run the same command again to finish it)"
        )
    if not path.is_file():
        raise ValueError(f"triplet file {path} does not exist")
    return path


def read_triplets(path: str | Path) -> list[Triplet]:
    """All triplets of a JSONL/Parquet file or of a ``generate`` output folder."""
    file = triplet_file(path)
    return [Triplet.from_row(row, f"{file}:{n}") for n, row in enumerate(read_rows(file), 1)]


# ----------------------------------------------------------------------------- images


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The ``manifest.json`` of a triplet folder, or ``None`` when there is none."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not an OpenCIR triplet manifest (format {FORMAT_NAME!r})")
    return manifest


def write_manifest(folder: str | Path, source: Mapping[str, Any], **fields: Any) -> Path:
    """Record the image source (absolute and relative to ``folder``) and any run details."""
    folder = Path(folder)
    source = dict(source)
    source_path = Path(source["path"])
    if source_path.is_absolute() and source_path.exists():
        source["relative_path"] = os.path.relpath(source_path, folder.resolve())
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "source": source, **fields}
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return atomic_write(folder / MANIFEST_FILE, text.encode())


def triplet_source(path: str | Path) -> ImageCollection:
    """The image collection the keys of a triplet file (or folder) refer to.

    Read from the neighbouring ``manifest.json`` (its relative path first, so a moved folder
    pair still resolves); without a manifest, keys are paths relative to the file's folder.
    """
    file = triplet_file(path)
    manifest = read_manifest(file.parent)
    if manifest is None:
        return open_collection(CollectionSpec(path=str(file.parent), kind="folder"))
    source = dict(manifest["source"])
    relative = source.pop("relative_path", None)
    if relative is not None and (file.parent / relative).exists():
        source["path"] = str((file.parent / relative).resolve())
    return open_collection(source)


def open_triplets(
    paths: Sequence[str | Path],
) -> tuple[list[Triplet], Callable[[str], Image.Image]]:
    """Rows of several triplet files plus one loader for all their image keys.

    When the files draw on different collections, keys are rewritten as ``"<n>:<key>"``
    (``n`` the collection's position) so the single loader can route them.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    collections: dict[str, ImageCollection] = {}
    per_file: list[tuple[str, list[Triplet]]] = []
    for path in paths:
        collection = triplet_source(path)
        ident = json.dumps(collection.describe(), sort_keys=True)
        collections.setdefault(ident, collection)
        per_file.append((ident, read_triplets(path)))
    if len(collections) == 1:
        only = next(iter(collections.values()))
        return [t for _, rows in per_file for t in rows], only.load
    order = {ident: n for n, ident in enumerate(collections)}
    rows = [_prefixed(t, order[ident]) for ident, triplets in per_file for t in triplets]
    loaders = list(collections.values())

    def load(key: str) -> Image.Image:
        number, _, inner = key.partition(":")
        return loaders[int(number)].load(inner)

    return rows, load


def _prefixed(triplet: Triplet, number: int) -> Triplet:
    return Triplet(
        triplet.id,
        f"{number}:{triplet.reference}",
        f"{number}:{triplet.target}",
        triplet.text,
        triplet.provenance,
        triplet.extra,
    )
