"""The fast reader of RouterBench-style wide Parquet tables: one record batch at a time, the model
columns stacked into the outcome matrices with numpy; only the prompt, the metadata columns and the
answer texts are read row by row.

A row the column checks do not take whole (no model with a quality, a value out of range, a token count
that is not a whole number, a blank prompt, a cost to derive from a price catalog) goes through
:meth:`~training.data.tabular.WideLayout.record`, the exact per-row path, so its error, location and
quarantine line are that path's. A file whose column types the checks do not cover (a quality or cost
stored as text, say) takes that path whole, and CSV files always do: a CSV cell has no type.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.optional import require
from router_ml.pricing import PriceCatalog
from training.data._rows import _clean, _iter_parquet_batches, _parquet_schema
from training.data.batches import Batch, Locations, _bad_rows, _combine, _prompt, row_batches
from training.data.columns import Columns, StrColumn, blank, canonical_json
from training.data.schema import OUTCOME_FIELDS
from training.data.tabular import WideLayout, is_json_lines, response_text, wide_files, wide_layout, wide_rows

__all__ = ["wide_batches"]

_ROW_BATCH = 16384
_TEXT_BATCH = 4096  # with answer-text columns: each batch's answers are Python strings while they are joined
_MAX_MODELS = 128  # outcome ranks are int8 (0-127) in a batch


def _fast_ok(schema: Any, layout: WideLayout) -> bool:
    """Whether every column the outcomes, prompt, id and task come from has a type the checks cover."""
    t = require("pyarrow", purpose="reading Parquet").types

    def kind(name: str) -> Any:
        return schema.field(name).type

    def is_text(typ: Any) -> bool:  # a pandas categorical column is stored dictionary-encoded
        if t.is_dictionary(typ):
            typ = typ.value_type
        return t.is_string(typ) or t.is_large_string(typ)

    def is_number(typ: Any) -> bool:
        return t.is_floating(typ) or t.is_integer(typ) or t.is_null(typ)

    if layout.messages is not None or layout.timestamp is not None or len(layout.models) > _MAX_MODELS:
        return False
    if layout.prompt is None or not is_text(kind(layout.prompt)):
        return False
    for name in (layout.sample_id, layout.task):
        if name is not None and not (is_text(kind(name)) or t.is_integer(kind(name)) or t.is_null(kind(name))):
            return False
    for model in layout.models:
        if not (is_number(kind(model)) or t.is_boolean(kind(model))):
            return False
        for key, col in layout.companions[model].items():
            typ = kind(col)
            if not ((is_text(typ) or t.is_null(typ)) if key == "response" else is_number(typ)):
                return False
    return True


def _numbers(batch: Any, name: str) -> np.ndarray:
    """A numeric column as float64, NaN where null (ints and bools as the per-row path's ``float``)."""
    pa = require("pyarrow", purpose="reading Parquet")
    pc = require("pyarrow.compute", purpose="reading Parquet")
    column = pc.cast(batch.column(name), pa.float64())
    return column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _strings(batch: Any, name: str | None, n: int) -> StrColumn:
    pa = require("pyarrow", purpose="reading Parquet")
    if name is None:
        return StrColumn(pa.nulls(n, pa.large_string()))
    return StrColumn(batch.column(name).cast(pa.large_string()))


def _responses(batch: Any, layout: WideLayout, present: np.ndarray, keep: np.ndarray) -> StrColumn:
    """Each kept row's ``{model: answer}`` as canonical JSON, None where no present outcome carries one."""
    n = batch.num_rows
    texts: dict[int, list[str | None]] = {}
    carried = np.zeros_like(present)
    for j, model in enumerate(layout.models):
        col = layout.companions[model].get("response")
        if col is not None:
            column = batch.column(col)
            carried[:, j] = ~column.is_null().to_numpy(zero_copy_only=False)
            texts[j] = column.to_pylist()
    carried &= present & keep[:, None]
    values: list[str | None] = [None] * n
    for i in np.flatnonzero(carried.any(axis=1)):
        values[i] = canonical_json({layout.models[j]: response_text(texts[j][i]) for j in np.flatnonzero(carried[i])})
    return StrColumn.from_values(values)


def _wide_batch(path: Path, layout: WideLayout, batch: Any, offset: int, prices: PriceCatalog | None) -> Batch:
    """One record batch of a wide Parquet file whose first row is row ``offset``."""
    n, m = batch.num_rows, len(layout.models)
    quality = np.full((n, m), np.nan)
    for j, model in enumerate(layout.models):
        quality[:, j] = _numbers(batch, model)
    present = ~np.isnan(quality)  # a null or NaN quality: no outcome for that model
    slow = ~present.any(axis=1)
    mats = {"quality": quality}
    for name in OUTCOME_FIELDS[1:]:
        cols = {j: layout.companions[model][name] for j, model in enumerate(layout.models)
                if name in layout.companions[model]}
        if not cols:
            mats[name] = blank(n, m)
            continue
        mat = np.full((n, m), np.nan)
        for j, col in cols.items():
            mat[:, j] = _numbers(batch, col)
        mat[~present] = np.nan
        if name in ("input_tokens", "output_tokens"):
            with np.errstate(invalid="ignore"):
                slow |= (np.isfinite(mat) & (mat != np.floor(mat))).any(axis=1)
        mats[name] = mat
    rank = np.where(present, np.cumsum(present, axis=1) - 1, -1).astype(np.int8)
    prompts = batch.column(layout.prompt).to_pylist()
    texts: list[str | None] = [None] * n
    chats: list[str | None] = [None] * n  # RouterBench's str(list) prompts are chat records (batches._prompt)
    for i, prompt in enumerate(prompts):
        routed = None if slow[i] else _prompt(prompt, None)
        if routed is None:
            slow[i] = True
        else:
            texts[i], chats[i] = routed
    metadata: list[str | None] = [None] * n
    if layout.meta:
        rows = batch.select(layout.meta).to_pylist()
        for i in np.flatnonzero(~slow):
            metadata[i] = canonical_json({c: _clean(rows[i][c]) for c in layout.meta})
    none = _strings(batch, None, n)
    chat = np.array([c is not None for c in chats], dtype=bool)
    cols = Columns(models=tuple(layout.models), rank=rank, chat=chat, **mats, text=StrColumn.from_values(texts),
                   messages=StrColumn.from_values(chats), sample_id=_strings(batch, layout.sample_id, n),
                   task=_strings(batch, layout.task, n), timestamp=none, metadata=StrColumn.from_values(metadata),
                   preferences=none, responses=_responses(batch, layout, present, ~slow))
    slow |= _bad_rows(cols, prices)
    fast_pos = np.flatnonzero(~slow)
    slow_pos = np.flatnonzero(slow)
    slow_rows = list(zip(slow_pos.tolist(), wide_rows(
        path, layout, prices, ((offset + int(k), batch.slice(int(k), 1).to_pylist()[0]) for k in slow_pos)),
        strict=True))
    template = f"{path} row {{}}"
    return _combine(cols.take(fast_pos), fast_pos, slow_rows, lambda pos: Locations(template, pos + offset))


def wide_batches(path: Path, prices: PriceCatalog | None = None, *, report: dict | None = None,
                 batch_rows: int | None = None, **_: Any) -> Iterator[Batch]:
    """A wide table (a Parquet or CSV file, or a directory of them) as batches: Parquet files whose column
    types the checks cover column by column, the rest through the per-row reader."""
    for file in wide_files(path):
        layout = wide_layout(file, report)
        if file.suffix.lower() == ".csv" or is_json_lines(file) or not _fast_ok(_parquet_schema(file), layout):
            yield from row_batches(wide_rows(file, layout, prices))
            continue
        offset = 0
        texts = any("response" in companions for companions in layout.companions.values())
        rows = batch_rows or (min(_ROW_BATCH, _TEXT_BATCH) if texts else _ROW_BATCH)
        for batch in _iter_parquet_batches(file, rows):
            yield _wide_batch(file, layout, batch, offset, prices)
            offset += batch.num_rows
