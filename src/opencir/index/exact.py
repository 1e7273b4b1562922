"""Exact inner-product search for flat indexes: an int8 pass that bounds every score, then a
float32 rerank of the few rows that can still be in the top k.

A flat scan is limited by memory bandwidth, so reading 1 byte per dimension instead of 4 is
where the speed comes from. The int8 pass is not an approximation of the result: every gallery
row ``e`` is stored as codes ``c`` with per-column scales ``s`` (``e ~ s * c``, folded into the
query), and for each query the largest possible gap between the int8 score and the true score
is bounded (Cauchy-Schwarz on the quantization errors). Any row whose int8 score is more than
twice that bound below the k-th best int8 score cannot be in the true top k; the rest are
rescored with the exact float32 vectors. The ranking is therefore the exact one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opencir.index.manifest import CODES_FILE, CODES_INFO_FILE

_BLOCK = 131_072  # gallery rows scored at a time: bounded temporaries, cache-sized selection
_SPARE = 246  # extra rows kept per block and query beyond k
_SMALL_BATCH = 4  # up to this many queries use the int8-weight gemv kernel
_KERNEL_SLACK = 2.0**-7  # bf16 output rounding of the gemv kernel is 2**-9; 4x headroom
_FLOAT_SLACK = 2.0**-16  # float32 rounding of scaled int32 dot products


def exact_kernels_available() -> bool:
    """Whether this PyTorch has the int8 CPU kernels the exact search uses."""
    try:
        import torch
    except ImportError:
        return False
    return hasattr(torch, "_int_mm") and hasattr(torch, "_weight_int8pack_mm")


@dataclass(frozen=True)
class CodeInfo:
    """Per-column scales and the error bounds of an int8 code file."""

    column_scale: np.ndarray  # [dim] float32
    max_error: float  # max over rows of ||e - s * c||
    max_code_norm: float  # max over rows of ||c||

    def to_json(self) -> dict[str, Any]:
        return {
            "column_scale": [float(x) for x in self.column_scale],
            "max_error": self.max_error,
            "max_code_norm": self.max_code_norm,
        }

    @classmethod
    def read(cls, path: Path) -> CodeInfo:
        data = json.loads(path.read_text())
        scale = np.asarray(data["column_scale"], np.float32)
        return cls(scale, float(data["max_error"]), float(data["max_code_norm"]))


def column_scale(column_abs_max: np.ndarray) -> np.ndarray:
    """Scales mapping each column's largest magnitude to 127 (1 for all-zero columns)."""
    peak = np.asarray(column_abs_max, np.float32)
    return np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)


def quantize(rows: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 codes of ``rows`` and, per row, the reconstruction error and the code norm."""
    rows = np.asarray(rows, np.float32)
    codes = np.clip(np.rint(rows / scale), -127, 127).astype(np.int8)
    decoded = codes.astype(np.float32) * scale
    error = np.linalg.norm(rows - decoded, axis=1)
    return codes, error, np.linalg.norm(codes.astype(np.float32), axis=1)


def write_codes(
    folder: Path, chunks: Iterable[np.ndarray], count: int, scale: np.ndarray
) -> Iterator[np.ndarray]:
    """Quantize ``chunks`` into ``folder``'s code files, passing each chunk on unchanged."""
    from opencir.index.stream import NpyWriter

    max_error = max_norm = 0.0
    with NpyWriter(folder / CODES_FILE, np.int8, (count, len(scale))) as writer:
        for chunk in chunks:
            codes, error, norm = quantize(chunk, scale)
            writer.write(codes)
            if len(chunk):
                max_error = max(max_error, float(error.max()))
                max_norm = max(max_norm, float(norm.max()))
            yield chunk
    info = CodeInfo(scale, max_error, max_norm)
    (folder / CODES_INFO_FILE).write_text(json.dumps(info.to_json()))


class ExactSearch:
    """Exact top-k inner product over memory-mapped float32 rows and their int8 codes."""

    def __init__(self, vectors: np.ndarray, codes: np.ndarray, info: CodeInfo, ids: np.ndarray):
        import torch

        self.vectors, self.ids, self.info = vectors, ids, info
        self._codes = torch.from_numpy(codes)
        self._ones = torch.ones(len(codes), dtype=torch.bfloat16)
        self._row_bound = info.max_error  # ||e - s*c|| for every row

    @classmethod
    def open(cls, folder: Path, vectors: np.ndarray, ids: np.ndarray) -> ExactSearch | None:
        """The exact searcher of ``folder``, or None when it has no code files."""
        if not (folder / CODES_FILE).is_file() or not (folder / CODES_INFO_FILE).is_file():
            return None
        codes = np.load(folder / CODES_FILE, mmap_mode="c")  # private map: torch wants writable
        if codes.shape != vectors.shape:
            return None
        return cls(vectors, codes, CodeInfo.read(folder / CODES_INFO_FILE), ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of shape ``[Q, k]``, best first; ids are -1 past the gallery size."""
        candidates = self._candidates(np.asarray(queries, np.float32), k)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for q, rows in enumerate(candidates):
            exact = self.vectors[rows] @ queries[q]
            order = np.argsort(-exact, kind="stable")[:k]
            scores[q, : len(order)] = exact[order]
            ids[q, : len(order)] = self.ids[rows[order]]
        return scores, ids

    def _candidates(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        """Per query, the sorted rows whose true score may reach the true top k."""
        score, window, _ = self._scorer(queries)
        return _select(score, len(self._codes), len(queries), k, window)

    def _scorer(self, queries: np.ndarray) -> tuple[Any, Any, Any]:
        """A block scoring function, the selection window per query in the scores' units,
        and those units per unit of true score."""
        import torch

        folded = torch.from_numpy(queries * self.info.column_scale)
        exact = torch.tensor(queries, dtype=torch.float32)
        if len(queries) <= _SMALL_BATCH:
            return self._gemv_scorer(folded, exact)
        return self._int8_scorer(folded, exact)

    def _bound(self, queries: Any, rounding: Any, extra: Any) -> Any:
        """Per query: max |true score - int8 score| over all rows (in true-score units)."""
        true_norm = queries.norm(dim=1)
        return true_norm * self._row_bound + rounding * self.info.max_code_norm + extra

    def _gemv_scorer(self, folded: Any, queries: Any) -> tuple[Any, Any, Any]:
        """bf16 query x int8 codes: the fastest kernel for one or a few queries."""
        import torch

        half = folded.to(torch.bfloat16)
        rounding = (folded - half.float()).norm(dim=1)
        extra = _KERNEL_SLACK * half.float().norm(dim=1) * self.info.max_code_norm

        def score(start: int, stop: int) -> Any:
            ones = self._ones[start:stop]
            return torch._weight_int8pack_mm(half, self._codes[start:stop], ones)

        return score, 2 * self._bound(queries, rounding, extra), torch.ones(len(queries))

    def _int8_scorer(self, folded: Any, queries: Any) -> tuple[Any, Any, Any]:
        """int8 query x int8 codes with exact int32 sums: the fastest kernel for batches."""
        import torch

        step = folded.abs().amax(dim=1).clamp_min(1e-30) / 127
        small = torch.round(folded / step[:, None]).clamp(-127, 127)
        rounding = (folded - small * step[:, None]).norm(dim=1)
        padded = torch.zeros((max(len(small), 17), small.shape[1]), dtype=torch.int8)
        padded[: len(small)] = small.to(torch.int8)
        extra = _FLOAT_SLACK * queries.norm(dim=1) * (1 + self._row_bound)
        count = len(small)

        def score(start: int, stop: int) -> Any:
            return torch._int_mm(padded, self._codes[start:stop].T)[:count]

        return score, 2 * self._bound(queries, rounding, extra) / step, 1 / step


def _select(score: Any, total: int, count: int, k: int, window: Any) -> list[np.ndarray]:
    """Rows within ``window`` of each query's k-th best score, scanning blocks of rows.

    Each block keeps its ``k + _SPARE`` best rows per query; a query whose block holds more
    rows within the window than that (rare: mostly the first block) is scanned in full.
    """
    import torch

    best = torch.full((count, k), -math.inf)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, total, _BLOCK):
        block = score(start, min(start + _BLOCK, total))
        values, cols = torch.topk(block, min(k + _SPARE, block.shape[1]), dim=1)
        values = values.float()
        best = torch.topk(torch.cat([best, values[:, :k]], dim=1), k, dim=1).values
        floor = best[:, -1] - window
        query, pos = torch.nonzero(values >= floor[:, None], as_tuple=True)
        found.append((query.numpy(), cols[query, pos].numpy() + start, values[query, pos].numpy()))
        full = torch.nonzero(values[:, -1] >= floor).flatten()
        if len(full):
            query, col = torch.nonzero(block[full].float() >= floor[full, None], as_tuple=True)
            value = block[full[query], col].float().numpy()
            found.append((full[query].numpy(), col.numpy() + start, value))
    return _group(found, (best[:, -1] - window).numpy(), count)


def _group(
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]], floor: np.ndarray, count: int
) -> list[np.ndarray]:
    """Distinct rows per query that are above the final floor."""
    query, row, value = (np.concatenate(parts) for parts in zip(*found, strict=True))
    keep = value >= floor[query]
    query, row = query[keep], row[keep]
    order = np.lexsort((row, query))
    query, row = query[order], row[order]
    bounds = np.searchsorted(query, np.arange(count + 1))
    return [np.unique(row[bounds[q] : bounds[q + 1]]) for q in range(count)]
