"""Writing the canonical on-disk formats (JSON Lines and Parquet); reading is in ``readers``.

Both round-trip exactly: ``load_traffic(write_x(table, p)).table == table``.

JSON Lines: one :meth:`Record.to_dict` object per line, UTF-8, keys left out when unset.

Parquet (schema metadata ``router_ml_format = traffic/2``): columns ``sample_id``, ``prompt``,
``task``, ``timestamp`` (strings), ``messages`` and ``metadata`` (JSON text, since their shape is
free), ``outcomes`` (list of structs: model, quality, cost, input_tokens, output_tokens,
latency_s, propensity) and ``preferences`` (list of structs: model_a, model_b, winner).

Versions: ``traffic/1`` had no ``propensity`` in the outcome struct; it is still read (every
outcome's propensity unknown). ``traffic/2`` added it. The reader refuses a newer version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from router_ml.optional import require
from training.data.schema import OUTCOME_FIELDS, Record

__all__ = ["FORMAT_VERSION", "READABLE_VERSIONS", "write_jsonl", "write_parquet"]

#: the canonical Parquet layout this release writes (schema metadata ``router_ml_format``)
FORMAT_VERSION = "traffic/2"
#: the layouts this release reads; ``traffic/1`` lacks the outcome ``propensity``
READABLE_VERSIONS = ("traffic/1", "traffic/2")


def write_jsonl(records: Iterable[Record], path: str | Path) -> Path:
    """Write records as canonical JSON Lines, atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record.to_dict(), ensure_ascii=False))
            f.write("\n")
    os.replace(tmp, path)
    return path


def _schema():
    pa = require("pyarrow", purpose="writing Parquet")

    outcome = pa.struct([
        ("model", pa.string()), ("quality", pa.float64()), ("cost", pa.float64()),
        ("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("latency_s", pa.float64()),
        ("propensity", pa.float64()),
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
        "outcomes": [{"model": m, **{k: getattr(o, k) for k in OUTCOME_FIELDS}}
                     for m, o in record.outcomes.items()],
        "preferences": [p.to_dict() for p in record.preferences],
        "metadata": json.dumps(dict(record.metadata)) if record.metadata else None,
    }


def write_parquet(records: Iterable[Record], path: str | Path, *, batch_size: int = 8192) -> Path:
    """Write records as canonical Parquet in row groups of ``batch_size``, atomically."""
    pa = require("pyarrow", purpose="writing Parquet")
    pq = require("pyarrow.parquet", purpose="writing Parquet")

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    schema = _schema()
    with pq.ParquetWriter(tmp, schema) as writer:
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
