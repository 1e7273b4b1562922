"""A small reader of image collections to index: a folder (recursive) or a list file.

This is deliberately minimal; richer collection readers (WebDataset shards, Parquet
manifests) live in ``opencir.data``. A source yields :class:`ImageSource` records in a
deterministic order without holding the whole listing in memory.

* a folder: every file with an image extension below it, sorted, named by its path
  relative to the folder;
* a ``.txt`` list: one path per line (relative paths are relative to the list file;
  blank lines and ``#`` comments are skipped);
* a ``.jsonl`` list: one object per line with ``path`` (or ``file`` / ``image``), an
  optional ``id`` used as the item name, and any other fields kept as metadata (the
  miniature worlds' ``images.jsonl`` reads as is).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opencir.data.images import listable_image_file, utf8_lines

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif"}
)
PATH_KEYS = ("path", "file", "image")


class SourceError(ValueError):
    """An image source is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class ImageSource:
    """One image to index: a unique ``name``, its file and free-form metadata."""

    name: str
    path: Path
    metadata: Mapping[str, Any] = field(default_factory=dict)


def iter_sources(source: str | Path) -> Iterator[ImageSource]:
    """Images of a folder, ``.txt`` or ``.jsonl`` list, in a deterministic order."""
    source = Path(source).expanduser()
    if source.is_dir():
        return _iter_folder(source)
    if not source.is_file():
        raise SourceError(f"image source {source} does not exist (expected a folder or a list)")
    if source.suffix == ".jsonl":
        return _iter_jsonl(source)
    if source.suffix in (".txt", ".lst", ".list"):
        return _iter_text(source)
    raise SourceError(
        f"image source {source} is neither a folder nor a .txt/.jsonl list of image paths"
    )


def _iter_folder(root: Path) -> Iterator[ImageSource]:
    root = root.resolve()
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(directory, name)
            if path.suffix.lower() not in IMAGE_EXTENSIONS or name.startswith("."):
                continue
            if listable_image_file(path):
                yield ImageSource(path.relative_to(root).as_posix(), path)


def _iter_text(list_file: Path) -> Iterator[ImageSource]:
    base = list_file.resolve().parent
    for _, line in utf8_lines(list_file):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            yield ImageSource(entry, (base / entry).resolve())


def _iter_jsonl(list_file: Path) -> Iterator[ImageSource]:
    base = list_file.resolve().parent
    for number, line in utf8_lines(list_file):
        if line.strip():
            yield _jsonl_record(line, base, f"{list_file}:{number}")


def _jsonl_record(line: str, base: Path, where: str) -> ImageSource:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise SourceError(f"{where}: not valid JSON ({error})") from error
    if not isinstance(row, dict):
        raise SourceError(f"{where}: expected a JSON object, got {type(row).__name__}")
    key = next((k for k in PATH_KEYS if isinstance(row.get(k), str)), None)
    if key is None:
        raise SourceError(f"{where}: no image path; expected one of the fields {PATH_KEYS}")
    relative = row.pop(key)
    name = str(row.pop("id", relative))
    return ImageSource(name, (base / relative).resolve(), row)
