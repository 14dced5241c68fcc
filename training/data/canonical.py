"""Writing the canonical on-disk formats (JSON Lines and Parquet); reading is in ``readers``.

Both round-trip exactly: ``load_traffic(write_x(table, p)).table == table``.

JSON Lines: one :meth:`Record.to_dict` object per line, UTF-8, keys left out when unset.

Parquet (schema metadata ``router_ml_format = traffic/2``): columns ``sample_id``, ``prompt``,
``task``, ``timestamp`` (strings), ``messages`` and ``metadata`` (JSON text, since their shape is
free), ``outcomes`` (list of structs: model, quality, cost, input_tokens, output_tokens,
latency_s, propensity, response) and ``preferences`` (list of structs: model_a, model_b, winner).

Versions: ``traffic/1`` had no ``propensity`` in the outcome struct; it is still read (every
outcome's propensity unknown). ``traffic/2`` added it, ``traffic/3`` the outcome ``response`` text
(older files read as having none). The reader refuses a newer version.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.optional import require
from training.data.columns import Columns
from training.data.schema import OUTCOME_FIELDS, OUTCOME_KEYS, Record
from training.data.table import TrafficTable

__all__ = ["FORMAT_VERSION", "READABLE_VERSIONS", "write_jsonl", "write_parquet"]

#: the canonical Parquet layout this release writes (schema metadata ``router_ml_format``)
FORMAT_VERSION = "traffic/3"
#: the layouts this release reads; ``traffic/1`` lacks the outcome ``propensity``, ``/2`` its ``response``
READABLE_VERSIONS = ("traffic/1", "traffic/2", "traffic/3")


def write_jsonl(records: Iterable[Record], path: str | Path) -> Path:
    """Write records as canonical JSON Lines, atomically (a temporary file, then a rename); gzip-compressed
    where the name ends in ``.gz`` (``traffic.jsonl.gz``, which every reader takes)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    opener = functools.partial(gzip.open, compresslevel=6) if path.name.endswith(".gz") else open
    with _removed_on_failure(tmp):
        with opener(tmp, "wt", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(json.dumps(record.to_dict(), ensure_ascii=False))
                f.write("\n")
        os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _removed_on_failure(tmp: Path) -> Iterator[None]:
    """A failed write (a record that does not serialise, a full disk, a directory at the target) leaves no
    half-written temporary file beside the target."""
    try:
        yield
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _schema():
    pa = require("pyarrow", purpose="writing Parquet")

    outcome = pa.struct([
        ("model", pa.string()), ("quality", pa.float64()), ("cost", pa.float64()),
        ("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("latency_s", pa.float64()),
        ("propensity", pa.float64()), ("response", pa.string()),
    ])
    preference = pa.struct([("model_a", pa.string()), ("model_b", pa.string()), ("winner", pa.string())])
    return pa.schema(
        [("sample_id", pa.string()), ("prompt", pa.string()), ("messages", pa.string()),
         ("task", pa.string()), ("timestamp", pa.string()), ("outcomes", pa.list_(outcome)),
         ("preferences", pa.list_(preference)), ("metadata", pa.string())],
        metadata={"router_ml_format": FORMAT_VERSION},
    )


def _row(record: Record) -> dict:
    return {
        "sample_id": record.sample_id,
        "prompt": record.prompt,
        "messages": None if record.messages is None else json.dumps([dict(m) for m in record.messages]),
        "task": record.task,
        "timestamp": record.timestamp,
        "outcomes": [{"model": m, **{k: getattr(o, k) for k in OUTCOME_KEYS}}
                     for m, o in record.outcomes.items()],
        "preferences": [p.to_dict() for p in record.preferences],
        "metadata": json.dumps(dict(record.metadata)) if record.metadata else None,
    }


def _outcome_lists(cols: Columns) -> Any:
    """The ``outcomes`` column of ``cols``: each row's outcomes in its own order, as list<struct>."""
    pa = require("pyarrow", purpose="writing Parquet")

    r, j = np.nonzero(cols.rank >= 0)
    order = np.lexsort((cols.rank[r, j], r))
    r, j = r[order], j[order]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=len(cols)))]).astype(np.int32)
    children = [pa.array(np.asarray(cols.models, dtype=object)[j] if len(cols.models) else [], pa.string())]
    for name in OUTCOME_FIELDS:
        values = getattr(cols, name)[r, j].astype(np.float64)
        missing = np.isnan(values)
        if name in ("input_tokens", "output_tokens"):
            children.append(pa.array(np.where(missing, 0, values).astype(np.int64), mask=missing))
        else:
            children.append(pa.array(values, mask=missing, type=pa.float64()))
    children.append(pa.array(_response_cells(cols, r, j), pa.string()))
    outcome_type = _schema().field("outcomes").type.value_type
    structs = pa.StructArray.from_arrays(children, fields=list(outcome_type))
    return pa.ListArray.from_arrays(pa.array(offsets), structs)


def _response_cells(cols: Columns, rows: np.ndarray, models: np.ndarray) -> list[str | None]:
    """The response text of each (row, model) outcome cell (None where the row carries none)."""
    out: list[str | None] = [None] * len(rows)
    carried = np.flatnonzero(~cols.responses.is_null()[rows]) if len(rows) else rows
    parsed: dict[int, dict[str, str]] = {}
    for k in carried:
        row = int(rows[k])
        if row not in parsed:
            parsed[row] = json.loads(cols.responses[row])
        out[k] = parsed[row].get(cols.models[int(models[k])])
    return out


def _arrow_block(table: TrafficTable, rows: np.ndarray, schema: Any) -> Any:
    """Rows of a columnar table as an Arrow table of the canonical schema (no Record built)."""
    pa = require("pyarrow", purpose="writing Parquet")
    pc = require("pyarrow.compute", purpose="writing Parquet")

    cols = table.columns.take(rows)
    text = cols.text.plain()
    prompt = pc.if_else(pa.array(cols.chat), pa.nulls(len(cols), pa.large_string()), text)
    prefs = [json.loads(p) if p is not None else [] for p in cols.preferences.plain().to_pylist()]
    arrays = {"sample_id": cols.sample_id.plain(), "prompt": prompt, "messages": cols.messages.plain(),
              "task": cols.task.plain(), "timestamp": cols.timestamp.plain(), "outcomes": _outcome_lists(cols),
              "preferences": pa.array(prefs, type=schema.field("preferences").type),
              "metadata": cols.metadata.plain()}
    return pa.Table.from_arrays([arrays[f.name].cast(f.type) for f in schema], schema=schema)


def write_parquet(records: Iterable[Record], path: str | Path, *, batch_size: int = 8192) -> Path:
    """Write records as canonical Parquet in row groups of ``batch_size``, atomically.

    A :class:`TrafficTable` is written straight from its columns (no Record is built)."""
    pa = require("pyarrow", purpose="writing Parquet")
    pq = require("pyarrow.parquet", purpose="writing Parquet")

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    schema = _schema()
    with _removed_on_failure(tmp):
        with pq.ParquetWriter(tmp, schema) as writer:
            if isinstance(records, TrafficTable):
                for start in range(0, len(records), batch_size):
                    rows = np.arange(start, min(start + batch_size, len(records)))
                    writer.write_table(_arrow_block(records, rows, schema))
            else:
                batch: list[dict] = []
                for record in records:
                    batch.append(_row(record))
                    if len(batch) >= batch_size:
                        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                        batch = []
                if batch:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        os.replace(tmp, path)
    return path
