"""Outcome response texts: every reader and writer carries them, and tables hand them out per model."""

import json

import numpy as np
import pandas as pd
import pytest

from training.data import load_traffic
from training.data.canonical import write_jsonl, write_parquet
from training.data.schema import Outcome, Record, RecordError, build_record

RECORDS = [
    Record(prompt="2+2?", sample_id="a", outcomes={
        "small": Outcome(quality=0.0, cost=0.001, response="5. The answer is (B)"),
        "large": Outcome(quality=1.0, cost=0.01, response="The answer is (A) \u00e9\u4e2d")}),
    Record(prompt="capital of France?", sample_id="b", outcomes={
        "small": Outcome(quality=1.0, cost=0.001, response=""),  # the model said nothing, and that is recorded
        "large": Outcome(quality=1.0, cost=0.01)}),  # no answer recorded
    Record(prompt="no responses here", sample_id="c", outcomes={"large": Outcome(quality=0.5, cost=0.01)}),
]


def test_build_record_validates_the_response():
    rec = build_record(prompt="p", outcomes={"m": {"quality": 1, "response": "yes"}})
    assert rec.outcomes["m"].response == "yes" and rec.to_dict()["outcomes"]["m"] == {"quality": 1.0, "response": "yes"}
    with pytest.raises(RecordError) as err:
        build_record(prompt="p", outcomes={"m": {"quality": 1, "response": 3}})
    assert err.value.field == "outcomes.m.response" and "answer text" in str(err.value)


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet])
def test_canonical_formats_round_trip_responses(tmp_path, writer):
    path = writer(RECORDS, tmp_path / ("t.jsonl" if writer is write_jsonl else "t.parquet"))
    table, report = load_traffic(path)
    assert report.rejected == 0
    assert table.records == RECORDS
    assert table.responses("small").tolist() == ["5. The answer is (B)", "", None]
    assert table.responses("large").tolist() == ["The answer is (A) \u00e9\u4e2d", None, None]
    assert table.summary()["responses"] == {"small": 2, "large": 1}
    # a table written from its columns (no Record built) keeps them too
    again, _ = load_traffic(write_parquet(table, tmp_path / "again.parquet"))
    assert again.records == RECORDS and again.fingerprint() == table.fingerprint()


def test_responses_survive_subsets_and_missing_models(tmp_path):
    table, _ = load_traffic(write_jsonl(RECORDS, tmp_path / "t.jsonl"))
    assert table.subset([2, 0]).responses("small").tolist() == [None, "5. The answer is (B)"]
    with pytest.raises(Exception, match="no model 'medium'"):
        table.responses("medium")


def test_fingerprint_of_data_without_responses_is_unchanged_by_the_column(tmp_path):
    plain = [Record(prompt=r.prompt, sample_id=r.sample_id,
                    outcomes={m: Outcome(quality=o.quality, cost=o.cost) for m, o in r.outcomes.items()})
             for r in RECORDS]
    with_text, _ = load_traffic(write_jsonl(RECORDS, tmp_path / "a.jsonl"))
    without, _ = load_traffic(write_jsonl(plain, tmp_path / "b.jsonl"))
    assert with_text.fingerprint() != without.fingerprint()
    assert without.summary()["responses"] == {"small": 0, "large": 0}


def test_wide_parquet_reads_response_columns(tmp_path):
    frame = pd.DataFrame({
        "sample_id": ["1", "2", "3"], "prompt": ["q1", "q2", "q3"],
        "small": [1.0, 0.0, np.nan], "small|total_cost": [0.1, 0.1, np.nan],
        "small|response": ["The answer is (C)", "", None],
        "large": [1.0, 1.0, 1.0], "large|total_cost": [1.0, 1.0, 1.0], "large|response": [None, "ok", "fine"],
    })
    path = tmp_path / "wide.parquet"
    frame.to_parquet(path)
    table, report = load_traffic(path)
    assert "small|response" not in report.ignored_columns
    assert table.responses("small").tolist() == ["The answer is (C)", "", None]
    assert table.responses("large").tolist() == [None, "ok", "fine"]
    assert table[0].metadata == {}


def test_wide_csv_empty_response_cell_is_no_response(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text('prompt,m,m|total_cost,m|response\nq1,1,0.1,"The answer is (A)"\nq2,0,0.1,\n')
    table, _ = load_traffic(path)
    assert table.responses("m").tolist() == ["The answer is (A)", None]


def test_jsonl_bad_response_is_quarantined_with_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"prompt": "p", "outcomes": {"m": {"quality": 1, "response": "fine"}}}
    bad = {"prompt": "q", "outcomes": {"m": {"quality": 1, "response": ["not", "text"]}}}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "rejected.jsonl")
    assert len(table) == 1 and report.rejected == 1
    rejected = (tmp_path / "rejected.jsonl").read_text()
    assert "outcomes.m.response" in rejected and ":2" in rejected


def test_released_responses_refuse_to_be_read(tmp_path):
    table, _ = load_traffic(write_jsonl(RECORDS, tmp_path / "t.jsonl"))
    table.release("responses")
    with pytest.raises(Exception, match="released"):
        table.responses("small")
