"""Row-level plumbing shared by the readers: the Row type, streaming CSV and Parquet rows."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_ml.errors import DataError
from router_ml.optional import require
from training.data.schema import Record, RecordError

__all__ = ["Row"]

# Undecodable bytes survive reading as lone surrogates (errors="surrogateescape").
_UNDECODED = re.compile("[\udc80-\udcff]")

@dataclass(slots=True)
class Row:
    """One input row: its location, its raw form, and the record or the error it gave."""

    location: str
    raw: Any
    record: Record | None = None
    error: RecordError | None = None


def _convert(location: str, raw: Any, make: Callable[[], Record]) -> Row:
    """Build a record; ``raw`` may be a zero-argument callable, only called for a rejected row.

    The error is kept without its traceback (nor the exceptions it chains to): their frames would
    keep the reader's whole batch (its lines, its half-built columns) alive as long as the error."""
    try:
        return Row(location, None, record=make())
    except RecordError as exc:
        exc.__context__ = exc.__cause__ = None
        return Row(location, raw() if callable(raw) else raw, error=exc.with_traceback(None))


def _clean(value: Any) -> Any:
    """Make a table cell JSON-safe for metadata and quarantine files (NaN -> None)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def files_in(directory: Path, *suffixes: str) -> list[Path]:
    """A directory's data files with one of ``suffixes`` (``.csv``: any case, as spreadsheets on some systems
    save ``.CSV``), in name order; hidden files (``.DS_Store``, a Mac's ``._name.csv``) are not data."""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes)


def _is_index_column(name: str) -> bool:
    return name == "" or name.startswith("Unnamed:") or name == "__index_level_0__"


#: UTF-8, with the byte-order mark spreadsheet programs put in front of a CSV they save dropped (it would
#: otherwise be part of the first column's name: "\ufeffprompt")
_CSV_ENCODING = "utf-8-sig"
#: the largest CSV cell read (a whole document pasted into a prompt): 2 GiB, the C parser's own bound
_CSV_FIELD_LIMIT = (1 << 31) - 1


def _checked_header(header: list[str], path: Path) -> list[str]:
    """A CSV header whose every name is distinct: a repeated one (a spreadsheet's copied column) would make
    the later cells silently replace the earlier ones."""
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        if name in seen and not _is_index_column(name):
            raise DataError(f"column {name!r} appears twice in the header (columns {seen[name]} and {i}); rename or "
                            "drop one", location=f"{path}:1")
        seen.setdefault(name, i)
    return header


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding=_CSV_ENCODING, errors="surrogateescape") as f:
        return _checked_header(next(csv.reader(f), []), path)


def _parquet_schema(path: Path) -> Any:
    pq = require("pyarrow.parquet", purpose="reading Parquet")

    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"cannot read Parquet file: {exc}", location=str(path)) from exc
    seen: set[str] = set()
    for name in schema.names:  # pyarrow writes a repeated column name (pandas does not); no reader can tell them apart
        if name in seen:
            raise DataError(f"column {name!r} appears twice in the Parquet schema; rename or drop one",
                            location=str(path))
        seen.add(name)
    return schema


def _parquet_columns(path: Path) -> list[str]:
    return list(_parquet_schema(path).names)


def _iter_parquet_batches(path: Path, batch_size: int = 4096) -> Iterator[Any]:
    """The record batches of a Parquet file; a broken or empty file is a :class:`DataError`."""
    pq = require("pyarrow.parquet", purpose="reading Parquet")

    try:
        # no pre-buffering: it reads whole row groups ahead, several times a batch's memory
        pf = pq.ParquetFile(path, pre_buffer=False)
    except Exception as exc:
        raise DataError(f"cannot read Parquet file: {exc}", location=str(path)) from exc
    rows = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        rows += batch.num_rows
        yield batch
    if rows == 0:
        raise DataError("the file is empty (no rows)", location=str(path))


def _iter_parquet_rows(path: Path, batch_size: int = 4096) -> Iterator[tuple[int, dict[str, Any]]]:
    index = 0
    for batch in _iter_parquet_batches(path, batch_size):
        for row in batch.to_pylist():
            yield index, row
            index += 1


def _iter_csv_rows(path: Path) -> Iterator[tuple[str, list[str], dict[str, str] | RecordError]]:
    """Yield (location, header, row-or-error) for each CSV record, checking UTF-8 per row."""
    # a prompt or answer cell may pass csv's default 128 KiB: past it the parser stopped inside the cell and the
    # cell's next lines were read as rows
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    with open(path, newline="", encoding=_CSV_ENCODING, errors="surrogateescape") as f:
        reader = csv.reader(f, strict=True)
        try:
            header = _checked_header(next(reader), path)
        except StopIteration:
            raise DataError("the file is empty", location=str(path)) from None
        except csv.Error as exc:
            raise DataError(f"unreadable CSV header: {exc}", location=f"{path}:1") from exc
        start = reader.line_num + 1
        n = 0
        while True:
            loc = f"{path}:{start}"
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if "unexpected end of data" in str(exc) and reader.line_num > start:
                    # a quote never closed took in every line after it (on the last line: only that row)
                    raise DataError(f"a quote opened in this row is never closed, so lines {start}-{reader.line_num} "
                                    "(the rest of the file) cannot be read as rows; close the quote, or write a "
                                    "quote inside a quoted cell as \"\", and load again - nothing was loaded",
                                    location=loc) from None
                if reader.line_num > start:  # inside a cell of several lines: the next line is no row's start
                    raise DataError(f"malformed CSV in the row starting here ({exc}), after line {reader.line_num} "
                                    "of a quoted cell of several lines, where no next row can be told; mend the row "
                                    "and load again - nothing was loaded", location=loc) from None
                yield loc, header, RecordError(None, f"malformed CSV ({exc}); check the quotes of this row")
                start = reader.line_num + 1  # the parser goes on with the next line
                n += 1
                continue
            start = reader.line_num + 1
            if not values:
                continue
            n += 1
            bad = next((i for i, v in enumerate(values) if _UNDECODED.search(v)), None)
            if bad is not None:
                name = header[bad] if bad < len(header) else f"column {bad + 1}"
                yield loc, header, RecordError(name, "invalid UTF-8; re-encode the file as UTF-8")
            elif len(values) != len(header):
                yield loc, header, RecordError(
                    None, f"expected {len(header)} columns, got {len(values)}")
            else:
                yield loc, header, dict(zip(header, values, strict=True))
        if n == 0:
            raise DataError("the file has a header but no rows", location=str(path))


def _raw_csv(item: dict[str, str] | RecordError) -> Any:
    if isinstance(item, RecordError):
        return None
    return {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            for k, v in item.items()}


#: the UTF-8 byte-order mark some editors put at the start of a text file; a file's first line drops it
BOM = b"\xef\xbb\xbf"


def json_line(path: Path, line_no: int, raw_line: bytes) -> dict[str, Any] | Row | None:
    """One JSON Lines line: ``None`` for a blank one, a :class:`Row` holding the error for one that is not a JSON
    object (invalid UTF-8, bad or truncated JSON, another JSON value), else the object."""
    loc = f"{path}:{line_no}"
    if line_no == 1 and raw_line.startswith(BOM):
        raw_line = raw_line[len(BOM):]
    try:
        text = raw_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raw = raw_line.decode("utf-8", errors="backslashreplace")
        return Row(loc, raw, error=RecordError(
            None, f"invalid UTF-8 at byte {exc.start} of the line; re-encode the file as UTF-8"))
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if not raw_line.endswith(b"\n"):
            msg = (f"truncated last line (no newline at the end and not valid JSON: "
                   f"{exc.msg}); the file was probably cut off while being written")
        else:
            msg = f"not valid JSON: {exc.msg} at column {exc.colno}"
        return Row(loc, text.rstrip("\n"), error=RecordError(None, msg))
    if not isinstance(obj, dict):
        return Row(loc, text.rstrip("\n"), error=RecordError(
            None, f"each line must be a JSON object, got {type(obj).__name__}"))
    return obj
