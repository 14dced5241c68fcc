"""The fast reader of canonical Parquet: each record batch is checked column by column (numpy and
pyarrow compute over the flattened outcomes), only free-form JSON text is parsed row by row.

A row the column checks do not take whole goes through :func:`training.data.readers.parquet_row`,
the exact per-row path; a file whose schema is not the plain canonical one takes that path whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.optional import require
from router_ml.pricing import PriceCatalog
from training.data._rows import _iter_parquet_batches
from training.data.batches import Batch, Locations, _bad_rows, _combine, _prompt, _timestamp_ok
from training.data.columns import Assembler, Columns, StrColumn, canonical_json
from training.data.readers import _CANONICAL_KEYS, check_parquet_version, parquet_row
from training.data.schema import OUTCOME_FIELDS, OUTCOME_KEYS

__all__ = ["parquet_batch", "parquet_batches", "parquet_fast"]

_ROW_BATCH = 16384
_OUTCOME_KEYS = frozenset(OUTCOME_KEYS)
_STRING_COLUMNS = ("sample_id", "prompt", "messages", "task", "timestamp", "metadata")


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
    response = fields.pop("response", None)
    if response is not None and not (t.is_string(response) or t.is_large_string(response)):
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
    responses = _responses(flat, parents, cols, models, n) if "response" in flat.type.names else empty
    columns = Columns(models=models, rank=rank, chat=np.zeros(n, dtype=bool), **mats, responses=responses,
                      **dict.fromkeys(("text", "messages", "sample_id", "task", "timestamp", "metadata",
                                       "preferences"), empty))
    return columns, slow


def _responses(flat: Any, parents: np.ndarray, cols: np.ndarray, models: tuple[str, ...], n: int) -> StrColumn:
    """Each row's ``{model: response}`` as canonical JSON (None where no outcome of the row has one)."""
    child = flat.field("response")
    carried = np.flatnonzero(~child.is_null().to_numpy(zero_copy_only=False))
    per_row: dict[int, dict[str, str]] = {}
    texts = child.take(carried).to_pylist() if carried.size else []
    for k, text in zip(carried, texts, strict=True):
        per_row.setdefault(int(parents[k]), {})[models[int(cols[k])]] = text
    values: list[str | None] = [None] * n
    for row, responses in per_row.items():
        values[row] = canonical_json(responses)
    return StrColumn.from_values(values)


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


def parquet_fast(path: Path) -> bool:
    """Check the file's layout version; whether its schema takes the column checks."""
    check_parquet_version(path)
    pq = require("pyarrow.parquet", purpose="reading Parquet")
    return _parquet_fast_ok(pq.read_schema(path))


def parquet_batch(path: Path, batch: Any, offset: int, prices: PriceCatalog | None, fast: bool) -> Batch:
    """One record batch of a canonical Parquet file whose first row is row ``offset``."""
    if fast:
        return _parquet_batch(path, batch, offset, prices)
    rows = [parquet_row(path, offset + k, row, prices) for k, row in enumerate(batch.to_pylist())]
    return _combine(Assembler().finish(), np.zeros(0, dtype=np.int64), list(enumerate(rows)),
                    lambda pos: Locations(strings=[rows[int(k)].location for k in pos]))


def parquet_batches(path: Path, prices: PriceCatalog | None = None, *,
                    batch_rows: int | None = None) -> Iterator[Batch]:
    """Canonical Parquet as batches of ``batch_rows`` rows (default 16384; columns checked whole)."""
    fast = parquet_fast(path)
    offset = 0
    for batch in _iter_parquet_batches(path, batch_rows or _ROW_BATCH):
        yield parquet_batch(path, batch, offset, prices, fast)
        offset += batch.num_rows
