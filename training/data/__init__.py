"""The logged-traffic data layer: one canonical record, readers for real formats, splits."""

from training.data.canonical import FORMAT_VERSION, write_jsonl, write_parquet
from training.data.loader import LoadReport, load_exclude_list, load_traffic, normalize_prompt
from training.data.readers import FORMATS, detect_format
from training.data.schema import Outcome, Preference, Record, RecordError, build_record
from training.data.splits import Split, split_table
from training.data.table import TrafficTable

__all__ = [
    "FORMATS",
    "FORMAT_VERSION",
    "LoadReport",
    "Outcome",
    "Preference",
    "Record",
    "RecordError",
    "Split",
    "TrafficTable",
    "build_record",
    "detect_format",
    "load_exclude_list",
    "load_traffic",
    "normalize_prompt",
    "split_table",
    "write_jsonl",
    "write_parquet",
]
