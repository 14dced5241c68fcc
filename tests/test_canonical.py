"""The canonical formats round-trip exactly, whatever the records hold."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.data import (
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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(records(), min_size=1, max_size=6))
def test_jsonl_and_parquet_round_trip_exactly(tmp_path, recs):
    # sample ids must be unique or the loader merges them; give each its own
    recs = [r if r.sample_id is None else Record(**{**{f: getattr(r, f) for f in r.__slots__},
                                                   "sample_id": f"{i}-{r.sample_id}"})
            for i, r in enumerate(recs)]
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


def test_parquet_carries_the_format_version(tmp_path):
    import pyarrow.parquet as pq

    path = write_parquet([Record(prompt="p", outcomes={"m": Outcome(quality=1.0)})], tmp_path / "x.parquet")
    assert pq.read_schema(path).metadata[b"router_ml_format"] == b"traffic/1"
