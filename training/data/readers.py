"""Readers for the input formats router-ml understands, and format detection.

Each reader is a generator of :class:`Row`: where the row is in the input, the raw row (kept for
the quarantine file) and either the validated :class:`~training.data.schema.Record` or the
:class:`~training.data.schema.RecordError` that rejected it. Problems with a whole file (empty,
unreadable, no prompt column) raise :class:`router_ml.errors.DataError` at once.

Readers stream: JSONL and CSV line by line, Parquet in record batches, Hugging Face datasets
through their memory-mapped Arrow tables, so an input is never held in memory beside its records.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from router_ml.errors import DataError
from router_ml.pricing import PriceCatalog
from training.data._rows import (
    Row,
    _clean,
    _convert,
    _csv_header,
    _iter_parquet_rows,
    _parquet_columns,
    _parquet_schema,
    files_in,
    json_line,
)
from training.data.canonical import READABLE_VERSIONS
from training.data.decisions import is_decision_log, read_decisions
from training.data.hub import read_hf
from training.data.schema import Record, RecordError, build_record
from training.data.tabular import json_columns, read_pickle, read_routellm, read_wide

__all__ = ["FORMATS", "Row", "detect_format", "reader_for"]

#: format name -> one-line description (the ``--format`` choices).
FORMATS = {
    "jsonl": "canonical JSON Lines, one record per line (.jsonl, .jsonl.gz)",
    "parquet": "canonical Parquet written by router-ml",
    "wide": "RouterBench-style wide table (Parquet, CSV or JSON Lines): prompt, M, M|total_cost, ...",
    "routellm": "RouteLLM evaluation CSV(s): prompt plus one True/False column per model",
    "hf": "Hugging Face dataset (hub id or local directory) with a column mapping",
    "pickle": "RouterBench pickle (pandas); refused unless allow_pickle is set",
    "decisions": "router-ml decision log (router-ml serve) joined with its feedback",
}

_CANONICAL_KEYS = {"sample_id", "prompt", "messages", "outcomes", "preferences", "task",
                   "timestamp", "metadata"}

def _classify_columns(columns: list[str], path: Path) -> str:
    if "outcomes" in columns or "preferences" in columns:
        return "parquet" if path.suffix.lower() != ".csv" else "wide"
    if any("|" in c for c in columns):
        return "wide"
    return "routellm" if path.suffix.lower() == ".csv" else "unknown"


def _wide_json_lines(path: Path) -> bool:
    """True when the first row of a JSON Lines file is a wide table's (``M|...`` keys, no ``outcomes``)."""
    try:
        return _classify_columns(json_columns(path), path) == "wide"
    except (OSError, DataError):  # no JSON object in it: the canonical reader says what is wrong
        return False


def detect_format(path: str | Path) -> str:
    """Guess the format of ``path`` from its name and header (see :data:`FORMATS`)."""
    path = Path(path)
    if not path.exists():
        if "/" in str(path) and not str(path).startswith((".", "/")) and len(path.parts) == 2:
            return "hf"  # looks like a hub id such as "org/name"
        raise DataError(f"no such file or directory: {path}")
    if path.is_dir():
        if any((path / n).exists() for n in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return "hf"
        csvs = files_in(path, ".csv")
        if csvs:
            kind = _classify_columns(_csv_header(csvs[0]), csvs[0])
            return kind if kind != "unknown" else "routellm"
        parquets = files_in(path, ".parquet")
        if parquets:
            kind = _classify_columns(_parquet_columns(parquets[0]), parquets[0])
            if kind == "parquet":  # canonical records are read one file at a time
                raise DataError(f"a directory of canonical Parquet files ({len(parquets)}); give one file - "
                                "'router-ml data convert' writes several into one", location=str(path))
            return kind if kind != "unknown" else "hf"
        raise DataError(
            f"cannot tell the format of directory {path}: it holds no *.csv, *.parquet or saved "
            f"Hugging Face dataset; pass --format ({', '.join(FORMATS)})"
        )
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".json")):
        if name.endswith(".jsonl") and is_decision_log(path):
            return "decisions"
        return "wide" if not name.endswith(".gz") and _wide_json_lines(path) else "jsonl"
    if name.endswith((".pkl", ".pickle")):
        return "pickle"
    if name.endswith(".parquet"):
        kind = _classify_columns(_parquet_columns(path), path)
        if kind == "unknown":
            raise DataError(
                f"cannot tell the layout of {path}: no 'outcomes' column (canonical) and no 'M|...' columns "
                f"(wide). A wide table needs, beside each model's quality column M, its cost 'M|total_cost' "
                f"(or its tokens 'M|input_tokens' and 'M|output_tokens' with --prices); another layout needs "
                f"--format hf with a column mapping"
            )
        return kind
    if name.endswith(".csv"):
        header = _csv_header(path)
        if not header:
            raise DataError("the file is empty", location=str(path))
        return _classify_columns(header, path)
    raise DataError(
        f"unknown format for {path}: expected one of .jsonl, .parquet, .csv, a directory of CSVs "
        f"or a dataset directory; pass --format ({', '.join(FORMATS)})"
    )


# --- canonical -------------------------------------------------------------------------------

def _canonical_record(obj: Mapping[str, Any], prices: PriceCatalog | None) -> Record:
    metadata = obj.get("metadata")
    extra = {k: v for k, v in obj.items() if k not in _CANONICAL_KEYS}
    if extra:
        if metadata is not None and not isinstance(metadata, Mapping):
            raise RecordError("metadata", "metadata must be an object")
        clash = set(extra) & set(metadata or {})
        if clash:
            raise RecordError(sorted(clash)[0], "key given both at top level and in metadata")
        metadata = {**(metadata or {}), **extra}
    return build_record(
        prompt=obj.get("prompt"), messages=obj.get("messages"), outcomes=obj.get("outcomes"),
        preferences=obj.get("preferences"), sample_id=obj.get("sample_id"), task=obj.get("task"),
        timestamp=obj.get("timestamp"), metadata=metadata, prices=prices,
    )


def jsonl_row(path: Path, line_no: int, raw_line: bytes, prices: PriceCatalog | None) -> Row | None:
    """Read one JSON Lines line (``None`` for a blank one): the exact per-line rules, which the
    fast reader falls back to for any line it does not take whole."""
    obj = json_line(path, line_no, raw_line)
    if obj is None or isinstance(obj, Row):
        return obj
    return _convert(f"{path}:{line_no}", obj, lambda: _canonical_record(obj, prices))


def read_jsonl(path: Path, *, prices: PriceCatalog | None = None, **_: Any) -> Iterator[Row]:
    """Read canonical JSON Lines; blank lines are skipped, everything else must be a record."""
    opener = gzip.open if path.name.endswith(".gz") else open
    seen_any = False
    from training.data.fast_jsonl import gzip_errors

    with opener(path, "rb") as f, gzip_errors(path):
        for line_no, raw_line in enumerate(f, start=1):
            row = jsonl_row(path, line_no, raw_line, prices)
            if row is not None:
                seen_any = True
                yield row
    if not seen_any:
        raise DataError("the file is empty (no records)", location=str(path))


def check_parquet_version(path: Path) -> None:
    """Refuse a canonical Parquet file of a layout this release does not know (a newer router-ml).

    A file without ``router_ml_format`` (written by another tool in the canonical layout) is read
    by its column names."""
    version = (_parquet_schema(path).metadata or {}).get(b"router_ml_format")
    if version is not None and version.decode("utf-8", "replace") not in READABLE_VERSIONS:
        raise DataError(f"canonical Parquet format {version.decode('utf-8', 'replace')!r} is not one this "
                        f"router-ml reads ({', '.join(READABLE_VERSIONS)}); upgrade router-ml to read this file",
                        location=str(path), field="router_ml_format")


def parquet_row(path: Path, index: int, row: dict[str, Any], prices: PriceCatalog | None) -> Row:
    """Validate one canonical Parquet row (a dict of its cells): the exact per-row rules."""

    def make() -> Record:
        obj = dict(row)
        for key in ("messages", "metadata"):
            if isinstance(obj.get(key), str):
                try:
                    obj[key] = json.loads(obj[key])
                except json.JSONDecodeError as exc:
                    raise RecordError(key, f"not valid JSON: {exc.msg}") from None
        outcomes = {}
        for item in obj.get("outcomes") or ():
            values = {k: v for k, v in item.items() if k != "model" and v is not None}
            outcomes[item["model"]] = values
        obj["outcomes"] = outcomes
        obj = {k: v for k, v in obj.items() if v is not None}
        return _canonical_record(obj, prices)

    return _convert(f"{path} row {index}", lambda: _clean(row), make)


def read_parquet(path: Path, *, prices: PriceCatalog | None = None, **_: Any) -> Iterator[Row]:
    """Read the canonical Parquet layout written by :func:`training.data.canonical.write_parquet`
    (any of :data:`~training.data.canonical.READABLE_VERSIONS`)."""
    check_parquet_version(path)
    for index, row in _iter_parquet_rows(path):
        yield parquet_row(path, index, row, prices)


_READERS: dict[str, Callable[..., Iterator[Row]]] = {
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "wide": read_wide,
    "routellm": read_routellm,
    "hf": read_hf,
    "pickle": read_pickle,
    "decisions": read_decisions,
}


def reader_for(fmt: str) -> Callable[..., Iterator[Row]]:
    """Return the reader of format ``fmt``, or raise :class:`DataError` listing the formats."""
    try:
        return _READERS[fmt]
    except KeyError:
        raise DataError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}") from None
