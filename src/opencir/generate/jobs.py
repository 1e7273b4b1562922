"""The units of work that flow between stages, and their outcomes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from PIL import Image

from opencir.generate.client import REQUEST_FAILURES, Usage
from opencir.generate.sampling import Pair

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
STATUSES = ("ok", "failed", "rejected")
NO_USAGE = Usage()
# Failures a later run may not meet again: the endpoint was down, overloaded, misaddressed or
# refused the request, a local model crashed, or the run stopped first. Image failures,
# missing captions and rejected answers depend only on the data and stay final.
RETRYABLE_FAILURES = REQUEST_FAILURES | {"model_error", "cancelled"}


@dataclass
class ImageJob:
    """One image of a shard: loaded (``image``, content ``sha``) or failed (``error``)."""

    key: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    sha: str | None = None
    image: Image.Image | None = None
    error: str | None = None


@dataclass
class PairJob:
    """A pair to write a change for, with its two images and (when needed) captions."""

    pair: Pair
    reference: ImageJob
    target: ImageJob
    reference_caption: str | None = None
    target_caption: str | None = None

    @property
    def captions(self) -> tuple[str, ...]:
        return tuple(c for c in (self.reference_caption, self.target_caption) if c)


@dataclass(frozen=True)
class Outcome:
    """What a stage made of one item: ``ok`` text, or ``failed``/``rejected`` with a reason."""

    status: str
    text: str | None = None
    reason: str | None = None
    detail: str = ""
    usage: Usage = NO_USAGE
    attempts: int = 0
    cached: bool = False

    @classmethod
    def ok(cls, text: str, usage: Usage = NO_USAGE, attempts: int = 1) -> Outcome:
        return cls("ok", text, None, "", usage, attempts)

    @classmethod
    def failed(
        cls, reason: str, detail: str = "", usage: Usage = NO_USAGE, attempts: int = 0
    ) -> Outcome:
        return cls("failed", None, reason, detail, usage, attempts)

    @classmethod
    def rejected(
        cls, reason: str, detail: str = "", usage: Usage = NO_USAGE, attempts: int = 1
    ) -> Outcome:
        return cls("rejected", None, reason, detail, usage, attempts)

    def to_cache(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "text": self.text,
            "reason": self.reason,
            "detail": self.detail,
            "attempts": self.attempts,
        }

    @classmethod
    def from_cache(cls, data: Mapping[str, Any]) -> Outcome:
        return cls(
            data["status"],
            data.get("text"),
            data.get("reason"),
            data.get("detail", ""),
            Usage(),
            int(data.get("attempts", 0)),
            cached=True,
        )


async def map_batches(
    items: Sequence[T], size: int, work: Callable[[Sequence[T]], list[R]], what: str
) -> list[R | Outcome]:
    """``work`` over ``items`` in batches of ``size``, each in a worker thread (a local model
    blocks; the event loop keeps serving the other stages). A batch that raises becomes one
    ``model_error`` failure per item, logged as ``what``."""
    results: list[R | Outcome] = []
    for start in range(0, len(items), size):
        batch = items[start : start + size]
        try:
            results += await asyncio.to_thread(work, batch)
        except (RuntimeError, ValueError) as error:
            log.warning("%s batch failed: %s", what, error)
            results += [Outcome.failed("model_error", str(error)[:200])] * len(batch)
    return results


def is_retryable(record: Mapping[str, Any]) -> bool:
    """Whether a shard record is a failure that a rerun asks again (:data:`RETRYABLE_FAILURES`)."""
    if record.get("type") != "failure" or record.get("status") != "failed":
        return False
    return str(record.get("reason", "")).removeprefix("caption_") in RETRYABLE_FAILURES


def content_hash(data: bytes) -> str:
    """Content identity of an image file (cache keys, provenance)."""
    return hashlib.sha256(data).hexdigest()[:32]


def stable_seed(*parts: Any) -> int:
    """A per-item request seed from stable parts (same pair, same seed → same request)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF
