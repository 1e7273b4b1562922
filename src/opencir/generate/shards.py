"""Shard files committed atomically with a done-marker: the unit of resumption.

A shard holds the records of a fixed slice of the pair list. It is committed in two atomic
steps: ``part-NNNNNN.jsonl`` (written to a temporary name, fsynced, renamed), then
``part-NNNNNN.done`` naming the hash of the pairs it covers and of the data file. Only a
shard with a done-marker that matches both counts; anything else (a torn temporary file, a
data file without a marker, a marker for other pairs) is redone. So ``kill -9`` at any moment
loses at most the shards in flight, and never leaves half a shard behind.

The marker also counts the shard's retryable failures (:func:`~opencir.generate.jobs.is_retryable`:
the endpoint was down, misaddressed, ...). Such a shard is not final: a rerun asks again for
those pairs only, keeps the rest, and commits the completed shard in the same two steps.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opencir.data.triplets import atomic_write, jsonl_bytes
from opencir.generate.jobs import is_retryable
from opencir.generate.sampling import Pair

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"


def pairs_digest(pairs: Sequence[Pair]) -> str:
    text = json.dumps([p.to_dict() for p in pairs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ShardStore:
    """The ``shards/`` folder of one output directory."""

    def __init__(self, out: str | Path) -> None:
        self.directory = Path(out) / SHARDS_DIR

    def data_path(self, index: int) -> Path:
        return self.directory / f"part-{index:06d}.jsonl"

    def marker_path(self, index: int) -> Path:
        return self.directory / f"part-{index:06d}.done"

    def clean_temporaries(self) -> None:
        """Remove temporary files left by an interrupted commit."""
        if self.directory.is_dir():
            for temp in self.directory.glob(".*.tmp"):
                temp.unlink(missing_ok=True)

    def is_committed(self, index: int, digest: str) -> bool:
        marker = self._marker(index)
        return marker is not None and marker.get("pairs") == digest

    def is_final(self, index: int, digest: str, retry_failed: bool) -> bool:
        """Committed for these pairs, and (with ``retry_failed``) holding no retryable failure."""
        if not self.is_committed(index, digest):
            return False
        return not (retry_failed and self.has_retryable(index))

    def has_retryable(self, index: int) -> bool:
        """Whether committed shard ``index`` holds failures that a rerun asks again."""
        marker = self._marker(index) or {}
        if "retryable" in marker:
            return int(marker["retryable"]) > 0
        return any(is_retryable(record) for record in self.read(index))  # an older marker

    def retry_base(self, index: int, digest: str) -> list[dict[str, Any]]:
        """The committed records a rerun of shard ``index`` completes (none if not committed)."""
        return self.read(index) if self.is_committed(index, digest) else []

    def _marker(self, index: int) -> dict[str, Any] | None:
        try:
            marker = json.loads(self.marker_path(index).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return marker if isinstance(marker, dict) else None

    def commit(self, index: int, digest: str, records: Sequence[Mapping[str, Any]]) -> None:
        """Write the shard's records, then its done-marker (each step atomic)."""
        data = jsonl_bytes(records)
        self.marker_path(index).unlink(missing_ok=True)  # a stale marker must not outlive its data
        atomic_write(self.data_path(index), data)
        marker = {
            "pairs": digest,
            "data": hashlib.sha256(data).hexdigest(),
            "records": len(records),
            "retryable": sum(1 for record in records if is_retryable(record)),
        }
        atomic_write(self.marker_path(index), json.dumps(marker, sort_keys=True).encode())

    def read(self, index: int) -> list[dict[str, Any]]:
        """The records of a committed shard, checked against its marker."""
        marker = self._marker(index)
        if marker is None:
            raise ValueError(f"shard {index} of {self.directory} is not committed")
        data = self.data_path(index).read_bytes()
        if hashlib.sha256(data).hexdigest() != marker["data"]:
            raise ValueError(f"{self.data_path(index)} does not match its done-marker: delete both")
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line]

    def read_all(self, count: int) -> Iterator[dict[str, Any]]:
        for index in range(count):
            yield from self.read(index)


def shard_slices(pairs: Sequence[Pair], shard_size: int) -> list[list[Pair]]:
    """Consecutive slices of ``shard_size`` pairs (the last one may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    return [list(pairs[i : i + shard_size]) for i in range(0, len(pairs), shard_size)]
