"""The canonical formats round-trip exactly, whatever the records hold."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router_ml import DataError
from training.data import (
    FORMAT_VERSION,
    Outcome,
    Preference,
    Record,
    TrafficTable,
    load_traffic,
    write_jsonl,
    write_parquet,
)

text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(str.strip)
model = st.sampled_from(["gpt-4o", "org/mixtral-8x7b", "tiny", "ünïcode-model"])
outcome = st.builds(
    Outcome,
    quality=st.floats(0, 1),
    cost=st.none() | st.floats(0, 10, allow_subnormal=False),
    input_tokens=st.none() | st.integers(0, 10**6),
    output_tokens=st.none() | st.integers(0, 10**6),
    latency_s=st.none() | st.floats(0, 100),
    propensity=st.none() | st.floats(0, 1, exclude_min=True),
)
json_value = st.recursive(st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=False,
                          allow_infinity=False) | text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                          max_leaves=6)


@st.composite
def records(draw):
    chat = draw(st.booleans())
    messages = None
    prompt = draw(text)
    if chat:
        messages = (dict(role="system", content=draw(text)), dict(role="user", content=prompt))
        prompt = None
    outcomes = draw(st.dictionaries(model, outcome, max_size=3))
    prefs = draw(st.lists(st.builds(Preference, model_a=st.just("a"), model_b=st.just("b"),
                                    winner=st.sampled_from(["a", "b", "tie"])), max_size=2))
    if not outcomes and not prefs:
        outcomes = {"tiny": Outcome(quality=1.0)}
    return Record(prompt=prompt, messages=messages, outcomes=outcomes, preferences=tuple(prefs),
                  sample_id=draw(st.none() | st.uuids().map(str)),
                  task=draw(st.none() | text),
                  timestamp=draw(st.none() | st.just("2026-01-02T03:04:05+00:00")),
                  metadata=draw(st.dictionaries(text, json_value, max_size=3)))


def _propensities(record: Record, *, logged: bool) -> Record:
    """The loader wants propensities all-or-nothing on one-outcome records: a logged data set gives
    every such record one, a full-information one none (multi-outcome records keep any mix)."""
    if logged and len(record.outcomes) != 1:
        return record
    outcomes = {m: replace(o, propensity=(o.propensity or 0.5) if logged else None)
                for m, o in record.outcomes.items()}
    return replace(record, outcomes=outcomes)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(records(), min_size=1, max_size=6), st.booleans())
def test_jsonl_and_parquet_round_trip_exactly(tmp_path, recs, logged):
    # sample ids must be unique or the loader merges them; give each its own
    recs = [r if r.sample_id is None else Record(**{**{f: getattr(r, f) for f in r.__slots__},
                                                   "sample_id": f"{i}-{r.sample_id}"})
            for i, r in enumerate(recs)]
    recs = [_propensities(r, logged=logged) for r in recs]
    table = TrafficTable(recs)
    for name, writer in (("t.jsonl", write_jsonl), ("t.parquet", write_parquet)):
        path = writer(table, tmp_path / name)
        loaded, report = load_traffic(path)
        assert loaded.records == table.records, name
        assert loaded.fingerprint() == table.fingerprint()
        assert report.rejected == 0


def test_jsonl_layout_is_one_plain_object_per_line(tmp_path):
    rec = Record(prompt="p", outcomes={"m": Outcome(quality=1.0, cost=0.5)}, task="t")
    path = write_jsonl([rec, rec], tmp_path / "x.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"prompt": "p", "task": "t", "outcomes": {"m": {"quality": 1.0, "cost": 0.5}}}] * 2


def test_propensity_round_trips_in_both_formats_and_the_table_matrix(tmp_path):
    recs = [Record(prompt="p", sample_id="1", outcomes={"m": Outcome(quality=1.0, propensity=0.125)}),
            Record(prompt="q", sample_id="2", outcomes={"n": Outcome(quality=0.0, propensity=1.0)}),
            Record(prompt="r", sample_id="3", outcomes={"m": Outcome(quality=1.0, propensity=1 / 3),
                                                        "n": Outcome(quality=0.5)})]
    line = write_jsonl(recs[:1], tmp_path / "one.jsonl").read_text(encoding="utf-8")
    assert json.loads(line)["outcomes"] == {"m": {"quality": 1.0, "propensity": 0.125}}
    for path in (write_jsonl(recs, tmp_path / "t.jsonl"), write_parquet(recs, tmp_path / "t.parquet")):
        table, _ = load_traffic(path)
        assert table.records == recs
        nan = float("nan")  # assert_array_equal counts NaN == NaN: "not logged" must stay not logged
        np.testing.assert_array_equal(table.propensity, [[0.125, nan], [nan, 1.0], [1 / 3, nan]])
        summary = table.summary()
        assert summary["propensity_coverage"] == {"m": 1.0, "n": 0.5}
        assert summary["min_propensity"] == {"m": 0.125, "n": 1.0}


def test_parquet_carries_the_format_version(tmp_path):
    import pyarrow.parquet as pq

    path = write_parquet([Record(prompt="p", outcomes={"m": Outcome(quality=1.0)})], tmp_path / "x.parquet")
    assert pq.read_schema(path).metadata[b"router_ml_format"] == FORMAT_VERSION.encode() == b"traffic/3"


def _old_parquet(path, version):
    """A canonical Parquet file as traffic/1 wrote it: no propensity in the outcome struct."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    outcome = pa.struct([("model", pa.string()), ("quality", pa.float64()), ("cost", pa.float64())])
    schema = pa.schema([("sample_id", pa.string()), ("prompt", pa.string()), ("outcomes", pa.list_(outcome))],
                       metadata={"router_ml_format": version})
    rows = [{"sample_id": "a", "prompt": "p", "outcomes": [{"model": "m", "quality": 1.0, "cost": 0.5}]}]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_traffic_1_parquet_still_reads_and_a_newer_version_is_refused(tmp_path):
    table, _ = load_traffic(_old_parquet(tmp_path / "old.parquet", "traffic/1"))
    assert table.records == [Record(prompt="p", sample_id="a", outcomes={"m": Outcome(quality=1.0, cost=0.5)})]
    assert math.isnan(table.propensity[0, 0])
    newer = _old_parquet(tmp_path / "new.parquet", "traffic/9")
    for mode in ("raise", "quarantine"):
        with pytest.raises(DataError, match=r"new.parquet: field 'router_ml_format': canonical Parquet format "
                                            r"'traffic/9' is not one this router-ml reads .*upgrade router-ml"):
            load_traffic(newer, on_error=mode, quarantine=tmp_path / "q.jsonl")
