"""Readers that yield validated *batches* of columns instead of one :class:`Row` per record.

The canonical formats take a fast path: Parquet batches are checked with numpy/pyarrow on whole
columns, JSON Lines are read in ~8 MB blocks of complete lines and parsed with ``orjson`` when it is
installed. A row the fast checks do not accept whole - anything invalid or unusual (a string where
a number belongs, preferences, extra top-level keys, a price catalog needed to derive a cost) -
goes through the exact per-row path of :mod:`training.data.readers`, so messages, locations and
quarantine lines are the ones that path gives. The other formats run on the per-row path and are
assembled into the same batches.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.errors import DataError
from router_ml.messages import message_problem, routed_text
from router_ml.optional import require
from router_ml.pricing import PriceCatalog
from training.data._rows import Row, _iter_parquet_batches
from training.data.columns import Assembler, Columns, StrColumn, canonical_json, concat
from training.data.readers import (
    _CANONICAL_KEYS,
    check_parquet_version,
    jsonl_row,
    parquet_row,
    reader_for,
)
from training.data.schema import OUTCOME_FIELDS, is_missing

__all__ = ["Batch", "Locations", "read_batches"]

_BLOCK_BYTES = 8 << 20
_ROW_BATCH = 16384
_UNDECODED = re.compile("[\udc80-\udcff]")
_OUTCOME_KEYS = frozenset(OUTCOME_FIELDS)
_STRING_COLUMNS = ("sample_id", "prompt", "messages", "task", "timestamp", "metadata")


class Locations:
    """Where each row of a batch came from: ``template.format(number)`` or a plain string."""

    def __init__(self, template: str | None = None, numbers: np.ndarray | None = None,
                 strings: Sequence[str] | None = None):
        self.template, self.numbers, self.strings = template, numbers, strings

    def __len__(self) -> int:
        return len(self.strings) if self.strings is not None else len(self.numbers)

    def __getitem__(self, i: int) -> str:
        if self.strings is not None:
            return self.strings[i]
        return self.template.format(int(self.numbers[i]))

    def take(self, idx: np.ndarray) -> Locations:
        if self.strings is not None:
            return Locations(strings=[self.strings[int(i)] for i in idx])
        return Locations(self.template, self.numbers[idx])


@dataclass
class Batch:
    """A run of input rows: the valid ones as columns (in order), the rejected ones as rows.

    ``positions`` orders both kinds within the batch (each valid row's position; each error's
    position is stored beside it), so a consumer can replay the batch in input order.
    """

    columns: Columns
    positions: np.ndarray
    locations: Locations
    errors: list[tuple[int, Row]]


def _combine(fast: Columns, fast_pos: np.ndarray, slow: list[tuple[int, Row]],
             locate: Callable[[np.ndarray], Locations]) -> Batch:
    """The batch of fast-path columns plus the per-row results, valid rows back in input order."""
    asm, slow_pos, errors = Assembler(), [], []
    for pos, row in slow:
        if row.error is not None:
            errors.append((pos, row))
        else:
            asm.add_record(row.record)
            slow_pos.append(pos)
    cols, pos = fast, np.asarray(fast_pos, dtype=np.int64)
    if slow_pos:
        cols = concat([fast, asm.finish()])
        pos = np.concatenate([pos, np.asarray(slow_pos, dtype=np.int64)])
        order = np.argsort(pos, kind="stable")
        cols, pos = cols.take(order), pos[order]
    return Batch(cols, pos, locate(pos), errors)


def _bad_rows(c: Columns, prices: PriceCatalog | None) -> np.ndarray:
    """Rows whose numbers the per-row rules would reject (or derive a cost for): they take that path."""
    present = c.rank >= 0
    with np.errstate(invalid="ignore"):
        bad = present & ~((c.quality >= 0) & (c.quality <= 1))
        bad |= (c.cost < 0) | np.isinf(c.cost) | (c.latency_s < 0) | np.isinf(c.latency_s)
        for tokens in (c.input_tokens, c.output_tokens):
            bad |= (tokens < 0) | (tokens >= 2.0 ** 53)
        bad |= ~np.isnan(c.propensity) & ~((c.propensity > 0) & (c.propensity <= 1))
        if prices is not None:
            priced = np.array([m in prices for m in c.models], dtype=bool)
            bad |= present & np.isnan(c.cost) & priced
    return bad.any(axis=1) if bad.size else np.zeros(len(c), dtype=bool)


def _prompt(prompt: Any, messages: Any) -> tuple[str, str | None] | None:
    """(routed text, canonical messages JSON) of a record that is fine as it is, else None."""
    if messages is not None:
        if prompt is not None or message_problem(messages) is not None:
            return None
        text, chat = routed_text(messages), canonical_json([dict(m) for m in messages])
    elif type(prompt) is str:
        text, chat = prompt, None
    else:
        return None
    if not text.strip() or _UNDECODED.search(text):
        return None
    return text, chat


def _timestamp_ok(value: Any) -> bool:
    if value is None:
        return True
    if type(value) is not str or is_missing(value):
        return False
    try:
        _dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


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
    cells = []
    for model, o in outcomes.items():
        if type(o) is not dict or not o.keys() <= _OUTCOME_KEYS:
            return False
        g = o.get
        values = (g("quality"), g("cost"), g("input_tokens"), g("output_tokens"), g("latency_s"), g("propensity"))
        if (values[0] is None or type(values[0]) not in _NUMBER or type(values[1]) not in _NUMBER
                or type(values[2]) not in _COUNT or type(values[3]) not in _COUNT
                or type(values[4]) not in _NUMBER or type(values[5]) not in _NUMBER):
            return False
        cells.append((model, values))
    sample_id, task, timestamp, metadata = get("sample_id"), get("task"), get("timestamp"), get("metadata")
    if (sample_id is not None and type(sample_id) is not str) or (task is not None and type(task) is not str):
        return False
    if not _timestamp_ok(timestamp) or (metadata is not None and (type(metadata) is not dict
                                                                  or _has_huge_float(metadata))):
        return False
    asm.add(text=texts[0], messages=texts[1], sample_id=sample_id, task=task, timestamp=timestamp,
            metadata=canonical_json(metadata) if metadata else None, preferences=None, outcomes=cells)
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


def jsonl_batches(path: Path, prices: PriceCatalog | None = None, *,
                  block_bytes: int | None = None) -> Iterator[Batch]:
    """Canonical JSON Lines as batches of about ``block_bytes`` (default 8 MB) of complete lines."""
    block_bytes = block_bytes or _BLOCK_BYTES
    opener = gzip.open if path.name.endswith(".gz") else open
    loads = _loads()
    line_no, seen_any = 1, False
    with opener(path, "rb") as f:
        while lines := f.readlines(block_bytes):
            batch, seen = _jsonl_batch(path, lines, line_no, prices, loads)
            seen_any |= seen
            line_no += len(lines)
            yield batch
    if not seen_any:
        raise DataError("the file is empty (no records)", location=str(path))


def _parquet_fast_ok(schema: Any) -> bool:
    """Whether a canonical Parquet schema is the plain layout the column checks understand."""
    pa = require("pyarrow", purpose="reading Parquet")
    t = pa.types
    names = set(schema.names)
    if not names <= _CANONICAL_KEYS or "outcomes" not in names:
        return False
    for name in names & set(_STRING_COLUMNS):
        if not (t.is_string(schema.field(name).type) or t.is_large_string(schema.field(name).type)):
            return False
    outcome_type = schema.field("outcomes").type
    if not t.is_list(outcome_type) or not t.is_struct(outcome_type.value_type):
        return False
    struct = outcome_type.value_type
    fields = {struct.field(i).name: struct.field(i).type for i in range(struct.num_fields)}
    if "model" not in fields or not t.is_string(fields.pop("model")) or not fields.keys() <= _OUTCOME_KEYS:
        return False
    for key, typ in fields.items():
        integer = key in ("input_tokens", "output_tokens")
        if not (t.is_integer(typ) if integer else (t.is_floating(typ) or t.is_integer(typ))):
            return False
    return "preferences" not in names or t.is_list(schema.field("preferences").type)


def _parquet_outcomes(outcomes: Any, n: int) -> tuple[Columns, np.ndarray]:
    """The outcome matrices of one batch's ``outcomes`` column, and the rows to leave to the row path."""
    pc = require("pyarrow.compute", purpose="reading Parquet")
    lengths = pc.fill_null(pc.list_value_length(outcomes), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    slow = lengths == 0
    flat = pc.list_flatten(outcomes)
    parents = pc.list_parent_indices(outcomes).to_numpy(zero_copy_only=False).astype(np.int64)
    model = flat.field("model")
    encoded = pc.dictionary_encode(model)
    models = tuple(encoded.dictionary.to_pylist())
    cols = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    slow[parents[(cols < 0) | flat.is_null().to_numpy(zero_copy_only=False)]] = True
    cols[cols < 0] = 0
    starts = np.cumsum(lengths) - lengths
    ranks = np.arange(len(flat)) - starts[parents]
    key = parents * max(len(models), 1) + cols
    unique, counts = np.unique(key, return_counts=True)
    slow[unique[counts > 1] // max(len(models), 1)] = True  # a model twice in a row: the last wins there
    if ranks.size and ranks.max() > 127:
        slow[parents[ranks > 127]] = True
    mats = {}
    for name in OUTCOME_FIELDS:
        mat = np.full((n, len(models)), np.nan)
        if name in flat.type.names:
            child = flat.field(name)
            mat[parents, cols] = child.to_numpy(zero_copy_only=False).astype(np.float64)
            if name == "propensity":  # null = not logged, but a NaN cell is a broken log
                nan_cell = ~child.is_null().to_numpy(zero_copy_only=False) & np.isnan(mat[parents, cols])
                slow[parents[nan_cell]] = True
        mats[name] = mat
    rank = np.full((n, len(models)), -1, dtype=np.int8)
    rank[parents, cols] = np.minimum(ranks, 127)
    empty = StrColumn.from_values([None] * n)
    columns = Columns(models=models, rank=rank, chat=np.zeros(n, dtype=bool), **mats,
                      **dict.fromkeys(("text", "messages", "sample_id", "task", "timestamp", "metadata",
                                       "preferences"), empty))
    return columns, slow


def _parquet_batch(path: Path, batch: Any, offset: int, prices: PriceCatalog | None) -> Batch:
    pa = require("pyarrow", purpose="reading Parquet")
    pc = require("pyarrow.compute", purpose="reading Parquet")
    n = batch.num_rows
    names = batch.schema.names
    cols, slow = _parquet_outcomes(batch.column("outcomes"), n)
    if "preferences" in names:
        slow |= pc.fill_null(pc.list_value_length(batch.column("preferences")), 0).to_numpy(
            zero_copy_only=False) > 0
    values = {name: (batch.column(name).to_pylist() if name in names else [None] * n)
              for name in ("prompt", "messages", "timestamp", "metadata")}
    text, chat_json, chat, meta = [None] * n, [None] * n, np.zeros(n, dtype=bool), [None] * n
    for k in np.flatnonzero(~slow):
        messages, metadata = values["messages"][k], values["metadata"][k]
        try:
            messages = None if messages is None else json.loads(messages)
            metadata = None if metadata is None else json.loads(metadata)
        except ValueError:
            slow[k] = True
            continue
        texts = _prompt(values["prompt"][k], messages)
        if texts is None or not _timestamp_ok(values["timestamp"][k]) or (
                metadata is not None and type(metadata) is not dict):
            slow[k] = True
            continue
        text[k], chat_json[k], chat[k] = texts[0], texts[1], texts[1] is not None
        meta[k] = canonical_json(metadata) if metadata else None
    cols.text, cols.messages, cols.metadata = (StrColumn.from_values(v) for v in (text, chat_json, meta))
    cols.chat = chat
    for name in ("sample_id", "task", "timestamp"):
        column = batch.column(name) if name in names else pa.nulls(n, pa.large_string())
        setattr(cols, name, StrColumn(column.cast(pa.large_string())))
    slow |= _bad_rows(cols, prices)
    fast_pos = np.flatnonzero(~slow)
    slow_rows = [(int(k), parquet_row(path, offset + int(k), batch.slice(int(k), 1).to_pylist()[0], prices))
                 for k in np.flatnonzero(slow)]
    template = f"{path} row {{}}"
    return _combine(cols.take(fast_pos), fast_pos, slow_rows, lambda pos: Locations(template, pos + offset))


def parquet_batches(path: Path, prices: PriceCatalog | None = None, *,
                    batch_rows: int | None = None) -> Iterator[Batch]:
    """Canonical Parquet as batches of ``batch_rows`` rows (default 16384; columns checked whole)."""
    batch_rows = batch_rows or _ROW_BATCH
    check_parquet_version(path)
    pq = require("pyarrow.parquet", purpose="reading Parquet")
    fast = _parquet_fast_ok(pq.read_schema(path))
    offset = 0
    for batch in _iter_parquet_batches(path, batch_rows):
        if fast:
            yield _parquet_batch(path, batch, offset, prices)
        else:
            rows = [parquet_row(path, offset + k, row, prices) for k, row in enumerate(batch.to_pylist())]
            yield _combine(Assembler().finish(), np.zeros(0, dtype=np.int64), list(enumerate(rows)),
                           lambda pos, rows=rows: Locations(strings=[rows[int(k)].location for k in pos]))
        offset += batch.num_rows


def row_batches(rows: Iterator[Row], size: int = 4096) -> Iterator[Batch]:
    """Any per-row reader's output as batches (for the formats without a fast path)."""
    while True:
        chunk = [row for _, row in zip(range(size), rows, strict=False)]
        if not chunk:
            return
        yield _combine(Assembler().finish(), np.zeros(0, dtype=np.int64), list(enumerate(chunk)),
                       lambda pos, chunk=chunk: Locations(strings=[chunk[int(k)].location for k in pos]))


def read_batches(fmt: str, path: Any, *, prices: PriceCatalog | None = None, **options: Any) -> Iterator[Batch]:
    """The input at ``path`` as :class:`Batch` es: the fast readers for canonical JSONL and Parquet,
    the per-row reader of ``fmt`` otherwise (``options`` go to it)."""
    if fmt == "jsonl":
        return jsonl_batches(path, prices)
    if fmt == "parquet":
        return parquet_batches(path, prices)
    return row_batches(reader_for(fmt)(path, prices=prices, **options))
