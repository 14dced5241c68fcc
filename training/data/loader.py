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
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from router_ml.errors import DataError
from router_ml.pricing import PriceCatalog
from training.data.readers import detect_format, reader_for
from training.data.schema import Record, RecordError
from training.data.table import TrafficTable

__all__ = ["LoadReport", "load_exclude_list", "load_traffic", "normalize_prompt", "quarantine_line"]


def normalize_prompt(text: str) -> str:
    """The key under which prompts count as identical: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def load_exclude_list(path: str | Path) -> set[str]:
    """Read prompts to exclude: JSON Lines (key ``eval_prompt``, ``prompt`` or ``text``; RouteLLM's
    ``contaminated_prompts.jsonl`` works as is) or plain text with one prompt per line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read exclude list: {exc}", location=str(path)) from exc
    out = set()
    is_jsonl = path.suffix in {".jsonl", ".json", ".ndjson"}
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
        text = next((obj[k] for k in ("eval_prompt", "prompt", "text")
                     if isinstance(obj, dict) and isinstance(obj.get(k), str)), None)
        if text is None:
            raise DataError("expected a string 'eval_prompt', 'prompt' or 'text' key",
                            location=f"{path}:{n}")
        out.add(normalize_prompt(text))
    return out


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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def quarantine_line(location: str, field_name: str, reason: str, raw: Any) -> str:
    """One quarantine-file line: where the record was, which field failed, why, and the record as read
    (so it can be fixed and fed back)."""
    entry = {"location": location, "field": field_name, "reason": reason, "raw": raw}
    return json.dumps(entry, ensure_ascii=True, default=str) + "\n"


class _Quarantine:
    def __init__(self, path: Path | None):
        self.path = path
        self._file = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115

    def write(self, location: str, error: RecordError, raw: Any) -> None:
        if self._file is not None:
            self._file.write(quarantine_line(location, error.field, error.reason, raw))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _merge(first: Record, second: Record) -> Record:
    """Merge two records with the same sample_id, or raise RecordError when they conflict."""
    if first.text != second.text:
        raise RecordError("sample_id", f"duplicate sample_id '{first.sample_id}' with a different prompt")
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


_PROPENSITY_FIX = ("log propensities for every decision, or drop the propensity column to train as "
                   "full-information data")


def _lacking_propensity(records: list[Record]) -> list[int]:
    """Indices of the one-outcome records without a propensity when some outcome has one, else []."""
    if not any(o.propensity is not None for r in records for o in r.outcomes.values()):
        return []
    return [i for i, r in enumerate(records)
            if len(r.outcomes) == 1 and next(iter(r.outcomes.values())).propensity is None]


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
) -> tuple[TrafficTable, LoadReport]:
    """Load logged traffic from ``source`` into a :class:`TrafficTable`.

    ``format`` overrides detection (see :data:`training.data.readers.FORMATS`); ``exclude`` is a
    file of prompts (or an iterable of prompt texts) to drop; ``prices`` is a catalog used where a
    record has tokens but no cost; ``columns`` maps fields to columns for the ``hf`` format.

    >>> table, report = load_traffic("data/demo/traffic.jsonl")  # doctest: +SKIP
    >>> table.quality.shape                                      # doctest: +SKIP
    (4000, 5)
    """
    if on_error not in ("raise", "quarantine"):
        raise DataError(f"on_error must be 'raise' or 'quarantine', got {on_error!r}")
    fmt = format or detect_format(source)
    read = reader_for(fmt)
    path: Any = Path(source) if fmt != "hf" or Path(source).exists() else str(source)
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
    report = LoadReport(source=str(source), format=fmt, quarantine=str(qpath) if qpath else None)
    extra: dict[str, Any] = {}
    sink = _Quarantine(qpath)
    records: list[Record] = []
    locations: list[str] = []
    by_id: dict[str, tuple[int, str]] = {}
    try:
        for row in read(path, prices=prices, columns=columns, split=split,
                        allow_pickle=allow_pickle, report=extra):
            error, record = row.error, row.record
            if record is not None and excluded_keys and normalize_prompt(record.text) in excluded_keys:
                report.excluded += 1
                continue
            if record is not None and record.sample_id is not None and record.sample_id in by_id:
                index, first_loc = by_id[record.sample_id]
                try:
                    records[index] = _merge(records[index], record)
                    report.merged_duplicates += 1
                    continue
                except RecordError as exc:
                    error = RecordError(exc.field, f"{exc.reason} (first seen at {first_loc})")
            if error is not None:
                if on_error == "raise":
                    raise DataError(
                        f"{error.reason}. Fix the record, or rerun with --on-error quarantine to set "
                        f"bad records aside", location=row.location, field=error.field)
                sink.write(row.location, error, row.raw)
                report.rejected += 1
                continue
            assert record is not None
            if record.sample_id is not None:
                by_id[record.sample_id] = (len(records), row.location)
            records.append(record)
            locations.append(row.location)
        lacking = _lacking_propensity(records)
        if lacking and on_error == "raise":
            first = ", ".join(locations[i] + (f" ({records[i].sample_id})" if records[i].sample_id else "")
                              for i in lacking[:3])
            raise DataError(
                f"{len(lacking)} logged records (one outcome each) carry no propensity while other outcomes "
                f"do; first: {first}. {_PROPENSITY_FIX[0].upper()}{_PROPENSITY_FIX[1:]}; or rerun with "
                f"--on-error quarantine to set those records aside", location=str(source), field="propensity")
        for i in lacking:
            model = next(iter(records[i].outcomes))
            sink.write(locations[i], RecordError(
                f"outcomes.{model}.propensity", f"no propensity while other records of the data set carry one; "
                f"{_PROPENSITY_FIX}"), records[i].to_dict())
        if lacking:
            report.rejected += len(lacking)
            report.missing_propensity = len(lacking)
            dropped = set(lacking)
            records = [r for i, r in enumerate(records) if i not in dropped]
    finally:
        sink.close()
    report.ignored_columns = extra.get("ignored_columns", [])
    if not records:
        raise DataError(
            f"no valid records ({report.rejected} rejected, {report.excluded} excluded)"
            + (f"; see {qpath}" if qpath else ""), location=str(source))
    report.records = len(records)
    return TrafficTable(records), report
