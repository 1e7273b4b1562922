"""Composed search over an index: a reference (uploaded image or gallery id) plus a text.

Text policy (shared by the CLI, the HTTP API and the web page): surrounding whitespace is
stripped and inner runs of whitespace become one space; an empty text, or one longer than
``max_text_chars`` characters, is refused (never silently cut, so a user sees why). A text
within that limit but longer than the model's token window is truncated to the window by the
tokenizer, and the result says so (``text_truncated``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from opencir.index.manifest import IndexModelMismatchError
from opencir.index.resolve import canonical_spec, resolve_model
from opencir.index.store import GalleryIndex, Hit, Item

log = logging.getLogger(__name__)

DEFAULT_MAX_TEXT_CHARS = 500
DEFAULT_MAX_K = 100


class QueryError(ValueError):
    """A query input is wrong; ``code`` and ``field`` say which and how (for API errors)."""

    def __init__(self, message: str, code: str, field: str) -> None:
        super().__init__(message)
        self.code, self.field = code, field


@dataclass(frozen=True)
class QueryLimits:
    """Bounds on user input."""

    max_k: int = DEFAULT_MAX_K
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS


@dataclass(frozen=True)
class SearchResult:
    """Ranked hits for one composed query, with what was actually searched."""

    text: str
    k: int
    hits: list[Hit]
    reference: Item | None = None
    text_truncated: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)


def clean_text(text: str, max_chars: int = DEFAULT_MAX_TEXT_CHARS) -> str:
    """Apply the text policy above or raise :class:`QueryError`."""
    if not isinstance(text, str):
        raise QueryError("text must be a string", "invalid_text", "text")
    cleaned = re.sub(r"\s+", " ", text).strip()
    if not cleaned:
        raise QueryError(
            "text is empty or only whitespace; say what to change", "empty_text", "text"
        )
    if len(cleaned) > max_chars:
        raise QueryError(
            f"text has {len(cleaned)} characters, the limit is {max_chars}", "text_too_long", "text"
        )
    return cleaned


def check_k(k: int, limits: QueryLimits) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limits.max_k:
        raise QueryError(
            f"k must be an integer from 1 to {limits.max_k}, got {k!r}", "k_out_of_range", "k"
        )
    return k


class Searcher:
    """A model and the index it built. Thread-safe: model calls are serialised by a lock."""

    def __init__(
        self, index: GalleryIndex, model: Any, limits: QueryLimits = QueryLimits()
    ) -> None:
        self.index, self.model, self.limits = index, model, limits
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        index: str | Path,
        model: str | Path | None = None,
        *,
        limits: QueryLimits = QueryLimits(),
        mmap: bool = True,
        verify: bool = False,
    ) -> Searcher:
        """Open ``index`` with ``model`` (default: the model recorded in its manifest)."""
        gallery = GalleryIndex.open(index, mmap=mmap, verify=verify)
        spec = str(model) if model is not None else gallery.manifest.model.spec
        if not spec:
            raise IndexModelMismatchError(f"index {index} does not record its model; pass --model")
        try:
            retriever = resolve_model(spec)
            gallery.check_model(retriever, canonical_spec(spec))
        except BaseException:
            gallery.close()
            raise
        return cls(gallery, retriever, limits)

    def search(
        self,
        text: str,
        *,
        image: Image.Image | None = None,
        reference_id: int | None = None,
        k: int = 10,
        exclude_reference: bool = True,
    ) -> SearchResult:
        """Search with an image or a gallery id as the reference (exactly one of them)."""
        started = time.perf_counter()
        text = clean_text(text, self.limits.max_text_chars)
        k = check_k(k, self.limits)
        reference = None
        if (image is None) == (reference_id is None):
            raise QueryError(
                "give exactly one reference: an image or a gallery id",
                "reference_required",
                "image",
            )
        if reference_id is not None:
            reference = self.index.get(reference_id)
            image = self.load_gallery_image(reference)
        encoded = time.perf_counter()
        query, truncated = self.encode(image, text)
        searched = time.perf_counter()
        exclude = [{reference.id}] if reference is not None and exclude_reference else None
        hits = self.index.search(query, k, exclude)[0]
        done = time.perf_counter()
        timings = {
            "load": (encoded - started) * 1e3,
            "encode": (searched - encoded) * 1e3,
            "search": (done - searched) * 1e3,
        }
        return SearchResult(text, k, hits, reference, truncated, timings)

    def load_gallery_image(self, item: Item) -> Image.Image:
        from opencir.data.images import load_image

        return load_image(item.path)

    def encode(self, image: Image.Image, text: str) -> tuple[Any, bool]:
        """The query embedding ``[1, D]`` and whether the text exceeded the token window."""
        with self._lock:
            vector = self.model.encode_query([image], [text])
            return vector.detach().cpu().float().numpy(), self._too_many_tokens(text)

    def _too_many_tokens(self, text: str) -> bool:
        tokenizer = getattr(self.model, "tokenizer", None)
        config = getattr(self.model, "config", None)
        limit = getattr(getattr(config, "backbone", None), "max_text_length", None)
        if tokenizer is None or limit is None:
            return False
        ids = tokenizer(text, truncation=True, max_length=limit + 1)["input_ids"]
        return len(ids) > limit

    def close(self) -> None:
        self.index.close()
