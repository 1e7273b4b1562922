"""Write large index files chunk by chunk, so building never holds a whole matrix in memory.

Writing through ``np.memmap`` would also stream, but every page it dirties stays mapped into
the process (and counted in its resident memory) until the map is closed; plain buffered
writes keep the resident set at one chunk.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

# FAISS's on-disk header of an index: fourcc, d, ntotal, two unused fields, is_trained, metric.
_HEADER = struct.Struct("<4siqqqBi")
_UNUSED = 1 << 20
_METRIC_INNER_PRODUCT = 0


class NpyWriter:
    """Append rows to a ``.npy`` file of known shape; ``close`` checks every row was written."""

    def __init__(self, path: Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = path, np.dtype(dtype), shape
        self._rows = 0
        self._handle: BinaryIO = path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self._handle, {**header, "shape": shape})

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, self.dtype)
        if rows.shape[1:] != self.shape[1:] or self._rows + len(rows) > self.shape[0]:
            raise ValueError(f"rows {rows.shape} do not fit {self.path.name} of shape {self.shape}")
        self._handle.write(rows.tobytes())
        self._rows += len(rows)

    def close(self) -> None:
        self._handle.close()
        if self._rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: wrote {self._rows} of {self.shape[0]} rows")

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._handle.close()


def _faiss_header(fourcc: bytes, dim: int, count: int) -> bytes:
    return _HEADER.pack(fourcc, dim, count, _UNUSED, _UNUSED, 1, _METRIC_INNER_PRODUCT)


def write_flat_faiss(path: Path, dim: int, chunks: Iterable[np.ndarray], ids: np.ndarray) -> None:
    """Write ``IndexIDMap2(IndexFlatIP)`` over the row ``chunks`` exactly as ``faiss.write_index``.

    The vectors go to disk as they arrive, so a flat index of any size is written with the
    memory of one chunk (``faiss.write_index`` needs the whole index in RAM first).
    """
    count = len(ids)
    written = 0
    with path.open("wb") as handle:
        handle.write(_faiss_header(b"IxM2", dim, count))
        handle.write(_faiss_header(b"IxFI", dim, count))
        handle.write(struct.pack("<Q", count * dim))
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, np.float32)
            if chunk.ndim != 2 or chunk.shape[1] != dim:
                raise ValueError(f"expected [N, {dim}] float32 rows, got {chunk.shape}")
            handle.write(chunk.tobytes())
            written += len(chunk)
        if written != count:
            raise ValueError(f"{path.name}: got {written} vectors for {count} ids")
        handle.write(struct.pack("<Q", count))
        handle.write(np.ascontiguousarray(ids, "<i8").tobytes())


def iter_npy_rows(path: Path, start: int = 0, chunk: int = 65_536) -> Iterator[np.ndarray]:
    """Rows ``start:`` of a 2-D ``.npy`` file, ``chunk`` at a time, read without a memory map."""
    with path.open("rb") as handle:
        major, _ = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(handle)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path} is not a C-ordered 2-D array")
        width = shape[1] * dtype.itemsize
        handle.seek(handle.tell() + start * width)
        for begin in range(start, shape[0], chunk):
            count = min(chunk, shape[0] - begin)
            yield np.fromfile(handle, dtype, count * shape[1]).reshape(count, shape[1])
