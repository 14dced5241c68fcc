"""Reading canonical JSONL and Parquet over several processes, with the result of one process.

The file is cut into shards - byte ranges on line starts for JSON Lines (each knowing the number
of its first line), runs of row groups for Parquet (each knowing its first row) - and a process
pool validates them, at most two shards a worker in flight. Shards come back in file order and
the loader consumes their batches exactly as it consumes one process's batches, so the table, the
counts, every error message and the quarantine file (its lines and their order) are identical to
``num_proc=1``. Workers start with ``spawn`` (forking a process that already runs Arrow's thread
pools is not safe).
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

from router_ml.errors import DataError
from router_ml.optional import require
from router_ml.pricing import PriceCatalog
from training.data.batches import Batch, read_batches
from training.data.fast_jsonl import jsonl_blocks
from training.data.fast_parquet import _ROW_BATCH, parquet_batch, parquet_fast

__all__ = ["parallel_batches"]

_SHARD_BYTES = 32 << 20
_SHARD_ROWS = 65536
_SCAN = 16 << 20


def _jsonl_shards(path: Path, shard_bytes: int) -> list[tuple[int, int, int]]:
    """(start byte, end byte, first line number) of each shard, cut at line starts."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for target in range(shard_bytes, size, shard_bytes):
            if target <= cuts[-1]:
                continue
            f.seek(target)
            f.readline()  # to the start of the next line
            if f.tell() < size:
                cuts.append(f.tell())
        cuts.append(size)
        shards, line, pos = [], 1, 0
        f.seek(0)
        for start, end in zip(cuts, cuts[1:], strict=False):
            shards.append((start, end, line))
            while pos < end:  # count the newlines before the next shard
                chunk = f.read(min(_SCAN, end - pos))
                line += chunk.count(b"\n")
                pos += len(chunk)
    return shards


def _jsonl_shard(task: tuple[Path, PriceCatalog | None, int, int, int]) -> tuple[list[Batch], bool]:
    path, prices, start, end, first_line = task
    out = list(jsonl_blocks(path, prices, start=start, end=end, first_line=first_line))
    return [b for b, _ in out], any(seen for _, seen in out)


def _parquet_shards(path: Path, shard_rows: int) -> list[tuple[list[int], int]]:
    """(row groups, first row) of each shard."""
    pq = require("pyarrow.parquet", purpose="reading Parquet")
    try:
        meta = pq.ParquetFile(path).metadata
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"cannot read Parquet file: {exc}", location=str(path)) from exc
    if meta.num_rows == 0:
        raise DataError("the file is empty (no rows)", location=str(path))
    shards: list[tuple[list[int], int]] = []
    rows = in_shard = 0
    for g in range(meta.num_row_groups):
        if not shards or in_shard >= shard_rows:
            shards.append(([], rows))
            in_shard = 0
        shards[-1][0].append(g)
        rows += meta.row_group(g).num_rows
        in_shard += meta.row_group(g).num_rows
    return shards


def _parquet_shard(task: tuple[Path, PriceCatalog | None, list[int], int, bool]) -> tuple[list[Batch], bool]:
    pq = require("pyarrow.parquet", purpose="reading Parquet")
    path, prices, groups, offset, fast = task
    out = []
    for batch in pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=_ROW_BATCH, row_groups=groups):
        out.append(parquet_batch(path, batch, offset, prices, fast))
        offset += batch.num_rows
    return out, True


def parallel_batches(fmt: str, path: Path, prices: PriceCatalog | None, num_proc: int) -> Iterator[Batch]:
    """The batches of canonical ``fmt`` at ``path``, validated by ``num_proc`` processes, in file order."""
    tasks: list[Any]
    if fmt == "jsonl" and not path.name.endswith(".gz"):
        tasks = [(path, prices, *shard) for shard in _jsonl_shards(path, _SHARD_BYTES)]
        work: Any = _jsonl_shard
    elif fmt == "parquet":
        fast = parquet_fast(path)
        tasks = [(path, prices, groups, first, fast) for groups, first in _parquet_shards(path, _SHARD_ROWS)]
        work = _parquet_shard
    else:
        tasks = []
    if len(tasks) < 2:  # a small (or compressed) file: one process is as fast
        yield from read_batches(fmt, path, prices=prices)
        return
    pool = ProcessPoolExecutor(min(num_proc, len(tasks)), mp_context=multiprocessing.get_context("spawn"))
    seen_any = False
    todo = iter(tasks)
    # at most two shards a worker in flight: memory stays bounded however far the workers run ahead
    pending = deque(pool.submit(work, task) for task in islice(todo, 2 * num_proc))
    try:
        while pending:
            batches, seen = pending.popleft().result()
            pending.extend(pool.submit(work, task) for task in islice(todo, 1))
            seen_any |= seen
            yield from batches
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if not seen_any:
        raise DataError("the file is empty (no records)", location=str(path))
