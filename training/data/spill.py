"""Texts kept on disk: a table's routed texts as a file of UTF-8 bytes plus int64 offsets in memory.

At 10M records the texts alone are ~2.4 GB of Arrow strings; spilled, they cost 8 bytes a record
(the offsets) and are read back with ``os.pread`` in blocks. Not ``mmap``: mapped pages that have
been read count in the process's resident set, which is the memory a training job is held to.

The file is created in :func:`spill_dir` (``ROUTER_ML_SPILL_DIR``, else the system temp dir) and,
on POSIX, unlinked as soon as it is open: its disk space comes back when the last column using it is
garbage-collected (the descriptor closes), at exit, and even when the process is killed. Where an open
file cannot be unlinked (Windows) it is removed when the column is collected or at exit.

:class:`SpilledText` behaves like the in-memory :class:`~training.data.columns.StrColumn` (it is
one): ``len``, ``t[i]`` -> ``str``, ``t[a:b]`` and ``t[index_array]`` -> ``list``, iteration and
:meth:`~training.data.columns.StrColumn.blocks` a block of rows per read. A selection
(:meth:`SpilledText.take`) whose texts fit in the column's memory budget is read into memory; a
larger one stays on disk as an index array into the same file (8 bytes a selected record).
"""

from __future__ import annotations

import math
import os
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.errors import DataError
from training.data.columns import _CHUNK, StrColumn, _pa

__all__ = ["DEFAULT_TEXT_MEMORY_MB", "SPILL_DIR_ENV", "TEXT_MEMORY_ENV", "SpillWriter", "SpilledText", "spill_dir",
           "text_memory_budget"]

#: texts (Arrow bytes + offsets) held in memory before a load moves them to disk
DEFAULT_TEXT_MEMORY_MB = 256
TEXT_MEMORY_ENV = "ROUTER_ML_TEXT_MEMORY_MB"
SPILL_DIR_ENV = "ROUTER_ML_SPILL_DIR"
_GAP = 4096  # bytes between wanted texts worth reading through rather than a read (a syscall) each


def text_memory_budget(text_memory_mb: float | None) -> int | None:
    """The text budget in bytes (None = unlimited) for ``load_traffic(text_memory_mb=...)``: the value
    given, else ``$ROUTER_ML_TEXT_MEMORY_MB`` (so a command without the option can spill), else 256."""
    value: Any = text_memory_mb
    where = "text_memory_mb"
    if value is None:
        value, where = os.environ.get(TEXT_MEMORY_ENV) or DEFAULT_TEXT_MEMORY_MB, f"${TEXT_MEMORY_ENV}"
    try:
        mb = float(value)
    except ValueError:
        mb = math.nan
    if not mb >= 0:
        raise DataError(f"{where} must be a number of megabytes >= 0 (inf: keep every text in memory), got {value!r}")
    return None if math.isinf(mb) else int(mb * 2**20)


def spill_dir() -> Path:
    """Where spilled texts go: ``$ROUTER_ML_SPILL_DIR`` (created if needed), else the system temp dir."""
    configured = os.environ.get(SPILL_DIR_ENV)
    if not configured:
        return Path(tempfile.gettempdir())
    path = Path(configured)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _release(fd: int, path: str | None) -> None:
    os.close(fd)
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass


class _SpillFile:
    """One open spill file, shared by a column and its on-disk selections; closed when all are gone."""

    def __init__(self, directory: Path | None = None):
        fd, path = tempfile.mkstemp(prefix="router-ml-texts-", suffix=".utf8", dir=directory or spill_dir())
        self.fd = fd
        self.path: str | None = path
        try:
            os.unlink(path)  # POSIX: the space is freed when the descriptor closes, whatever happens
            self.path = None
        except OSError:
            pass
        self.size = 0
        self._finalizer = weakref.finalize(self, _release, fd, self.path)

    def write(self, data: memoryview | bytes) -> None:
        view = memoryview(data)
        while len(view):
            written = os.pwrite(self.fd, view, self.size)
            self.size += written
            view = view[written:]

    def read(self, start: int, stop: int) -> bytes:
        chunks, pos = [], start
        while pos < stop:
            got = os.pread(self.fd, stop - pos, pos)
            if not got:
                raise OSError(f"spilled text file ended at byte {pos} of {stop}: was it deleted or truncated?")
            chunks.append(got)
            pos += len(got)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _arrow_strings(offsets: np.ndarray, data: bytes) -> Any:
    """A ``large_string`` array over ``data`` cut at ``offsets`` (relative, starting at 0)."""
    pa = _pa()
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(np.ascontiguousarray(offsets, "<i8")),
                                            pa.py_buffer(data))


class SpilledText(StrColumn):
    """A text column on disk (see the module doc). ``rows`` None = every row of the file in order,
    else the file rows this column holds, in its order."""

    __slots__ = ("_file", "_offsets", "_rows", "budget")

    def __init__(self, file: _SpillFile, offsets: np.ndarray, rows: np.ndarray | None = None, *, budget: int):
        self._file, self._offsets, self._rows, self.budget = file, offsets, rows, budget

    @property
    def array(self) -> Any:  # type: ignore[override]
        """The whole column as an Arrow chunked array, read into memory (avoid on large data)."""
        pa = _pa()
        return pa.chunked_array(list(self.blocks()), type=pa.large_string())

    def __reduce__(self):
        return StrColumn, (self.array,)  # a pickled copy (another process) holds its texts in memory

    def __len__(self) -> int:
        return len(self._offsets) - 1 if self._rows is None else len(self._rows)

    def __repr__(self) -> str:
        return f"SpilledText({len(self)} strings on disk)"

    def _file_rows(self, index: Any) -> np.ndarray:
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"text index out of range for a column of {len(self)}")
        idx = np.where(idx < 0, idx + len(self), idx)
        return idx if self._rows is None else self._rows[idx]

    def _read(self, rows: np.ndarray) -> Any:
        """The texts of file ``rows`` (any order) as one Arrow array. Texts that lie close together
        in the file (gaps under ``_GAP`` bytes) are read with one ``pread`` per run: rows in order
        cost one read, scattered rows one read each."""
        starts, stops = self._offsets[rows], self._offsets[rows + 1]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(stops - starts, out=offsets[1:])
        if not len(rows):
            return _arrow_strings(offsets, b"")
        if np.array_equal(starts[1:], stops[:-1]):  # consecutive rows: their span is the data
            return _arrow_strings(offsets, self._file.read(int(starts[0]), int(stops[-1])))
        order = np.argsort(starts, kind="stable")
        reach = np.maximum.accumulate(stops[order])
        first = np.ones(len(rows), dtype=bool)
        first[1:] = starts[order][1:] > reach[:-1] + _GAP
        heads = np.flatnonzero(first)
        run_lo, run_hi = starts[order][heads], np.maximum.reduceat(stops[order], heads)
        runs = [memoryview(self._file.read(lo, hi)) for lo, hi in zip(run_lo.tolist(), run_hi.tolist(), strict=True)]
        run_of = np.empty(len(rows), dtype=np.int64)
        run_of[order] = np.cumsum(first) - 1
        begin, end = starts - run_lo[run_of], stops - run_lo[run_of]
        data = b"".join(runs[r][b:e] for r, b, e in zip(run_of.tolist(), begin.tolist(), end.tolist(), strict=True))
        return _arrow_strings(offsets, data)

    def blocks(self, size: int = _CHUNK) -> Iterator[Any]:
        for start in range(0, len(self), size):
            stop = min(start + size, len(self))
            rows = np.arange(start, stop, dtype=np.int64) if self._rows is None else self._rows[start:stop]
            yield self._read(rows)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, int | np.integer):
            i = int(index)
            if not -len(self) <= i < len(self):
                raise IndexError(f"text {i} out of range for a column of {len(self)}")
            row = int(self._file_rows([i])[0])
            return self._file.read(int(self._offsets[row]), int(self._offsets[row + 1])).decode("utf-8")
        if isinstance(index, slice):
            index = range(*index.indices(len(self)))
        rows = self._file_rows(np.asarray(index, dtype=np.int64))
        return [text for s in range(0, len(rows), _CHUNK) for text in self._read(rows[s:s + _CHUNK]).to_pylist()]

    def to_list(self) -> list[str | None]:
        return [text for block in self.blocks() for text in block.to_pylist()]

    def plain(self) -> Any:
        return self.array

    def compact(self) -> StrColumn:
        return self

    def is_null(self) -> np.ndarray:
        return np.zeros(len(self), dtype=bool)  # a spilled column holds texts, never null

    def take(self, indices: Any) -> StrColumn:
        """The selected texts: in memory when their bytes fit :attr:`budget`, else on disk."""
        rows = self._file_rows(indices)
        size = int((self._offsets[rows + 1] - self._offsets[rows]).sum()) + 8 * len(rows)
        if size <= self.budget:
            pa = _pa()
            return StrColumn(pa.chunked_array([self._read(rows[s:s + _CHUNK]) for s in range(0, len(rows), _CHUNK)],
                                              type=pa.large_string()))
        return SpilledText(self._file, self._offsets, rows, budget=self.budget)


class SpillWriter:
    """Appends text columns to one spill file, in row order, and hands back the :class:`SpilledText`."""

    def __init__(self, budget: int, directory: Path | None = None):
        self.file = _SpillFile(directory)
        self.budget = budget
        self._offsets = np.zeros(1, dtype=np.int64)  # grown in place; no view is handed out before finish
        self.n = 0

    def append(self, column: StrColumn) -> None:
        """Write the texts of ``column`` (no nulls) after those already written."""
        for block in column.blocks():
            if block.null_count:
                raise ValueError("a spilled text column cannot hold null texts")
            k = len(block)
            offsets = np.frombuffer(block.buffers()[1], dtype="<i8")[block.offset:block.offset + k + 1]
            if offsets[-1] > offsets[0]:
                self.file.write(memoryview(block.buffers()[2])[int(offsets[0]):int(offsets[-1])])
            if self.n + k + 1 > len(self._offsets):
                self._offsets.resize(max(self.n + k + 1, len(self._offsets) * 9 // 8, 4096), refcheck=False)
            self._offsets[self.n + 1:self.n + k + 1] = offsets[1:] - offsets[0] + self._offsets[self.n]
            self.n += k

    def text(self, row: int) -> str:
        """Text ``row`` of those written so far."""
        return self.file.read(int(self._offsets[row]), int(self._offsets[row + 1])).decode("utf-8")

    def finish(self) -> SpilledText:
        self._offsets.resize(self.n + 1, refcheck=False)
        return SpilledText(self.file, self._offsets, budget=self.budget)
