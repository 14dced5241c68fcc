"""Readers for tables with one column per model: RouterBench wide tables, RouteLLM CSVs, pickles."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from router_ml.errors import DataError
from router_ml.messages import list_turns
from router_ml.optional import require
from router_ml.pricing import PriceCatalog
from training.data._rows import (
    Row,
    _clean,
    _convert,
    _csv_header,
    _is_index_column,
    _iter_csv_rows,
    _iter_parquet_rows,
    _parquet_columns,
    _raw_csv,
    files_in,
    json_line,
)
from training.data.schema import Record, RecordError, build_record, is_missing, user_turns

__all__ = ["WideLayout", "prompt_fields", "read_pickle", "read_routellm", "read_wide", "response_text",
           "wide_files", "wide_layout", "wide_rows"]

_OUTCOME_SUFFIXES = {"total_cost": "cost", "cost": "cost", "input_tokens": "input_tokens",
                     "output_tokens": "output_tokens", "latency": "latency_s",
                     "latency_s": "latency_s", "propensity": "propensity", "response": "response",
                     "model_response": "response"}
_TASK_COLUMNS = ("eval_name", "task", "category")


class WideLayout:
    """How the columns of a RouterBench-style wide table map onto a record.

    A column ``M`` is a model's quality column when some ``M|...`` column exists beside it;
    ``M|total_cost``, ``M|input_tokens``, ``M|output_tokens``, ``M|latency``, ``M|propensity`` and
    ``M|response`` (the model's answer text; RouterBench names it ``M|model_response``) fill its
    outcome (an empty/NaN propensity cell = not logged for that row; a null/NaN response cell = no
    answer recorded, an empty string = the model produced nothing); other ``M|...`` columns are
    ignored and listed in :attr:`ignored`; every remaining column except ``prompt``/``sample_id``/the
    task column is kept in ``metadata``. A prompt cell holding a list of strings (a multi-turn
    prompt) is read as chat ``messages``, one user turn per string (:func:`prompt_fields`).
    """

    def __init__(self, columns: Iterable[str], *, source: str, prompt: str = "prompt",
                 messages: str | None = None, sample_id: str = "sample_id",
                 task: str | None = None, timestamp: str | None = None, csv: bool = False):
        columns = list(columns)
        self.csv = csv  # a CSV cell cannot tell an empty answer from none: an empty response cell is none
        self.prompt = prompt if prompt in columns else None
        self.messages = messages if messages in columns else None
        if self.prompt is None and self.messages is None:
            raise DataError(f"no '{prompt}' column (columns: {columns[:12]})", location=source)
        self.sample_id = sample_id if sample_id in columns else None
        self.task = task if task else next((c for c in _TASK_COLUMNS if c in columns), None)
        self.timestamp = timestamp if timestamp in columns else None
        prefixed = [c for c in columns if "|" in c]
        self.models = [c for c in columns if "|" not in c and any(p.startswith(c + "|") for p in prefixed)]
        self.companions: dict[str, dict[str, str]] = {m: {} for m in self.models}
        self.ignored: list[str] = []
        for col in prefixed:
            model, _, suffix = col.rpartition("|")
            if model not in self.companions:
                if col.count("|") > 1 or any(p.startswith(col + "|") for p in prefixed):  # 'M|x' named as a model
                    raise DataError(f"column '{col}': a wide table names a model's columns M and M|field, so a model "
                                    "name cannot hold '|'; rename the model, or write the records as canonical "
                                    "JSONL or Parquet, where any name works", location=source)
                near = [c for c in columns if "|" not in c and c.strip() == model.strip()]
                hint = (f"; the quality column '{near[0]}' is there, so write '{near[0]}|{suffix.strip()}' (no spaces "
                        "around '|': they are part of the names)" if near else
                        f"; add a quality column '{model}' (a model's outcome M, its fields M|total_cost, M|...)")
                raise DataError(f"column '{col}' has no quality column '{model}' beside it{hint}", location=source)
            key = _OUTCOME_SUFFIXES.get(suffix)
            if key is None:
                self.ignored.append(col)
            else:
                self.companions[model][key] = col
        used = {self.prompt, self.messages, self.sample_id, self.task, self.timestamp,
                *self.models, *prefixed}
        self.meta = [c for c in columns if c not in used and not _is_index_column(c)]
        if not self.models:
            raise DataError("no model columns found (a model column M needs an 'M|total_cost' "
                            "column beside it)", location=source)

    def record(self, row: Mapping[str, Any], prices: PriceCatalog | None) -> Record:
        outcomes = {}
        for model in self.models:
            quality = row.get(model)
            if is_missing(quality):
                continue  # NaN / empty = this model has no outcome for the prompt
            outcome = {"quality": quality}
            for key, col in self.companions[model].items():
                value = row.get(col)
                if key == "propensity" and is_missing(value):
                    continue  # an empty cell is the table's only way to say "not logged"
                if key == "response":
                    if not isinstance(value, str) or (self.csv and not value):
                        continue  # null / NaN: no answer recorded (a text cell, even "", is one)
                    value = response_text(value)
                outcome[key] = value
            outcomes[model] = outcome
        prompt, messages = prompt_fields(row.get(self.prompt) if self.prompt else None,
                                         row.get(self.messages) if self.messages else None)
        return build_record(
            prompt=prompt,
            messages=messages,
            outcomes=outcomes,
            sample_id=self._cell(row, self.sample_id),
            task=self._cell(row, self.task),
            timestamp=self._cell(row, self.timestamp),
            metadata={c: _clean(row.get(c)) for c in self.meta},
            prices=prices,
        )


    def _cell(self, row: Mapping[str, Any], column: str | None) -> Any:
        """A field's cell; an empty CSV cell is no value, as a Parquet null is (an empty sample_id was once read
        as the id "" of every such row, a duplicate of the others)."""
        value = row.get(column) if column else None
        return None if self.csv and value == "" else value


def prompt_fields(prompt: Any, messages: Any) -> tuple[Any, Any]:
    """A table row's ``(prompt, messages)`` cells, a prompt that is a non-empty list of strings (a
    multi-turn prompt: RouterBench's MT-Bench rows, a Parquet or dataset list column) turned into chat
    messages, one user turn per string, where the row has no messages of its own. The router then routes
    on the last turn, as it routes a live conversation (:func:`router_ml.messages.routed_text`). Anything
    else is returned as it is, and :func:`~training.data.schema.build_record` judges it (and reads a
    prompt that is the Python text of such a list, as RouterBench writes every prompt, the same way)."""
    if messages is None:
        turns = user_turns(prompt)
        if turns is not None:
            return None, turns
    return prompt, messages


def response_text(cell: str) -> str:
    """A response cell's answer text: the turns of RouterBench's ``str(list)`` answers
    (:func:`router_ml.messages.list_turns`) joined by a blank line; any other text as it is."""
    turns = list_turns(cell) if cell[:1] == "[" else None
    return cell if turns is None else "\n\n".join(turns)


def wide_files(path: Path) -> list[Path]:
    """The files of a wide table: the file itself, or a directory's Parquet and CSV files in name order."""
    return files_in(path, ".parquet", ".csv") if path.is_dir() else [path]


#: a wide table may also come as JSON Lines, one row per line (``DataFrame.to_json(orient="records", lines=True)``)
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")


def is_json_lines(file: Path) -> bool:
    return file.suffix.lower() in JSON_LINES_SUFFIXES


def json_rows(file: Path) -> Iterator[tuple[str, dict[str, Any] | Row]]:
    """``(file:line, row, or a Row holding its error)`` of each non-blank line of a JSON Lines table
    (:func:`~training.data._rows.json_line`'s rules, as for canonical JSON Lines)."""
    with open(file, "rb") as f:
        for n, raw in enumerate(f, start=1):
            item = json_line(file, n, raw)
            if item is not None:
                yield f"{file}:{n}", item


def json_columns(file: Path) -> list[str]:
    """The columns of a JSON Lines table: the keys of its first row."""
    for _, row in json_rows(file):
        if isinstance(row, dict):
            return list(row)
    raise DataError("the file holds no JSON object (no rows)", location=str(file))


def wide_layout(file: Path, report: dict | None = None) -> WideLayout:
    """One wide file's layout; its ignored columns are added to ``report["ignored_columns"]``."""
    if file.suffix.lower() == ".csv":
        layout = WideLayout(_csv_header(file), source=str(file), csv=True)
    elif is_json_lines(file):
        layout = WideLayout(json_columns(file), source=str(file))
    else:
        layout = WideLayout(_parquet_columns(file), source=str(file))
    note_layout(layout, report)
    return layout


def note_layout(layout: WideLayout, report: dict | None) -> None:
    """Add a wide layout's ignored, model and metadata columns to a reader's ``report`` (the loader tells
    which model columns no kept record had an outcome in: such a model is not in the table; ``data inspect``
    lists the metadata columns, where a quality column without its ``M|total_cost`` companion shows)."""
    if report is not None:
        for key, columns in (("ignored_columns", layout.ignored), ("model_columns", layout.models),
                             ("metadata_columns", layout.meta)):
            listed = report.setdefault(key, [])
            listed.extend(c for c in columns if c not in listed)


def wide_rows(file: Path, layout: WideLayout, prices: PriceCatalog | None,
              parquet_rows: Iterable[tuple[int, dict[str, Any]]] | None = None) -> Iterator[Row]:
    """One wide file through the per-row path; ``parquet_rows``: only these ``(row number, row)`` of a
    Parquet file (the rows the column checks left to this path)."""
    if file.suffix.lower() == ".csv":
        for loc, _, item in _iter_csv_rows(file):
            if isinstance(item, RecordError):
                yield Row(loc, None, error=item)
                continue
            yield _convert(loc, lambda item=item: _raw_csv(item), lambda item=item: layout.record(item, prices))
        return
    if is_json_lines(file):
        columns = set(json_columns(file))
        for loc, item in json_rows(file):
            if isinstance(item, Row):  # not a JSON object
                yield item
            elif not columns.issuperset(item):
                extra = sorted(set(item) - columns)
                yield Row(loc, item, error=RecordError(extra[0], f"columns {extra} are not in the first line's; every "
                                                                 "line of a wide table has the same columns (write "
                                                                 "null for a missing cell)"))
            else:
                yield _convert(loc, lambda item=item: _clean(item), lambda item=item: layout.record(item, prices))
        return
    for i, row in parquet_rows if parquet_rows is not None else _iter_parquet_rows(file):
        yield _convert(f"{file} row {i}", lambda row=row: _clean(row), lambda row=row: layout.record(row, prices))


def read_wide(path: Path, *, prices: PriceCatalog | None = None, report: dict | None = None,
              **_: Any) -> Iterator[Row]:
    """Read a RouterBench-style wide table from a Parquet, CSV or JSON Lines file (or a directory of Parquet and
    CSV files), row by row
    (:func:`training.data.fast_wide.wide_batches` is the column-by-column reader loading uses)."""
    for file in wide_files(path):
        yield from wide_rows(file, wide_layout(file, report), prices)


# --- RouteLLM evaluation CSVs -----------------------------------------------------------------

def read_routellm(path: Path, *, prices: PriceCatalog | None = None, **_: Any) -> Iterator[Row]:
    """Read RouteLLM evaluation CSVs: ``prompt`` plus one True/False column per model.

    ``<model>_response`` columns are that model's outcome ``response``; the file stem is the
    ``task`` and ``<stem>:<row>`` the ``sample_id``.
    """
    files = files_in(path, ".csv") if path.is_dir() else [path]
    if not files:
        raise DataError("directory holds no *.csv files", location=str(path))
    for file in files:
        header = _csv_header(file)
        if "prompt" not in header:
            raise DataError(f"no 'prompt' column (columns: {header[:12]})", location=str(file))
        responses = {c[: -len("_response")]: c for c in header
                     if c.endswith("_response") and c[: -len("_response")] in header}
        models = [c for c in header
                  if c != "prompt" and c not in responses.values() and not _is_index_column(c)]
        _check_routellm_models(file, models)
        if not models:
            raise DataError("no model columns beside 'prompt'", location=str(file))
        for n, (loc, _, item) in enumerate(_iter_csv_rows(file)):
            if isinstance(item, RecordError):
                yield Row(loc, None, error=item)
                continue

            def make(item: dict[str, str] = item, n: int = n, file: Path = file, models: list[str] = models,
                     responses: dict[str, str] = responses) -> Record:
                outcomes = {m: {"quality": item[m]} for m in models if not is_missing(item[m])}
                for m, c in responses.items():
                    if m in outcomes and item[c]:
                        outcomes[m]["response"] = item[c]
                return build_record(prompt=item["prompt"], outcomes=outcomes, sample_id=f"{file.stem}:{n}",
                                    task=file.stem, prices=prices)

            yield _convert(loc, lambda item=item: _raw_csv(item), make)


#: columns that describe a prompt or a call, never a model (a RouteLLM CSV holds only prompt and model columns)
_NOT_MODELS = {"sample_id", "id", "prompt_id", "question_id", "task", "category", "subject", "eval_name", "metadata",
               "messages", "timestamp"}
_COMPANION = re.compile(r"(.+?)[_|](total_)?(cost|costs|usd|price|tokens|input_tokens|output_tokens|latency|latency_s|"
                        r"propensity)$", re.I)


def _check_routellm_models(file: Path, models: list[str]) -> None:
    """Refuse columns of a RouteLLM CSV that are not models: every column beside ``prompt`` and the
    ``<model>_response`` ones is read as a model's True/False outcome, so a cost column (``m_cost``) became a
    model of quality 0.001 and an id column a model whose every quality was an error."""
    names = set(models)
    wrong = [c for c in models if c.lower() in _NOT_MODELS
             or ((m := _COMPANION.fullmatch(c)) is not None and m.group(1) in names)]
    if wrong:
        raise DataError(f"columns {wrong} are not models, yet the RouteLLM layout (prompt plus one True/False "
                        "column per model, <model>_response for answers) reads every other column as one; for "
                        "costs and other fields use the wide layout (M and M|total_cost columns, --format wide) or "
                        "drop those columns", location=str(file))


def read_pickle(path: Path, *, allow_pickle: bool = False, prices: PriceCatalog | None = None,
                report: dict | None = None, **_: Any) -> Iterator[Row]:
    """Read a RouterBench pickle (a pandas DataFrame in the wide layout) - only when allowed."""
    if not allow_pickle:
        raise DataError(
            f"refusing to unpickle {path}: loading a pickle can run arbitrary code. If you trust "
            f"the file, pass --allow-pickle (allow_pickle=True), or convert it once in a trusted "
            f"environment and load the Parquet file: python -c \"import pandas as pd; "
            f"pd.read_pickle('{path}').to_parquet('{path.with_suffix('.parquet')}')\""
        )
    pd = require("pandas", purpose="reading a pickle")

    frame = pd.read_pickle(path)  # noqa: S301 - the caller opted in explicitly
    if frame.empty:
        raise DataError("the pickled table is empty", location=str(path))
    frame = frame.reset_index(drop=frame.index.name is None)
    layout = WideLayout([str(c) for c in frame.columns], source=str(path))
    note_layout(layout, report)
    for index, row in enumerate(frame.to_dict(orient="records")):
        yield _convert(f"{path} row {index}", lambda row=row: _clean(row),
                       lambda row=row: layout.record(row, prices))

