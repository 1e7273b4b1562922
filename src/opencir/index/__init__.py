"""Gallery indexing: build/add/remove FAISS indexes of image folders, and composed search."""

from opencir.index.build import (
    BuildConfig,
    add_images,
    build_index,
    default_search_params,
    remove_images,
)
from opencir.index.grid import render_grid
from opencir.index.manifest import (
    GalleryIndexError,
    IndexFormatError,
    IndexModelMismatchError,
    Manifest,
    read_manifest,
)
from opencir.index.resolve import canonical_spec, resolve_model
from opencir.index.search import QueryError, QueryLimits, Searcher, SearchResult, clean_text
from opencir.index.sources import ImageSource, SourceError, iter_sources
from opencir.index.store import GalleryIndex, Hit, Item, UnknownItemError

__all__ = [
    "BuildConfig",
    "GalleryIndex",
    "GalleryIndexError",
    "Hit",
    "ImageSource",
    "IndexFormatError",
    "IndexModelMismatchError",
    "Item",
    "Manifest",
    "QueryError",
    "QueryLimits",
    "SearchResult",
    "Searcher",
    "SourceError",
    "UnknownItemError",
    "add_images",
    "build_index",
    "canonical_spec",
    "clean_text",
    "default_search_params",
    "iter_sources",
    "read_manifest",
    "remove_images",
    "render_grid",
    "resolve_model",
]
