"""Row access to a cached feature matrix that never holds (or maps) the whole matrix in memory.

:func:`training.featurizers.featurize` writes ``features.npy`` in the cache; at a million prompts
that file is a gigabyte, at ten million ten. :class:`FeatureMatrix` reads the rows a caller asks for
with plain file reads (``readinto``), so only those rows occupy the process's memory: a memory map
would do the reading too, but every page it touches counts in the process's resident set until the
kernel evicts it, which makes peak RSS grow with the data. Indexing (``X[rows]``, ``X[a:b]``) returns
an ordinary in-memory array, so code written for arrays keeps working.

Rows are grouped in **shards** of :data:`SHARD_ROWS` consecutive rows (the cache's shard size): the
training loop streams whole shards, and under DDP each rank reads the shards ``s`` with
``s % world == rank`` (:func:`training.trainer.epoch_windows`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from training.featurizers._cache import DEFAULT_SHARD_SIZE

__all__ = ["SHARD_ROWS", "FeatureMatrix", "as_feature_matrix"]

#: Rows per shard of the feature cache (``training.featurizers._cache.DEFAULT_SHARD_SIZE``).
SHARD_ROWS = DEFAULT_SHARD_SIZE


class FeatureMatrix:
    """A read-only ``(n, d)`` float32 matrix in an ``.npy`` file, read on demand (module doc)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        with self.path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(f)
            self.offset = f.tell()
        if len(shape) != 2 or fortran or dtype != np.float32:
            raise ValueError(f"{self.path}: expected a C-order float32 (n, d) matrix, got {dtype} {shape}")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(np.float32)
        self._row_bytes = self.shape[1] * 4

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # np.asarray(X): the whole matrix (small data only)
        out = self.read(0, len(self))
        return out if dtype is None else out.astype(dtype, copy=False)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new array."""
        start, stop = max(0, start), min(len(self), stop)
        out = np.empty((max(0, stop - start), self.shape[1]), dtype=np.float32)
        if out.size:
            with self.path.open("rb") as f:
                f.seek(self.offset + start * self._row_bytes)
                if f.readinto(memoryview(out).cast("B")) != out.nbytes:
                    raise OSError(f"{self.path}: truncated feature file (rows {start}:{stop}); delete the cache entry")
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at ``rows`` (any order, repeats allowed), read shard by shard."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"row index out of range for {self.path} with {len(self)} rows")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        shard = ordered // SHARD_ROWS
        bounds = np.flatnonzero(np.diff(shard)) + 1
        for part in np.split(np.arange(len(ordered)), bounds):
            block = self.read(int(ordered[part[0]]), int(ordered[part[-1]]) + 1)
            out[order[part]] = block[ordered[part] - ordered[part[0]]]
        return out

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return self.read(start, stop)[::step] if step > 0 else self.take(np.arange(start, stop, step))
        if isinstance(index, int | np.integer):
            return self.read(int(index), int(index) + 1)[0]
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return self.take(index)


def as_feature_matrix(X: np.ndarray) -> np.ndarray | FeatureMatrix:
    """``X`` as a :class:`FeatureMatrix` when it is a memory map of a whole ``.npy`` file (as
    ``featurize(..., mmap=True)`` returns), else ``X`` itself."""
    filename = getattr(X, "filename", None)
    if isinstance(X, np.memmap) and filename and X.dtype == np.float32 and X.ndim == 2:
        return FeatureMatrix(filename)
    return X
