"""Exact inner-product search for flat indexes: an int8 pass that bounds every score, then a
float32 rerank of the few rows that can still be in the top k.

A flat scan is limited by memory bandwidth, so reading 1 byte per dimension instead of 4 is
where the speed comes from. The int8 pass is not an approximation of the result: every gallery
row ``e`` is stored as codes ``c`` with per-column scales ``s`` (``e ~ s * c``, folded into the
query), and for each query the largest possible gap between the int8 score and the true score
is bounded (Cauchy-Schwarz on the quantization errors). Any row whose int8 score is more than
twice that bound below the k-th best int8 score cannot be in the true top k; the rest are
rescored with the exact float32 vectors. The ranking is therefore the exact one.

Rescoring costs far more per row than scanning, so a batch that the int8 window would leave
with many rows to rescore is scanned in float32 instead, with a window of a few roundings.
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

_BLOCK = 131_072  # gallery rows scored at a time by the batch kernel (bounded temporaries)
_GEMV_BLOCK = 1 << 20  # one or a few queries: few kernel calls, each a parallel region
_SPARE = 246  # extra rows kept per block and query beyond k
_FLOAT_SPARE = 6  # the same for the float32 scan, whose window holds about k rows
_SMALL_BATCH = 4  # up to this many queries use the int8-weight gemv kernel
_KERNEL_SLACK = 2.0**-8  # bf16 output rounding of the gemv kernel is <= 2**-9 of the bound
_FLOAT_SLACK = 2.0**-16  # float32 rounding of scaled int32 dot products
_PROBE_ROWS = 8192  # gallery sample that estimates how many rows the int8 pass leaves
_FLOAT_ONLY_ROWS = 4 * _PROBE_ROWS  # smaller galleries: no probe, the float32 scan
_MAX_RERANK_SHARE = 0.003  # above this share of rows to rerank, batches score in float32
_SHARE_GROWTH = 0.7  # rows left to rerank grow about as k**0.7


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

        self.vectors = np.asarray(vectors)  # a plain view: memmap indexing is slow per call
        self.ids, self.info = ids, info
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
        queries = np.ascontiguousarray(queries, np.float32)
        candidates = self._candidates(queries, k)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        for q, rows in enumerate(candidates):
            exact = _row_scores(self.vectors[rows], queries[q])
            order = np.argsort(-exact, kind="stable")[:k]
            scores[q, : len(order)] = exact[order]
            ids[q, : len(order)] = self.ids[rows[order]]
        return scores, ids

    def _candidates(self, queries: np.ndarray, k: int) -> list[np.ndarray]:
        """Per query, the sorted rows whose true score may reach the true top k.

        A batch takes the faster of two scans. The int8 scan reads a quarter of the bytes,
        but its window leaves a share of the rows to rerank one query at a time, which
        costs hundreds of times a row of a float32 matrix product; when that share is
        large (small galleries, large k, dense data) the float32 scan wins.
        """
        total, count = len(self._codes), len(queries)
        score, window, unit = self._scorer(queries)
        if count <= _SMALL_BATCH:
            return _select(score, total, count, k, window, _GEMV_BLOCK)
        if self._int8_pays(queries, window / unit, k):
            return _select(score, total, count, k, window, _BLOCK)
        score, window, _ = self._float_scorer(queries)
        return _select(score, total, count, k, window, _BLOCK, _FLOAT_SPARE)

    def _int8_pays(self, queries: np.ndarray, window: np.ndarray, k: int) -> bool:
        """Whether a batch scans faster in int8 than in float32: only when it leaves few
        rows to rerank, and never on a gallery so small that the probe costs a scan."""
        if len(self.vectors) <= _FLOAT_ONLY_ROWS:
            return False
        return self._rerank_share(queries, window, k) <= _MAX_RERANK_SHARE

    def _scorer(self, queries: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
        """A block scoring function, the selection window per query in the scores' units,
        and those units per unit of true score.

        Query preparation is done in numpy: tiny tensors gain nothing from torch's thread
        pool, and on a loaded machine every parallel region can wait a scheduler slice.
        """
        folded = (queries * self.info.column_scale).astype(np.float32)
        norm = np.linalg.norm(queries.astype(np.float64), axis=1)
        if len(queries) <= _SMALL_BATCH:
            return self._gemv_scorer(folded, norm)
        return self._int8_scorer(folded, norm)

    def _rerank_share(self, queries: np.ndarray, window: np.ndarray, k: int) -> float:
        """Estimated share of the gallery within ``window`` (true-score units) of each
        query's k-th best score: what the int8 pass would leave to rerank.

        Exact scores of an evenly strided sample of rows stand in for the gallery. When the
        sample holds less than one row per k gallery rows, its best row stands for a larger
        k, and the share is scaled down as it grows with k (as k**0.55 to k**0.8, measured).
        """
        total = len(self.vectors)
        sample = self.vectors[:: max(1, total // _PROBE_ROWS)]
        scores = queries @ sample.T
        expected_rank = k * len(sample) / total
        rank = min(len(sample), math.ceil(expected_rank))
        kth = -np.partition(-scores, rank - 1, axis=1)[:, rank - 1]
        share = float(np.mean(scores >= (kth - window)[:, None]))
        return share * min(1.0, expected_rank) ** _SHARE_GROWTH

    def _float_scorer(self, queries: np.ndarray) -> tuple[Any, np.ndarray, np.ndarray]:
        """float32 queries x float32 rows (BLAS): slower to scan than int8, but the window
        is a few float32 roundings wide, so only about k rows per query are reranked."""
        import torch

        dim = queries.shape[1]
        gamma = dim * 2.0**-24 / (1 - dim * 2.0**-24)  # float32 dot products, any order
        row_norm = float(self.info.column_scale.max()) * self.info.max_code_norm + self._row_bound
        norm = np.linalg.norm(queries.astype(np.float64), axis=1)

        def score(start: int, stop: int) -> Any:
            return torch.from_numpy(queries @ self.vectors[start:stop].T)

        # the selection pass and the rerank may each be off by gamma * |q| * |row|
        return score, 4 * gamma * norm * row_norm, np.ones(len(queries))

    def _bound(self, norm: np.ndarray, rounding: np.ndarray, extra: np.ndarray) -> np.ndarray:
        """Per query: max |true score - int8 score| over all rows (in true-score units)."""
        return norm * self._row_bound + rounding * self.info.max_code_norm + extra

    def _gemv_scorer(self, folded: np.ndarray, norm: np.ndarray) -> tuple[Any, Any, Any]:
        """bf16 query x int8 codes: the fastest kernel for one or a few queries."""
        import torch

        half = torch.from_numpy(folded).to(torch.bfloat16)
        rounded = half.float().numpy().astype(np.float64)
        rounding = np.linalg.norm(folded - rounded, axis=1)
        extra = _KERNEL_SLACK * np.linalg.norm(rounded, axis=1) * self.info.max_code_norm

        def score(start: int, stop: int) -> Any:
            ones = self._ones[start:stop]
            return torch._weight_int8pack_mm(half, self._codes[start:stop], ones)

        return score, 2 * self._bound(norm, rounding, extra), np.ones(len(folded))

    def _int8_scorer(self, folded: np.ndarray, norm: np.ndarray) -> tuple[Any, Any, Any]:
        """int8 query x int8 codes with exact int32 sums: the fastest kernel for batches."""
        import torch

        step = np.maximum(np.abs(folded).max(axis=1).astype(np.float64), 1e-30) / 127
        small = np.clip(np.rint(folded / step[:, None]), -127, 127)
        rounding = np.linalg.norm(folded - small * step[:, None], axis=1)
        padded = np.zeros((max(len(small), 17), small.shape[1]), np.int8)
        padded[: len(small)] = small
        query = torch.from_numpy(padded)
        extra = _FLOAT_SLACK * norm * (1 + self._row_bound)
        count = len(small)

        def score(start: int, stop: int) -> Any:
            return torch._int_mm(query, self._codes[start:stop].T)[:count]

        return score, 2 * self._bound(norm, rounding, extra) / step, 1 / step


def _row_scores(rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """float32 inner products, each summed on its own in float64.

    A BLAS product may round a row differently depending on where it sits in the matrix, so
    copies of one vector could score a unit in the last place apart and leave the tie rule
    (earlier row first) to chance; a per-row sum makes equal rows score equal.
    """
    return np.multiply(rows, query, dtype=np.float64).sum(axis=1).astype(np.float32)


def _select(
    score: Any,
    total: int,
    count: int,
    k: int,
    window: np.ndarray,
    block_rows: int,
    spare: int = _SPARE,
) -> list[np.ndarray]:
    """Rows within ``window`` of each query's k-th best score, scanning blocks of rows.

    Each block keeps its ``k + spare`` best rows per query; a query whose block holds more
    rows within the window than that is scanned in full, and later blocks keep twice as many.
    """
    import torch

    best = np.full((count, k), -np.inf, np.float32)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    keep = k + spare
    for start in range(0, total, block_rows):
        block = score(start, min(start + block_rows, total))
        values, cols = torch.topk(block, min(keep, block.shape[1]), dim=1)
        values = _as_numpy(values).astype(np.float32)
        cols = cols.numpy()
        best = -np.sort(-np.concatenate([best, values[:, :k]], axis=1), axis=1)[:, :k]
        floor = best[:, -1] - window
        query, pos = np.nonzero(values >= floor[:, None])
        found.append((query, cols[query, pos] + start, values[query, pos]))
        full = np.flatnonzero(values[:, -1] >= floor)
        if len(full):
            found.append(_scan(block, full, floor, start))
            keep *= 2  # the window holds more rows than kept: keep more from the next block
    return _group(found, best[:, -1] - window, count)


def _as_numpy(tensor: Any) -> np.ndarray:
    import torch

    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _scan(
    block: Any, queries: np.ndarray, floor: np.ndarray, start: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row of ``block`` above ``floor`` for the given queries (numpy: one thread)."""
    import torch

    rows = _as_numpy(block[torch.from_numpy(queries)])
    query, col = np.nonzero(rows >= floor[queries, None])
    return queries[query], col + start, rows[query, col].astype(np.float32)


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
