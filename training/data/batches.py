"""Readers that yield validated *batches* of columns instead of one :class:`Row` per record.

The canonical formats take a fast path (:mod:`training.data.fast_parquet`: batches checked with
numpy/pyarrow on whole columns; :mod:`training.data.fast_jsonl`: ~8 MB blocks of complete lines
parsed with ``orjson`` when it is installed; :mod:`training.data.parallel`: either over
processes), and so do wide Parquet tables (:mod:`training.data.fast_wide`). A row the fast checks
do not accept whole - anything invalid or unusual (a string where a number belongs, preferences,
extra top-level keys, a price catalog needed to derive a cost) - goes through the exact per-row
path of :mod:`training.data.readers`, so messages, locations and quarantine lines are the ones that
path gives. The other formats run on the per-row path and are assembled into the same batches
(:func:`row_batches`).
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router_ml.messages import list_turns, message_problem, routed_text
from router_ml.pricing import PriceCatalog
from training.data._rows import Row
from training.data.columns import Assembler, Columns, canonical_json, concat
from training.data.readers import reader_for
from training.data.schema import is_missing, user_turns

__all__ = ["Batch", "Locations", "read_batches", "row_batches"]

_UNDECODED = re.compile("[\udc80-\udcff]")


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
    """(routed text, canonical messages JSON) of a record that is fine as it is, else None. A prompt that
    is the Python text of a list of strings is one user turn per string, as :func:`build_record` reads it."""
    if messages is None and type(prompt) is str and prompt[:1] == "[":
        turns = list_turns(prompt)
        if turns is not None:
            prompt, messages = None, user_turns(turns)
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


def row_batches(rows: Iterator[Row], size: int = 4096) -> Iterator[Batch]:
    """Any per-row reader's output as batches (for the formats without a fast path)."""
    while True:
        chunk = [row for _, row in zip(range(size), rows, strict=False)]
        if not chunk:
            return
        yield _combine(Assembler().finish(), np.zeros(0, dtype=np.int64), list(enumerate(chunk)),
                       lambda pos, chunk=chunk: Locations(strings=[chunk[int(k)].location for k in pos]))


def read_batches(fmt: str, path: Any, *, prices: PriceCatalog | None = None, num_proc: int = 1,
                 **options: Any) -> Iterator[Batch]:
    """The input at ``path`` as :class:`Batch` es: the fast readers for canonical JSONL and Parquet
    (over ``num_proc`` processes when above 1) and for wide tables, the per-row reader of ``fmt``
    otherwise (``options`` go to it)."""
    # imported here: the fast readers build on this module's Batch
    from training.data.fast_jsonl import jsonl_batches
    from training.data.fast_parquet import parquet_batches
    from training.data.fast_wide import wide_batches
    from training.data.parallel import parallel_batches

    if fmt in ("jsonl", "parquet") and num_proc > 1:
        return parallel_batches(fmt, path, prices, num_proc)
    if fmt == "jsonl":
        return jsonl_batches(path, prices)
    if fmt == "parquet":
        return parquet_batches(path, prices)
    if fmt == "wide":
        return wide_batches(path, prices, report=options.get("report"))
    return row_batches(reader_for(fmt)(path, prices=prices, **options))
