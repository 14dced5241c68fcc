"""Reading Hugging Face datasets (a hub id, or a local saved/parquet directory) with a column mapping."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from router_ml.errors import DataError
from router_ml.optional import require
from router_ml.pricing import PriceCatalog
from training.data._rows import Row, _clean, _convert
from training.data.schema import OUTCOME_KEYS, Record, RecordError, build_record, is_missing
from training.data.tabular import WideLayout, note_layout, prompt_fields, response_text

__all__ = ["read_hf"]

_MAPPING_KEYS = {"prompt", "messages", "sample_id", "task", "timestamp", "model", *OUTCOME_KEYS,
                 "model_a", "model_b", "winner"}


def _load_hf(source: str, split: str) -> Any:
    datasets = require("datasets", purpose="reading Hugging Face datasets")
    from training.progress import bars_shown

    # its "Generating train split" bar follows --quiet and the terminal as ours do
    silence = not bars_shown() and not datasets.are_progress_bars_disabled()
    if silence:
        datasets.disable_progress_bars()
    try:
        return _load_hf_quietly(datasets, source, split)
    finally:
        if silence:
            datasets.enable_progress_bars()


def _load_hf_quietly(datasets: Any, source: str, split: str) -> Any:
    path = Path(source)
    try:
        if path.is_dir():
            if any((path / n).exists() for n in ("dataset_info.json", "dataset_dict.json", "state.json")):
                ds = datasets.load_from_disk(str(path))
            else:
                for builder, pattern in (("parquet", "*.parquet"), ("json", "*.jsonl"), ("csv", "*.csv")):
                    files = sorted(str(p) for p in path.glob(pattern))
                    if files:
                        ds = datasets.load_dataset(builder, data_files=files, split="train")
                        break
                else:
                    raise DataError("no dataset files (*.parquet, *.jsonl, *.csv) found", location=source)
        else:
            # A hub id: downloads on a machine that can reach the hub (HF_HUB_OFFLINE=1 forbids it).
            ds = datasets.load_dataset(source, split=split)
    except DataError:
        raise
    except Exception as exc:
        hint = ("" if path.exists() else
                f"; '{source}' is neither a local file or directory (from {Path.cwd()}) nor a dataset the hub "
                "gave; check the path, or the hub id and network (HF_HUB_OFFLINE=1 forbids downloads)")
        raise DataError(f"cannot load Hugging Face dataset: {exc}{hint}", location=source) from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"no split '{split}' (splits: {sorted(ds)}); pass --split", location=source)
        ds = ds[split]
    return ds


def read_hf(path: Path | str, *, prices: PriceCatalog | None = None,
            columns: Mapping[str, str] | None = None, split: str = "train",
            report: dict | None = None, **_: Any) -> Iterator[Row]:
    """Read a Hugging Face dataset with a column mapping ``{field: column}``.

    Three shapes, chosen by the mapping: *long* (``model`` and ``quality`` columns, optionally
    ``cost``, tokens, ``latency_s`` and ``propensity``: one outcome per row, rows sharing a
    ``sample_id`` are merged - logged traffic), *pairwise* (``model_a``,
    ``model_b``, ``winner``), or *wide* (neither: model columns as in :class:`WideLayout`). As in the wide
    form, columns named ``prompt`` and ``sample_id`` are read without a mapping; a long or pairwise form's
    other unmapped columns are listed in the report's ``ignored_columns``.
    """
    mapping = dict(columns or {})
    unknown = set(mapping) - _MAPPING_KEYS
    if unknown:
        raise DataError(f"unknown column-mapping keys {sorted(unknown)}; known: {sorted(_MAPPING_KEYS)}")
    ds = _load_hf(str(path), split)
    names = list(ds.column_names)
    missing = [c for c in mapping.values() if c not in names]
    if missing:
        raise DataError(f"mapped columns {missing} are not in the dataset (columns: {names[:20]})",
                        location=str(path))
    if len(ds) == 0:
        raise DataError("the dataset is empty", location=str(path))
    if "model" in mapping or "model_a" in mapping:  # the defaults the wide form has, and what is left unread
        for field in ("prompt", "sample_id"):
            if field not in mapping and field in names and not (field == "prompt" and "messages" in mapping):
                mapping[field] = field
        if report is not None:  # listed (data inspect's ignored columns), not dropped without a word
            listed = report.setdefault("ignored_columns", [])
            listed.extend(c for c in names if c not in mapping.values() and c not in listed)
    get = lambda row, key: row.get(mapping[key]) if key in mapping else None  # noqa: E731
    if "model" in mapping:
        if "quality" not in mapping:
            raise DataError("a long-form mapping with 'model' also needs 'quality'")

        def make(row: dict[str, Any]) -> Record:
            model = get(row, "model")
            if is_missing(model):
                raise RecordError(mapping["model"], "model name is missing")
            outcome = {k: get(row, k) for k in OUTCOME_KEYS if k in mapping}
            if is_missing(outcome.get("propensity")):
                outcome.pop("propensity", None)  # an empty cell = not logged for this call
            if not isinstance(outcome.get("response"), str):
                outcome.pop("response", None)  # null/NaN = no answer recorded ("" = the model said nothing)
            else:
                outcome["response"] = response_text(outcome["response"])
            prompt, messages = prompt_fields(get(row, "prompt"), get(row, "messages"))
            return build_record(prompt=prompt, messages=messages,
                                outcomes={str(model): outcome}, sample_id=get(row, "sample_id"),
                                task=get(row, "task"), timestamp=get(row, "timestamp"), prices=prices)
    elif "model_a" in mapping:
        def make(row: dict[str, Any]) -> Record:
            pref = {k: get(row, k) for k in ("model_a", "model_b", "winner")}
            prompt, messages = prompt_fields(get(row, "prompt"), get(row, "messages"))
            return build_record(prompt=prompt, messages=messages,
                                preferences=[pref], sample_id=get(row, "sample_id"),
                                task=get(row, "task"), timestamp=get(row, "timestamp"), prices=prices)
    else:
        layout = WideLayout(names, source=str(path), prompt=mapping.get("prompt", "prompt"),
                            messages=mapping.get("messages"),
                            sample_id=mapping.get("sample_id", "sample_id"),
                            task=mapping.get("task"), timestamp=mapping.get("timestamp"))
        note_layout(layout, report)

        def make(row: dict[str, Any]) -> Record:
            return layout.record(row, prices)

    index = 0
    for batch in ds.iter(batch_size=1024):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys), strict=True):
            row = dict(zip(keys, values, strict=True))
            yield _convert(f"{path} row {index}", lambda row=row: _clean(row), lambda row=row: make(row))
            index += 1

