"""The fast reader of canonical JSON Lines: blocks of complete lines, parsed with ``orjson`` when it
is installed, types checked as each line is added, ranges checked on the whole block.

A line the fast rules do not take whole goes through :func:`training.data.readers.jsonl_row`, the
exact per-line path, so its error message, location and quarantine line are the ones it always gave.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.errors import DataError
from router_ml.pricing import PriceCatalog
from training.data._rows import BOM
from training.data.batches import _UNDECODED, Batch, Locations, _bad_rows, _combine, _prompt, _timestamp_ok
from training.data.columns import Assembler, canonical_json
from training.data.readers import _CANONICAL_KEYS, jsonl_row
from training.data.schema import OUTCOME_KEYS

__all__ = ["jsonl_batches", "jsonl_blocks"]

_BLOCK_BYTES = 8 << 20
_OUTCOME_KEYS = frozenset(OUTCOME_KEYS)

_NUMBER = frozenset((int, float, type(None)))
_COUNT = frozenset((int, type(None)))


def _add_json(asm: Assembler, obj: dict) -> bool:
    """Add one parsed JSON line to ``asm`` when the fast rules take it whole; False otherwise.

    Types are checked here (one set lookup per value); ranges are checked on the whole batch."""
    if not obj.keys() <= _CANONICAL_KEYS:
        return False
    get = obj.get
    texts = _prompt(get("prompt"), get("messages"))
    outcomes, prefs = get("outcomes"), get("preferences")
    if texts is None or type(outcomes) is not dict or not outcomes or (prefs is not None and prefs != []):
        return False
    cells, responses = [], None
    for model, o in outcomes.items():
        if type(o) is not dict or not o.keys() <= _OUTCOME_KEYS:
            return False
        g = o.get
        values = (g("quality"), g("cost"), g("input_tokens"), g("output_tokens"), g("latency_s"), g("propensity"))
        if (values[0] is None or type(values[0]) not in _NUMBER or type(values[1]) not in _NUMBER
                or type(values[2]) not in _COUNT or type(values[3]) not in _COUNT
                or type(values[4]) not in _NUMBER or type(values[5]) not in _NUMBER
                or values[5] != values[5]):  # a NaN propensity (json, not orjson, reads one) is an error
            return False
        response = g("response")
        if response is not None:
            if type(response) is not str or _UNDECODED.search(response):
                return False
            responses = responses or {}
            responses[model] = response
        cells.append((model, values))
    sample_id, task, timestamp, metadata = get("sample_id"), get("task"), get("timestamp"), get("metadata")
    if (sample_id is not None and type(sample_id) is not str) or (task is not None and type(task) is not str):
        return False
    if not _timestamp_ok(timestamp) or (metadata is not None and (type(metadata) is not dict
                                                                  or _has_huge_float(metadata))):
        return False
    asm.add(text=texts[0], messages=texts[1], sample_id=sample_id, task=task, timestamp=timestamp,
            metadata=canonical_json(metadata) if metadata else None, preferences=None, outcomes=cells,
            responses=canonical_json(responses) if responses else None)
    return True


def _has_huge_float(value: Any) -> bool:
    """orjson reads an integer beyond 64 bits as a float where json keeps it an int: such metadata
    takes the per-row path so the value is the one ``json`` gives."""
    if type(value) is float:
        return abs(value) >= 2.0 ** 63
    if type(value) is dict:
        return any(_has_huge_float(v) for v in value.values())
    if type(value) is list:
        return any(_has_huge_float(v) for v in value)
    return False


def _loads() -> Callable[[bytes], Any]:
    try:
        import orjson
    except ImportError:
        return lambda line: json.loads(line.decode("utf-8"))
    return orjson.loads


def _jsonl_batch(path: Path, lines: list[bytes], first_line: int, prices: PriceCatalog | None,
                 loads: Callable[[bytes], Any]) -> tuple[Batch, bool]:
    asm, fast_pos, slow, seen = Assembler(), [], [], False
    if first_line == 1 and lines and lines[0].startswith(BOM):  # a byte-order mark in front of the file
        lines = [lines[0][len(BOM):], *lines[1:]]
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except ValueError:  # orjson's and json's decode errors are ValueErrors
            obj = None
        if type(obj) is dict and _add_json(asm, obj):
            fast_pos.append(k)
            seen = True
            continue
        row = jsonl_row(path, first_line + k, line, prices)
        if row is not None:
            seen = True
            slow.append((k, row))
    fast = asm.finish()
    fast_pos_arr = np.asarray(fast_pos, dtype=np.int64)
    bad = _bad_rows(fast, prices)
    if bad.any():
        for k in fast_pos_arr[bad]:
            slow.append((int(k), jsonl_row(path, first_line + int(k), lines[k], prices)))
        slow.sort(key=lambda item: item[0])
        fast, fast_pos_arr = fast.take(~bad), fast_pos_arr[~bad]
    template = f"{path}:{{}}"
    return _combine(fast, fast_pos_arr, slow, lambda pos: Locations(template, pos + first_line)), seen


@contextlib.contextmanager
def gzip_errors(path: Path) -> Iterator[None]:
    """A ``.gz`` file that is not gzip, or whose stream is cut off or corrupt, as a :class:`DataError`
    naming the file (gzip raises EOFError, BadGzipFile and zlib.error without it)."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"cannot decompress the file ({exc}); the .gz file is not gzip, or was cut off or "
                        "damaged - compress it again, or read the uncompressed file", location=str(path)) from None


def jsonl_blocks(path: Path, prices: PriceCatalog | None, *, start: int = 0, end: int | None = None,
                 first_line: int = 1, block_bytes: int | None = None) -> Iterator[tuple[Batch, bool]]:
    """(batch, whether it held a non-blank line) for the lines in bytes ``[start, end)`` of ``path``;
    ``start`` and ``end`` must fall on line starts, ``first_line`` is the number of the first."""
    block_bytes = block_bytes or _BLOCK_BYTES
    opener = gzip.open if path.name.endswith(".gz") else open
    loads = _loads()
    remaining = None if end is None else end - start
    with opener(path, "rb") as f, gzip_errors(path):
        f.seek(start)
        while (remaining is None or remaining > 0) and (lines := f.readlines(block_bytes)):
            if remaining is not None:  # readlines may run past the range's end: cut there
                ends = np.cumsum([len(line) for line in lines])
                lines = lines[:int(np.searchsorted(ends, remaining)) + 1]
                remaining -= int(ends[len(lines) - 1])
            yield _jsonl_batch(path, lines, first_line, prices, loads)
            first_line += len(lines)


def jsonl_batches(path: Path, prices: PriceCatalog | None = None, *,
                  block_bytes: int | None = None) -> Iterator[Batch]:
    """Canonical JSON Lines as batches of about ``block_bytes`` (default 8 MB) of complete lines."""
    seen_any = False
    for batch, seen in jsonl_blocks(path, prices, block_bytes=block_bytes):
        seen_any |= seen
        yield batch
    if not seen_any:
        raise DataError("the file is empty (no records)", location=str(path))
