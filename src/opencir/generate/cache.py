"""A per-item answer cache, so a rerun never pays twice for the same caption or change.

Keys are built by the stages from (image content hash, model, prompt hash). Storage is a
folder of append-only JSONL files, one per writer process (in-process run, Ray worker), so
concurrent writers never interleave and the folder works on shared filesystems. A line torn
by ``kill -9`` is skipped when the folder is read back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def files_digest(paths: Iterable[Path]) -> str:
    """A short sha256 of local model files: each path a file, or a folder walked in sorted
    order; names and bytes both count. Cache keys of local models carry it, so replacing the
    weights under the same name never serves the old model's answers."""
    digest = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            digest.update(str(path.relative_to(root) if path != root else path.name).encode())
            digest.update(b"\0")
            with path.open("rb") as stream:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


def local_model_digest(name: str | None) -> str | None:
    """:func:`files_digest` of a model given as a local file or folder; ``None`` for a hub id."""
    path = Path(name).expanduser() if name else None
    return files_digest([path]) if path is not None and path.exists() else None


class ResultCache:
    """``get``/``put`` of JSON values under string keys; ``None`` directory: memory only."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._values: dict[str, Any] | None = None
        self._stream: IO[str] | None = None
        self.hits = 0

    def _load(self) -> dict[str, Any]:
        if self._values is None:
            self._values = {}
            if self.directory is not None and self.directory.is_dir():
                for path in sorted(self.directory.glob("*.jsonl")):
                    self._read(path)
        return self._values

    def _read(self, path: Path) -> None:
        assert self._values is not None
        with open(path, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                try:
                    entry = json.loads(line)
                    self._values[entry["k"]] = entry["v"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    log.debug("skipping a torn cache line in %s", path)

    def get(self, key: str) -> Any | None:
        value = self._load().get(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        self._load()[key] = value
        if self.directory is None:
            return
        if self._stream is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            self._stream = open(self.directory / name, "a", encoding="utf-8")  # noqa: SIM115
        self._stream.write(json.dumps({"k": key, "v": value}, ensure_ascii=False) + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __len__(self) -> int:
        return len(self._load())
