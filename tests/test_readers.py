"""Each supported format: detection, good files, and a battery of malformed ones.

Strict mode must stop naming the place; lenient mode must quarantine exactly the bad records
and keep every good one.
"""

from __future__ import annotations

import json
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router_ml import DataError
from training.data import detect_format, load_traffic

GOOD = {"prompt": "What is 2+2?", "outcomes": {"a": {"quality": 1, "cost": 0.001}, "b": {"quality": 0.5}}}


def _jsonl(path, lines, *, trailing_newline=True):
    data = b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)
    path.write_bytes(data + (b"\n" if trailing_newline else b""))
    return path


def _quarantined(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- canonical JSONL ----------------------------------------------------------------------

BAD_JSONL = {
    "unparseable": (b'{"prompt": "x", ', None, "not valid JSON"),
    "missing prompt": (json.dumps({"outcomes": {"a": {"quality": 1}}}).encode(), "prompt", "prompt is missing"),
    "empty prompt": (json.dumps({"prompt": "", "outcomes": {"a": {"quality": 1}}}).encode(), "prompt",
                     "prompt is empty"),
    "invalid utf-8": (b'{"prompt": "caf\xe9", "outcomes": {"a": {"quality": 1}}}', None, "invalid UTF-8"),
    "quality out of range": (json.dumps({"prompt": "x", "outcomes": {"a": {"quality": 2}}}).encode(),
                             "outcomes.a.quality", "[0, 1]"),
    "quality not a number": (json.dumps({"prompt": "x", "outcomes": {"a": {"quality": "yes!"}}}).encode(),
                             "outcomes.a.quality", "number"),
    "negative cost": (json.dumps({"prompt": "x", "outcomes": {"a": {"quality": 1, "cost": -1}}}).encode(),
                      "outcomes.a.cost", ">= 0"),
    "non-numeric cost": (json.dumps({"prompt": "x", "outcomes": {"a": {"quality": 1, "cost": "$3"}}}).encode(),
                         "outcomes.a.cost", "number"),
    "no outcome": (json.dumps({"prompt": "x", "outcomes": {}}).encode(), "outcomes", "no outcome"),
    "not an object": (b"[1, 2, 3]", None, "JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_jsonl_strict_names_line_and_field(tmp_path, case):
    line, field, needle = BAD_JSONL[case]
    path = _jsonl(tmp_path / "t.jsonl", [json.dumps(GOOD), line, json.dumps(GOOD)])
    with pytest.raises(DataError) as info:
        load_traffic(path)
    assert info.value.location == f"{path}:2"
    assert info.value.field == field
    assert needle in str(info.value) and "--on-error quarantine" in str(info.value)


def test_jsonl_lenient_quarantines_exactly_the_bad_records(tmp_path):
    lines, bad_lines = [], []
    for case in sorted(BAD_JSONL):
        lines.append(json.dumps(dict(GOOD, sample_id=f"good-{case}")))
        lines.append(BAD_JSONL[case][0])
        bad_lines.append(len(lines))
    path = _jsonl(tmp_path / "t.jsonl", lines)
    qfile = tmp_path / "q" / "rejected.jsonl"
    table, report = load_traffic(path, on_error="quarantine", quarantine=qfile)
    assert len(table) == report.records == len(BAD_JSONL)
    assert [r.sample_id for r in table] == [f"good-{c}" for c in sorted(BAD_JSONL)]
    assert report.rejected == len(BAD_JSONL)
    entries = _quarantined(qfile)
    assert [e["location"] for e in entries] == [f"{path}:{n}" for n in bad_lines]
    assert all(e["reason"] and e["raw"] is not None for e in entries)


def test_truncated_last_line(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [json.dumps(GOOD), json.dumps(GOOD)[:20]], trailing_newline=False)
    with pytest.raises(DataError, match=r"t.jsonl:2: truncated last line"):
        load_traffic(path)
    table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert (len(table), report.rejected) == (1, 1)


def test_complete_last_line_without_newline_is_fine(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [json.dumps(GOOD)] * 2, trailing_newline=False)
    assert len(load_traffic(path)[0]) == 2


@pytest.mark.parametrize("name, body", [("t.jsonl", b""), ("t.jsonl", b"\n\n"), ("t.csv", b""),
                                        ("t.csv", b"prompt,a\n")])
def test_empty_file_is_an_error_in_both_modes(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(body)
    for mode in ("raise", "quarantine"):
        with pytest.raises(DataError, match=r"empty|no rows"):
            load_traffic(path, on_error=mode, quarantine=tmp_path / "q.jsonl")


def test_unknown_format(tmp_path):
    path = tmp_path / "t.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DataError, match="unknown format .* pass --format"):
        load_traffic(path)
    with pytest.raises(DataError, match="unknown format 'excel'; choose one of"):
        load_traffic(path, format="excel")


def test_duplicate_sample_ids_merge_or_conflict(tmp_path):
    a = {"sample_id": "r1", "prompt": "p", "outcomes": {"a": {"quality": 1}}}
    b = {"sample_id": "r1", "prompt": "p", "outcomes": {"b": {"quality": 0}}}
    conflict = {"sample_id": "r1", "prompt": "p", "outcomes": {"a": {"quality": 0}}}
    path = _jsonl(tmp_path / "t.jsonl", [json.dumps(a), json.dumps(b), json.dumps(a)])
    table, report = load_traffic(path)
    assert len(table) == 1 and set(table[0].outcomes) == {"a", "b"}
    assert report.merged_duplicates == 2
    path = _jsonl(tmp_path / "c.jsonl", [json.dumps(a), json.dumps(b), json.dumps(conflict)])
    with pytest.raises(DataError, match=r"c.jsonl:3: field 'outcomes.a': duplicate sample_id 'r1' with a "
                                        r"conflicting outcome .*first seen at .*c.jsonl:1"):
        load_traffic(path)
    table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert report.rejected == 1 and table[0].outcomes["a"].quality == 1


def test_exclude_list_drops_and_counts(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [json.dumps(dict(GOOD, prompt=p)) for p in ("Keep me", "Drop  ME", "x")])
    excl = tmp_path / "ex.jsonl"
    excl.write_text(json.dumps({"eval_prompt": "drop me"}) + "\n")
    table, report = load_traffic(path, exclude=excl)
    assert [r.prompt for r in table] == ["Keep me", "x"] and report.excluded == 1
    txt = tmp_path / "ex.txt"
    txt.write_text("x\n")
    assert load_traffic(path, exclude=txt)[1].excluded == 1


# --- canonical Parquet --------------------------------------------------------------------

def test_canonical_parquet_detected_and_validated(tmp_path):
    from training.data import write_parquet

    table, _ = load_traffic(_jsonl(tmp_path / "t.jsonl", [json.dumps(GOOD)] * 3))
    path = write_parquet(table, tmp_path / "t.parquet")
    assert detect_format(path) == "parquet"
    t = pq.read_table(path).to_pylist()
    t[1]["outcomes"][0]["quality"] = 7.0
    pq.write_table(pa.Table.from_pylist(t, schema=pq.read_schema(path)), path)
    with pytest.raises(DataError, match=r"t.parquet row 1: field 'outcomes.a.quality'"):
        load_traffic(path)
    table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert (len(table), report.rejected) == (2, 1)


# --- RouterBench-style wide tables --------------------------------------------------------

WIDE_HEADER = "sample_id,prompt,eval_name,oracle,small,small|total_cost,small|model_response,big,big|total_cost"


def test_wide_csv_reads_models_costs_and_metadata(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text(WIDE_HEADER + "\n"
                    's1,"two\nlines",mmlu,big,0,0.001,"resp",1,0.01\n'
                    "s2,q2,gsm8k,small,1.0,0.002,r,,\n")
    assert detect_format(path) == "wide"
    table, report = load_traffic(path)
    assert table.models == ("small", "big")
    assert table[0].prompt == "two\nlines" and table[0].task == "mmlu"
    assert table[0].metadata == {"oracle": "big"}
    assert set(table[1].outcomes) == {"small"}  # empty = no outcome for 'big'
    assert table.cost[0].tolist() == [0.001, 0.01]
    assert report.ignored_columns == ["small|model_response"]


def test_wide_csv_battery(tmp_path):
    good = 's{i},q{i},mmlu,x,1,0.1,r,0,0.2'
    bad = {
        "quality out of range": "s{i},q{i},mmlu,x,3,0.1,r,0,0.2",
        "negative cost": "s{i},q{i},mmlu,x,1,-0.1,r,0,0.2",
        "text cost": "s{i},q{i},mmlu,x,1,abc,r,0,0.2",
        "empty prompt": "s{i},,mmlu,x,1,0.1,r,0,0.2",
        "no outcome": "s{i},q{i},mmlu,x,,,r,,",
        "too few columns": "s{i},q{i}",
        "True string is fine": None,
    }
    rows, bad_lines, line = [WIDE_HEADER], [], 1
    for i, case in enumerate(sorted(bad)):
        rows.append(good.format(i=f"g{i}"))
        line += 1
        if bad[case] is not None:
            rows.append(bad[case].format(i=f"b{i}"))
            line += 1
            bad_lines.append(line)
    rows.append("sT,qT,mmlu,x,True,0.1,r,False,0.2")
    path = tmp_path / "w.csv"
    path.write_bytes(("\n".join(rows) + "\n").encode() + b's\xff,q,mmlu,x,1,0.1,r,0,0.2\n')
    bad_lines.append(line + 2)
    with pytest.raises(DataError, match=rf"w.csv:{bad_lines[0]}: "):
        load_traffic(path)
    qfile = tmp_path / "q.jsonl"
    table, report = load_traffic(path, on_error="quarantine", quarantine=qfile)
    assert report.rejected == len(bad_lines) == 7
    assert [e["location"] for e in _quarantined(qfile)] == [f"{path}:{n}" for n in bad_lines]
    assert len(table) == len(bad) + 1
    assert table[-1].outcomes["small"].quality == 1.0 and table[-1].outcomes["big"].quality == 0.0
    assert "invalid UTF-8" in _quarantined(qfile)[-1]["reason"]


def test_wide_parquet_nan_is_no_outcome(tmp_path):
    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "m1": [1.0, float("nan")], "m1|total_cost": [0.1, None],
                             "m2": [0.0, 1.0], "m2|total_cost": [0.2, 0.3], "m2|output_tokens": [5, 6]}), path)
    table, _ = load_traffic(path)
    assert set(table[1].outcomes) == {"m2"} and table[1].outcomes["m2"].output_tokens == 6


def test_wide_orphan_cost_column_is_a_file_error(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("prompt,m,m|total_cost,ghost|total_cost\nq,1,0.1,0.2\n")
    with pytest.raises(DataError, match="'ghost|total_cost' has no quality column"):
        load_traffic(path)


def test_pickle_refused_unless_allowed(tmp_path):
    import pandas as pd

    path = tmp_path / "routerbench.pkl"
    pd.DataFrame({"prompt": ["q"], "m": [1.0], "m|total_cost": [0.5]}).to_pickle(path)
    with pytest.raises(DataError, match="refusing to unpickle .*--allow-pickle.*to_parquet"):
        load_traffic(path)
    table, _ = load_traffic(path, allow_pickle=True)
    assert table[0].outcomes["m"].cost == 0.5
    assert pickle.HIGHEST_PROTOCOL  # the file above really is a pickle


# --- RouteLLM evaluation CSVs -------------------------------------------------------------

def test_routellm_directory(tmp_path):
    d = tmp_path / "responses"
    d.mkdir()
    (d / "mmlu_a.csv").write_text('prompt,weak,strong,strong_response\n"q1\nA. x",True,False,"resp"\nq2,False,True,\n')
    (d / "mmlu_b.csv").write_text("prompt,weak,strong\nq3,false,true\n")
    assert detect_format(d) == "routellm"
    table, _ = load_traffic(d)
    assert table.models == ("weak", "strong")
    assert [r.sample_id for r in table] == ["mmlu_a:0", "mmlu_a:1", "mmlu_b:0"]
    assert table.quality.tolist() == [[1, 0], [0, 1], [0, 1]]
    assert table[0].metadata == {"responses": {"strong": "resp"}} and table[0].task == "mmlu_a"


def test_routellm_battery(tmp_path):
    path = tmp_path / "mmlu_x.csv"
    path.write_bytes(b"prompt,weak,strong\n"
                     b"ok1,True,False\n"
                     b",True,False\n"           # empty prompt
                     b"bad2,maybe,False\n"      # not a boolean
                     b"bad3,,\n"                # no outcome
                     b"caf\xe9,True,True\n"     # invalid UTF-8
                     b"ok2,False,True\n"
                     b'"unclosed,True,True\n')  # truncated quoted field
    with pytest.raises(DataError, match=r"mmlu_x.csv:3: field 'prompt': prompt is empty"):
        load_traffic(path)
    table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert [r.prompt for r in table] == ["ok1", "ok2"]
    assert report.rejected == 5
    locations = [e["location"] for e in _quarantined(tmp_path / "q.jsonl")]
    assert locations == [f"{path}:{n}" for n in (3, 4, 5, 6, 8)]


# --- Hugging Face datasets (local directories; the hub path cannot run offline) ------------

def test_hf_saved_dataset_long_form_merges_logged_calls(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({
        "request_id": ["r1", "r1", "r2", "r3"],
        "question": ["q1", "q1", "q2", "q3"],
        "llm": ["a", "b", "a", "b"],
        "score": [1.0, 0.0, 0.5, 2.0],
        "usd": [0.1, 0.2, 0.1, 0.3],
    })
    ds.save_to_disk(str(tmp_path / "ds"))
    columns = {"sample_id": "request_id", "prompt": "question", "model": "llm", "quality": "score", "cost": "usd"}
    assert detect_format(tmp_path / "ds") == "hf"
    with pytest.raises(DataError, match=r"ds row 3: field 'outcomes.b.quality'"):
        load_traffic(tmp_path / "ds", columns=columns)
    table, report = load_traffic(tmp_path / "ds", columns=columns, on_error="quarantine",
                                 quarantine=tmp_path / "q.jsonl")
    assert len(table) == 2 and report.merged_duplicates == 1 and report.rejected == 1
    assert table[0].outcomes["b"].cost == 0.2


def test_hf_parquet_directory_wide_and_pairwise(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"text": ["q1", "q2"], "m": [1.0, 0.0], "m|total_cost": [0.1, 0.1]}),
                   d / "part-0.parquet")
    table, _ = load_traffic(d, format="hf", columns={"prompt": "text"})
    assert table.models == ("m",) and table[0].prompt == "q1"
    arena = tmp_path / "arena"
    arena.mkdir()
    pq.write_table(pa.table({"q": ["x", "y"], "ma": ["a", "a"], "mb": ["b", "c"], "w": ["model_a", "tie"]}),
                   arena / "0.parquet")
    table, _ = load_traffic(arena, format="hf",
                            columns={"prompt": "q", "model_a": "ma", "model_b": "mb", "winner": "w"})
    assert table.models == ("a", "b", "c") and table[1].preferences[0].winner == "tie"
    with pytest.raises(DataError, match="unknown column-mapping keys"):
        load_traffic(arena, format="hf", columns={"question": "q"})
    with pytest.raises(DataError, match=r"mapped columns \['nope'\]"):
        load_traffic(arena, format="hf", columns={"prompt": "nope"})
