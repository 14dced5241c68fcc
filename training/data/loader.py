"""``load_traffic``: any supported input -> one validated :class:`TrafficTable`.

Strict mode (``on_error="raise"``, the default) stops at the first bad record with a
:class:`router_ml.errors.DataError` naming file, line or row, field and problem. Lenient mode
(``on_error="quarantine"``) writes each rejected record, with its location and reason, as one
JSON line to the quarantine file and counts it; every good record is kept.

Records that share a ``sample_id`` are merged when they agree (logged traffic often has one line
per model call) and rejected when they conflict. Prompts in an exclude list are dropped before
anything else and counted.

Propensities must be all-or-nothing in logged traffic: once any outcome of a data set carries one,
every record with exactly one outcome (a logged decision) must carry it too, or off-policy
estimators would silently mix weighted and unweighted records. Strict mode raises naming how many
lack it and where; quarantine mode sets exactly those records aside (their validated canonical
form as ``raw``), counted in ``rejected`` and ``missing_propensity``. This runs once, after
reading, so every format gets the same check.

Readers deliver batches (:mod:`training.data.batches`): valid rows as columns, rejected rows
with their errors. A batch without errors or repeated sample ids is kept whole (less its excluded
rows); any other is replayed row by row in input order, which is what makes every count, message and
quarantine line the same as reading one record at a time. Sample ids are looked up by hash
(:mod:`training.data._collect`), so no dict of millions of strings is built.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from router_ml.errors import DataError, RouterMLError
from router_ml.pricing import PriceCatalog
from training.data._collect import Collector, id_hashes
from training.data.batches import Batch, read_batches
from training.data.columns import Columns
from training.data.readers import detect_format, reader_for
from training.data.schema import Record, RecordError
from training.data.spill import text_memory_budget
from training.data.table import TrafficTable

__all__ = ["LoadReport", "check_out_directory", "lies_within", "load_exclude_list", "load_traffic",
           "normalize_prompt", "quarantine_line"]

log = logging.getLogger(__name__)


def normalize_prompt(text: str) -> str:
    """The key under which prompts count as identical: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


_EXCLUDE_KEYS = ("eval_prompt", "prompt", "text")


def load_exclude_list(path: str | Path) -> set[str]:
    """Read prompts to exclude: JSON Lines (key ``eval_prompt``, ``prompt`` or ``text``; RouteLLM's
    ``contaminated_prompts.jsonl`` works as is; recognised by its first line whatever the file's name), a CSV
    file with such a column, or plain text with one prompt per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read exclude list: {exc}", location=str(path)) from exc
    if path.suffix.lower() == ".csv":  # a spreadsheet's export: quoted cells, a header naming the column
        import csv
        import io

        reader = csv.DictReader(io.StringIO(text))
        key = next((k for k in _EXCLUDE_KEYS if k in (reader.fieldnames or [])), None)
        if key is None:
            raise DataError(f"a CSV exclude list needs a column named {', '.join(_EXCLUDE_KEYS[:-1])} or "
                            f"{_EXCLUDE_KEYS[-1]} (columns: {reader.fieldnames})", location=str(path))
        try:
            return {normalize_prompt(row[key]) for row in reader if row.get(key)}
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", location=f"{path}:{reader.line_num}") from None
    lines = text.splitlines()
    out = set()
    first = next((line.strip() for line in lines if line.strip()), "")
    is_jsonl = path.suffix in {".jsonl", ".json", ".ndjson"} or _json_object_line(first)
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not is_jsonl:
            out.add(normalize_prompt(line))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg}", location=f"{path}:{n}") from exc
        prompt = next((obj[k] for k in _EXCLUDE_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), str)),
                      None)
        if prompt is None:
            raise DataError("expected a string 'eval_prompt', 'prompt' or 'text' key",
                            location=f"{path}:{n}")
        out.add(normalize_prompt(prompt))
    return out


def _json_object_line(line: str) -> bool:
    """A line that is a JSON object with a prompt key: the file is JSON Lines, whatever its name says."""
    if not line.startswith("{"):
        return False
    try:
        obj = json.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and any(isinstance(obj.get(k), str) for k in _EXCLUDE_KEYS)


@dataclass
class LoadReport:
    """What happened while loading: counts of kept, rejected, excluded and merged records."""

    source: str
    format: str
    records: int = 0
    rejected: int = 0
    excluded: int = 0
    merged_duplicates: int = 0
    missing_propensity: int = 0
    quarantine: str | None = None
    ignored_columns: list[str] = field(default_factory=list)
    #: a wide table's columns kept as each record's metadata (neither prompt, id, task nor a model's)
    metadata_columns: list[str] = field(default_factory=list)
    #: a wide table's model columns without an outcome in any kept record: such a model is not in the table
    models_without_outcomes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def quarantine_line(location: str, field_name: str, reason: str, raw: Any) -> str:
    """One quarantine-file line: where the record was, which field failed, why, and the record as read
    (so it can be fixed and fed back)."""
    entry = {"location": location, "field": field_name, "reason": reason, "raw": raw}
    return json.dumps(entry, ensure_ascii=True, default=str) + "\n"


class _Quarantine:
    """The quarantine file, opened at its first rejected record: a load refused before any (a file in the
    wrong format, an unreadable header) leaves no empty file behind and an earlier run's file untouched. A
    load that ends with nothing rejected still writes the (empty) file, so its path always names this run's."""

    def __init__(self, path: Path | None):
        self.path = path
        self._file = None
        if path is not None:  # an unwritable path fails now, not after a long read
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path if path.exists() else path.parent, os.W_OK) or path.is_dir():
                raise DataError(f"--quarantine {path}: cannot be written (a directory, or no write permission); "
                                "pass --quarantine FILE in a writable directory")

    def _open(self) -> Any:
        if self._file is None:
            assert self.path is not None
            self._file = open(self.path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        return self._file

    def write(self, location: str, error: RecordError, raw: Any) -> None:
        if self.path is not None:
            file = self._open()
            file.write(quarantine_line(location, error.field, error.reason, raw))
            file.flush()

    def close(self, *, completed: bool) -> None:
        if self.path is not None and completed:
            self._open()
        if self._file is not None:
            self._file.close()


def _merge(first: Record, second: Record) -> Record:
    """Merge two records with the same sample_id (one line per model call of a request), or raise RecordError
    when they conflict: another prompt or conversation, another task, a metadata key with another value, or
    another outcome of the same model. The first line's timestamp is kept (each call has its own time)."""
    if first.text != second.text:
        raise RecordError("sample_id", f"duplicate sample_id '{first.sample_id}' with a different prompt")
    if _context(first) != _context(second):  # the same last user turn after another conversation
        raise RecordError("messages", f"duplicate sample_id '{first.sample_id}' with the same prompt in another "
                                      "conversation (other earlier messages); one request has one conversation")
    if first.task is not None and second.task is not None and first.task != second.task:
        raise RecordError("task", f"duplicate sample_id '{first.sample_id}' with a conflicting task "
                                  f"({first.task!r} vs {second.task!r})")
    clash = sorted(k for k in first.metadata.keys() & second.metadata.keys() if first.metadata[k] != second.metadata[k])
    if clash:
        raise RecordError(f"metadata.{clash[0]}", f"duplicate sample_id '{first.sample_id}' with conflicting "
                                                  f"metadata ({first.metadata[clash[0]]!r} vs "
                                                  f"{second.metadata[clash[0]]!r})")
    for model, outcome in second.outcomes.items():
        if model in first.outcomes and first.outcomes[model] != outcome:
            raise RecordError(
                f"outcomes.{model}",
                f"duplicate sample_id '{first.sample_id}' with a conflicting outcome "
                f"({first.outcomes[model].to_dict()} vs {outcome.to_dict()})")
    prefs = first.preferences + tuple(p for p in second.preferences if p not in first.preferences)
    return replace(
        first,
        outcomes={**first.outcomes, **second.outcomes},
        preferences=prefs,
        task=first.task if first.task is not None else second.task,
        timestamp=first.timestamp if first.timestamp is not None else second.timestamp,
        metadata={**second.metadata, **first.metadata},
    )


def _context(record: Record) -> tuple[Any, ...]:
    """The conversation a record's prompt stands in: its messages, or the prompt as one user turn."""
    if record.messages is not None:
        return tuple(tuple(sorted(m.items())) for m in record.messages)
    return ((("content", record.prompt), ("role", "user")),)


_PROPENSITY_FIX = ("log propensities for every decision, or drop the propensity column to train as "
                   "full-information data")


def _lacking_propensity(columns: Columns) -> np.ndarray:
    """Rows of one outcome without a propensity, when some outcome has one (else none)."""
    has = columns.rank >= 0
    logged = has & ~np.isnan(columns.propensity)
    if not logged.any():
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero((has.sum(axis=1) == 1) & ~logged.any(axis=1))


class _Load:
    """One load's running state: the kept rows, the counts, and where rejected rows go."""

    def __init__(self, report: LoadReport, sink: _Quarantine, on_error: str, excluded_keys: set[str],
                 text_budget: int | None = None):
        self.report, self.sink, self.on_error, self.excluded_keys = report, sink, on_error, excluded_keys
        self.kept = Collector(text_budget)

    def reject(self, location: str, error: RecordError, raw: Any) -> None:
        if self.on_error == "raise":
            raise DataError(
                f"{error.reason}. Fix the record, or rerun with --on-error quarantine to set "
                f"bad records aside", location=location, field=error.field)
        self.sink.write(location, error, raw)
        self.report.rejected += 1

    def add(self, batch: Batch) -> None:
        cols = batch.columns
        excluded = np.zeros(len(cols), dtype=bool)
        if self.excluded_keys:
            excluded = np.fromiter((normalize_prompt(t) in self.excluded_keys for t in cols.text),
                                   dtype=bool, count=len(cols))
        ids = cols.sample_id.to_list()
        rows, hashes = id_hashes(ids)
        live = ~excluded[rows]
        _, counts = np.unique(hashes[live], return_counts=True)
        kept_before = np.zeros(len(cols), dtype=bool)  # the id's hash is among the kept rows' (maybe by collision)
        kept_before[rows] = self.kept.ids.hits(hashes)
        if batch.errors or (counts > 1).any() or (kept_before & ~excluded).any():
            self._replay(batch, excluded, ids, kept_before)
            return
        self.report.excluded += int(excluded.sum())
        self.kept.commit(cols.take(~excluded), batch.locations.take(np.flatnonzero(~excluded)))

    def _replay(self, batch: Batch, excluded: np.ndarray, ids: list[str | None], kept_before: np.ndarray) -> None:
        """Walk a batch row by row, in input order: errors, exclusions and duplicate merges (only
        rows flagged in ``kept_before`` are looked up among the rows kept from earlier batches)."""
        cols, kept, n0 = batch.columns, self.kept, self.kept.n
        keep = np.zeros(len(cols), dtype=bool)
        pending: dict[str, int] = {}  # sample_id -> batch row, for the rows kept from this batch
        errors = dict(batch.errors)
        valid = dict(zip(batch.positions.tolist(), range(len(cols)), strict=True))
        for pos in sorted([*errors, *valid]):
            if pos in errors:
                row = errors[pos]
                self.reject(row.location, row.error, row.raw)
                continue
            k = valid[pos]
            if excluded[k]:
                self.report.excluded += 1
                continue
            sid = ids[k]
            first = None if sid is None else pending.get(sid)
            if first is not None:
                g = n0 + int(keep[:first].sum())
            else:
                g = kept.find(sid) if sid is not None and kept_before[k] else None
            if g is None:
                keep[k] = True
                if sid is not None:
                    pending[sid] = k
                continue
            earlier = kept.patches.get(g) or (cols.record(first) if first is not None else kept.record(g))
            duplicate = cols.record(k)
            try:
                kept.patches[g] = _merge(earlier, duplicate)
                self.report.merged_duplicates += 1
            except RecordError as exc:  # quarantined as the record read (canonical form), to be mended and fed back
                where = batch.locations[first] if first is not None else kept.location(g)
                self.reject(batch.locations[k], RecordError(exc.field, f"{exc.reason} (first seen at {where})"),
                            duplicate.to_dict())
        kept.commit(cols.take(keep), batch.locations.take(np.flatnonzero(keep)))

    def finish(self, source: str) -> Columns:
        """The kept rows, less (in quarantine mode) the logged ones lacking a propensity."""
        columns = self.kept.finish()
        lacking = _lacking_propensity(columns)
        if len(lacking) and self.on_error == "raise":
            first = ", ".join(self.kept.location(int(i)) + (f" ({columns.sample_id[int(i)]})"
                                                            if columns.sample_id[int(i)] is not None else "")
                              for i in lacking[:3])
            raise DataError(
                f"{len(lacking)} logged records (one outcome each) carry no propensity while other outcomes "
                f"do; first: {first}. {_PROPENSITY_FIX[0].upper()}{_PROPENSITY_FIX[1:]}; or rerun with "
                f"--on-error quarantine to set those records aside", location=source, field="propensity")
        for i in lacking:
            record = columns.record(int(i))
            model = next(iter(record.outcomes))
            self.sink.write(self.kept.location(int(i)), RecordError(
                f"outcomes.{model}.propensity", f"no propensity while other records of the data set carry one; "
                f"{_PROPENSITY_FIX}"), record.to_dict())
        if len(lacking):
            self.report.rejected += len(lacking)
            self.report.missing_propensity = len(lacking)
            drop = np.zeros(len(columns), dtype=bool)
            drop[lacking] = True
            columns = columns.take(~drop)
        return columns


def lies_within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved): the one test of every "this output
    would overwrite an input" refusal (a quarantine file, ``simulate-log --out``, ``export --out``)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_out_directory(out: str | Path, writes: str) -> None:
    """The one refusal of an ``--out`` directory that is a file (``train``, ``sweep``, ``cascade evaluate``),
    made before any work rather than when the first output is written; ``writes`` says what goes there."""
    if Path(out).exists() and not Path(out).is_dir():
        raise RouterMLError(f"--out {out}: exists and is not a directory; give the directory to write {writes} "
                            "to")


_GZIP = b"\x1f\x8b"
_UTF16 = (b"\xff\xfe", b"\xfe\xff")


def _check_encoding(source: str | Path) -> None:
    """A file whose first bytes say it is gzip-compressed under a name that does not, or UTF-16 text, is
    refused as what it is (read as UTF-8 text its first line was "invalid UTF-8", and in quarantine mode its
    binary was set aside line by line as records)."""
    path = Path(source)
    if not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return  # the reader says why it cannot read it
    if head.startswith(_GZIP) and not path.name.endswith(".gz"):
        raise DataError("gzip-compressed data under a name without .gz: decompress it (gunzip -c), or name JSON "
                        "Lines .jsonl.gz, which is read as is", location=str(path))
    if head.startswith(_UTF16):
        raise DataError("UTF-16 text (as some spreadsheet programs and editors save it); save it as UTF-8",
                        location=str(path))


def _check_quarantine_path(qpath: Path, inputs: list[Path], fmt: str) -> None:
    """Refuse a quarantine file that is one of the inputs (writing it would truncate what is being read) or
    lies inside an input directory (the next read would take the rejected records for data)."""
    for given in inputs:
        if not given.exists():
            continue
        files = [given]
        if fmt == "decisions" and given.is_file():
            from router_ml.decision_log import log_files

            files += log_files(given)  # a worker's or a rotated file of the log
        for file in files:
            if lies_within(qpath, file):
                raise DataError(f"--quarantine {qpath}: {'lies inside' if file.is_dir() else 'is'} the input {file}; "
                                "rejected records need a file of their own: pass --quarantine FILE "
                                "outside every input", location=str(inputs[0]))


def load_traffic(
    source: str | Path,
    *,
    format: str | None = None,
    exclude: str | Path | Iterable[str] | None = None,
    on_error: Literal["raise", "quarantine"] = "raise",
    quarantine: str | Path | None = None,
    prices: PriceCatalog | str | Path | None = None,
    columns: Mapping[str, str] | None = None,
    split: str = "train",
    allow_pickle: bool = False,
    num_proc: int = 1,
    text_memory_mb: float | None = None,
) -> tuple[TrafficTable, LoadReport]:
    """Load logged traffic from ``source`` into a :class:`TrafficTable`.

    ``format`` overrides detection (see :data:`training.data.readers.FORMATS`); ``exclude`` is a
    file of prompts (or an iterable of prompt texts) to drop; ``prices`` is a catalog used where a
    record has tokens but no cost; ``columns`` maps fields to columns for the ``hf`` format.
    Canonical JSONL and Parquet stream in batches straight into columns (no record objects);
    memory is the table's columns plus the batches in flight. ``num_proc`` > 1 validates them over
    that many processes (shards of the file) with a result identical to one process.
    Once the routed texts pass ``text_memory_mb`` (default ``$ROUTER_ML_TEXT_MEMORY_MB``, else 256;
    ``math.inf``: never) they move to a file in ``$ROUTER_ML_SPILL_DIR`` (else the temp dir) and are
    read back from disk (:mod:`training.data.spill`, 8 bytes a record in memory); the table is the
    same either way.

    >>> table, report = load_traffic("data/demo/traffic.jsonl")  # doctest: +SKIP
    >>> table.quality.shape                                      # doctest: +SKIP
    (4000, 5)
    """
    if on_error not in ("raise", "quarantine"):
        raise DataError(f"on_error must be 'raise' or 'quarantine', got {on_error!r}")
    if num_proc < 1:
        raise DataError(f"num_proc must be >= 1, got {num_proc}")
    text_budget = text_memory_budget(text_memory_mb)
    _check_encoding(source)
    fmt = format or detect_format(source)
    reader_for(fmt)  # an unknown format fails here, before any file is written
    path: Any = Path(source) if fmt != "hf" or Path(source).exists() else str(source)
    inputs = [Path(p) for p in (source, exclude, prices) if isinstance(p, str | Path)]
    if isinstance(prices, str | Path):
        prices = PriceCatalog.load(prices)
    if exclude is None:
        excluded_keys: set[str] = set()
    elif isinstance(exclude, str | Path):
        excluded_keys = load_exclude_list(exclude)
    else:
        excluded_keys = {normalize_prompt(p) for p in exclude}
    qpath = None
    if on_error == "quarantine":
        qpath = Path(quarantine) if quarantine else Path.cwd() / f"{Path(str(source)).name}.quarantine.jsonl"
        _check_quarantine_path(qpath, inputs, fmt)
    report = LoadReport(source=str(source), format=fmt, quarantine=str(qpath) if qpath else None)
    extra: dict[str, Any] = {}
    sink = _Quarantine(qpath)
    state = _Load(report, sink, on_error, excluded_keys, text_budget)
    completed = False
    try:
        for batch in read_batches(fmt, path, prices=prices, num_proc=num_proc, columns=columns, split=split,
                                  allow_pickle=allow_pickle, report=extra):
            state.add(batch)
        table_columns = state.finish(str(source))
        completed = True
    finally:
        sink.close(completed=completed)
    report.ignored_columns = extra.get("ignored_columns", [])
    report.metadata_columns = extra.get("metadata_columns", [])
    if not len(table_columns):
        raise DataError(
            f"no valid records ({report.rejected} rejected, {report.excluded} excluded)"
            + (f"; see {qpath}" if qpath else ""), location=str(source))
    report.records = len(table_columns)
    if isinstance(exclude, str | Path) and excluded_keys and not report.excluded:
        log.warning("--exclude %s: none of its %d prompts is in %s, so nothing was excluded; check that it lists "
                    "this data's prompts (JSON Lines with an eval_prompt, prompt or text key, a CSV file with such "
                    "a column, or one prompt per line)", exclude, len(excluded_keys), source)
    table = TrafficTable.from_columns(table_columns)
    report.models_without_outcomes = [m for m in extra.get("model_columns", []) if m not in table.models]
    return table, report
