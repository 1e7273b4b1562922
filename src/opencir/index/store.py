"""Reading and querying an index folder: FAISS vectors, the item table, the manifest."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from opencir.index.exact import ExactSearch, exact_kernels_available
from opencir.index.manifest import (
    EMBEDDINGS_FILE,
    ITEMS_FILE,
    VECTORS_FILE,
    GalleryIndexError,
    IndexFormatError,
    Manifest,
    check_files,
    check_model,
    read_manifest,
)

log = logging.getLogger(__name__)

SCHEMA = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
    "path TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}')"
)
ITEM_COLUMNS = ["id", "name", "path", "metadata"]


class UnknownItemError(GalleryIndexError, KeyError):
    """No gallery item has this id or name."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Item:
    """One gallery image: its FAISS id, unique name, file and metadata."""

    id: int
    name: str
    path: Path
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """A ranked search result."""

    rank: int
    score: float
    item: Item


def _item(row: Sequence[Any]) -> Item:
    return Item(int(row[0]), row[1], Path(row[2]), json.loads(row[3]))


class ItemTable:
    """The ``items`` SQLite table, opened read-only and safe to share between threads."""

    def __init__(self, path: Path) -> None:
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._lock = threading.Lock()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def get(self, item_id: int) -> Item | None:
        rows = self._query("SELECT id, name, path, metadata FROM items WHERE id = ?", (item_id,))
        return _item(rows[0]) if rows else None

    def find(self, name: str) -> Item | None:
        rows = self._query("SELECT id, name, path, metadata FROM items WHERE name = ?", (name,))
        return _item(rows[0]) if rows else None

    def many(self, ids: Sequence[int]) -> dict[int, Item]:
        # One JSON parameter instead of one per id: no variable-count limit, faster to bind.
        sql = (
            "SELECT id, name, path, metadata FROM items "
            "WHERE id IN (SELECT value FROM json_each(?))"
        )
        rows = self._query(sql, (json.dumps([int(i) for i in ids]),)) if ids else []
        return {item.id: item for item in map(_item, rows)}

    def page(self, offset: int, limit: int) -> list[Item]:
        sql = "SELECT id, name, path, metadata FROM items ORDER BY id LIMIT ? OFFSET ?"
        return [_item(row) for row in self._query(sql, (limit, offset))]

    def damage(self, count: int) -> str | None:
        """What is wrong with this file as an items table of ``count`` rows (None: nothing).

        SQLite's ``quick_check`` reads every page once (structure, records, NOT NULL), so
        a file of the right size but damaged contents is caught here, not by a later query.
        """
        try:
            checked = [row[0] for row in self._query("PRAGMA quick_check")]
            columns = [row[1] for row in self._query("PRAGMA table_info(items)")]
            rows = self._query("SELECT count(*) FROM items")[0][0] if columns else 0
        except sqlite3.DatabaseError as error:
            return f"is not a readable SQLite database ({error})"
        if checked != ["ok"]:
            return f"fails SQLite's integrity check: {'; '.join(checked[:3])}"
        if columns != ITEM_COLUMNS:
            return f"has no table items({', '.join(ITEM_COLUMNS)})"
        if rows != count:
            return f"holds {rows} items, the manifest says {count}"
        return None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def write_items(path: Path, rows: Iterable[tuple[int, str, str, str]]) -> None:
    """Create (or extend) the items table at ``path`` with ``(id, name, path, metadata_json)``."""
    db = sqlite3.connect(path)
    try:
        with db:
            if not db.execute("SELECT name FROM sqlite_master WHERE name='items'").fetchone():
                db.execute(SCHEMA)
            db.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", rows)
    except sqlite3.IntegrityError as error:
        raise GalleryIndexError(f"duplicate image name in the gallery: {error}") from error
    finally:
        db.close()


def iter_item_rows(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """All rows of an items table in id order (streamed)."""
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield from db.execute("SELECT id, name, path, metadata FROM items ORDER BY id")
    finally:
        db.close()


def apply_search_params(index: Any, params: str) -> None:
    """Set ``"nprobe=16,efSearch=64"``-style parameters, naming any that does not apply."""
    import faiss

    space = faiss.ParameterSpace()
    for entry in filter(None, (p.strip() for p in params.split(","))):
        name, _, value = entry.partition("=")
        try:
            space.set_index_parameter(index, name.strip(), float(value))
        except (RuntimeError, ValueError) as error:
            raise GalleryIndexError(
                f"search parameter {entry!r} does not apply to this index: {error}"
            ) from error


class GalleryIndex:
    """A built index, opened for search (FAISS file and embeddings memory-mapped by default)."""

    def __init__(self, folder: Path, manifest: Manifest, vectors: Any, items: ItemTable) -> None:
        self.folder, self.manifest, self.vectors, self.items = folder, manifest, vectors, items
        self.exact = _exact_search(folder, manifest, vectors)

    @classmethod
    def open(
        cls,
        folder: str | Path,
        *,
        mmap: bool = True,
        verify: bool = False,
        search_params: str | None = None,
    ) -> GalleryIndex:
        """Open ``folder``; ``verify`` checks SHA-256 of every file (sizes are always checked)."""
        import faiss

        folder = Path(folder)
        manifest = read_manifest(folder)
        check_files(folder, manifest, checksums=verify)
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            vectors = faiss.read_index(str(folder / VECTORS_FILE), flags)
        except RuntimeError as error:
            raise GalleryIndexError(f"cannot read {folder / VECTORS_FILE}: {error}") from error
        if vectors.ntotal != manifest.count or vectors.d != manifest.dim:
            raise GalleryIndexError(
                f"index {folder} is damaged: {VECTORS_FILE} holds {vectors.ntotal}x{vectors.d} "
                f"vectors, the manifest says {manifest.count}x{manifest.dim}"
            )
        apply_search_params(
            vectors, manifest.search_params if search_params is None else search_params
        )
        items = _open_items(folder, manifest.count)
        log.info(
            "opened index %s: %d images, dim %d, %s",
            folder,
            manifest.count,
            manifest.dim,
            manifest.factory,
        )
        return cls(folder, manifest, vectors, items)

    def __len__(self) -> int:
        return self.manifest.count

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def check_model(self, model: Any, spec: str = "the given model") -> None:
        """Raise :class:`IndexModelMismatchError` unless ``model`` built this index."""
        from opencir.models.base import retriever_fingerprint

        check_model(self.manifest, retriever_fingerprint(model), spec, self.folder)

    def embeddings(self) -> np.ndarray:
        """The exact gallery vectors ``[count, dim]`` (memory-mapped), rows in id order."""
        return np.load(self.folder / EMBEDDINGS_FILE, mmap_mode="r")

    def get(self, item_id: int) -> Item:
        item = self.items.get(int(item_id))
        if item is None:
            raise UnknownItemError(f"no image with id {item_id} in this index")
        return item

    def find(self, name: str) -> Item:
        item = self.items.find(name)
        if item is None:
            raise UnknownItemError(f"no image named {name!r} in this index")
        return item

    def page(self, offset: int = 0, limit: int = 50) -> list[Item]:
        return self.items.page(offset, limit)

    def search(
        self,
        queries: Any,
        k: int,
        exclude: Sequence[Collection[int]] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query row (``[Q, D]`` array or tensor, L2-normalised).

        ``exclude[q]`` are ids dropped from query ``q``'s results (e.g. its reference image).
        """
        matrix = _as_matrix(queries, self.dim)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        fetch = min(k + extra, len(self))
        if fetch == 0:
            return [[] for _ in range(len(matrix))]
        search = self.exact.search if self.exact is not None else self.vectors.search
        scores, ids = search(matrix, fetch)
        found = self.items.many(sorted({int(i) for i in ids.ravel() if i >= 0}))
        return [
            _ranked(scores[q], ids[q], found, set(exclude[q]) if exclude else set(), k)
            for q in range(len(matrix))
        ]

    def close(self) -> None:
        self.items.close()


def _open_items(folder: Path, count: int) -> ItemTable:
    """The item table of ``folder``, checked to hold ``count`` intact rows."""
    try:
        items = ItemTable(folder / ITEMS_FILE)
    except sqlite3.Error as error:
        raise IndexFormatError(f"index {folder}: cannot open {ITEMS_FILE}: {error}") from error
    damage = items.damage(count)
    if damage:
        items.close()
        raise IndexFormatError(f"index {folder} is damaged: {ITEMS_FILE} {damage}")
    return items


def _exact_search(folder: Path, manifest: Manifest, vectors: Any) -> ExactSearch | None:
    """The int8-bounded exact search of a flat index; None (FAISS searches) for other types."""
    if manifest.factory != "Flat" or not exact_kernels_available():
        return None
    import faiss

    ids = faiss.vector_to_array(vectors.id_map).astype(np.int64)
    embeddings = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r")
    return ExactSearch.open(folder, embeddings, ids)


def _as_matrix(queries: Any, dim: int) -> np.ndarray:
    if hasattr(queries, "detach"):
        queries = queries.detach().cpu().numpy()
    matrix = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    if matrix.ndim == 1:
        matrix = matrix[None]
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"queries must be [Q, {dim}], got {tuple(matrix.shape)}")
    return matrix


def _ranked(
    scores: np.ndarray, ids: np.ndarray, found: Mapping[int, Item], exclude: set[int], k: int
) -> list[Hit]:
    hits: list[Hit] = []
    for score, item_id in zip(scores, ids, strict=True):
        item = found.get(int(item_id))
        if item is None or item.id in exclude:
            continue
        hits.append(Hit(len(hits) + 1, float(score), item))
        if len(hits) == k:
            break
    return hits
