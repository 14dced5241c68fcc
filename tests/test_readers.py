"""Each supported format: detection, good files, and a battery of malformed ones.

Strict mode must stop naming the place; lenient mode must quarantine exactly the bad records
and keep every good one.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from router_ml import DataError
from training.data import Record, detect_format, load_traffic, write_jsonl, write_parquet

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


def test_a_quarantine_file_that_is_an_input_is_refused_before_anything_is_written(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [json.dumps(GOOD), BAD_JSONL[sorted(BAD_JSONL)[0]][0]])
    exclude = tmp_path / "exclude.jsonl"
    exclude.write_text(json.dumps({"prompt": "nothing like it"}) + "\n")
    before = {p: p.read_bytes() for p in (path, exclude)}
    for target in (path, exclude):  # writing either would truncate what is being read
        with pytest.raises(DataError, match=f"--quarantine {re.escape(str(target))}: is the input"):
            load_traffic(path, on_error="quarantine", quarantine=target, exclude=exclude)
    pq.write_table(pa.table({"text": ["q1"], "m": [1.0], "m|total_cost": [0.1]}), tmp_path / "part-0.parquet")
    with pytest.raises(DataError, match="lies inside the input"):  # the next read would take it for data
        load_traffic(tmp_path, format="hf", columns={"prompt": "text"}, on_error="quarantine",
                     quarantine=tmp_path / "rejected.jsonl")
    assert {p: p.read_bytes() for p in (path, exclude)} == before
    assert not (tmp_path / "rejected.jsonl").exists()
    table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q" / "rejected.jsonl")
    assert (len(table), report.rejected) == (1, 1)


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


def test_an_exclude_list_is_read_by_its_content_and_one_that_matches_nothing_is_reported(tmp_path, caplog):
    """A CSV export of the list and JSON Lines saved as .txt were read as one prompt per line: `"Drop me"` and
    `{"prompt": ...}` matched no prompt, and nothing was excluded without a word."""
    path = _jsonl(tmp_path / "t.jsonl", [json.dumps(dict(GOOD, prompt=p)) for p in ("Keep me", "Drop, ME", "x")])
    csv_list = tmp_path / "ex.csv"
    csv_list.write_text('id,prompt\n1,"drop, me"\n')
    json_txt = tmp_path / "ex.txt"
    json_txt.write_text(json.dumps({"prompt": "drop, me"}) + "\n")
    for excl in (csv_list, json_txt):
        table, report = load_traffic(path, exclude=excl)
        assert [r.prompt for r in table] == ["Keep me", "x"] and report.excluded == 1, excl
    no_column = tmp_path / "bad.csv"
    no_column.write_text("id,question\n1,x\n")
    with pytest.raises(DataError, match=r"bad\.csv: a CSV exclude list needs a column named eval_prompt, prompt or "
                                        r"text \(columns: \['id', 'question'\]\)"):
        load_traffic(path, exclude=no_column)
    other = tmp_path / "other.txt"
    other.write_text("a prompt of another data set\n")
    with caplog.at_level("WARNING", logger="training.data.loader"):
        assert load_traffic(path, exclude=other)[1].excluded == 0
    assert f"--exclude {other}: none of its 1 prompts is in {path}, so nothing was excluded" in caplog.text


@pytest.mark.parametrize("on_error", ["raise", "quarantine"])
def test_gzip_under_another_name_and_utf16_text_are_refused_as_what_they_are(tmp_path, on_error):
    """Both were read as UTF-8 lines: "invalid UTF-8 at byte 1", and in quarantine mode a compressed file's
    binary was set aside line by line as records."""
    import gzip

    text = "".join(json.dumps(dict(GOOD, prompt=f"q{i}")) + "\n" for i in range(50))
    compressed = tmp_path / "t.jsonl"
    compressed.write_bytes(gzip.compress(text.encode()))
    utf16 = tmp_path / "u.csv"
    utf16.write_text("prompt,a,a|total_cost\nq,1,0.1\n", encoding="utf-16")
    quarantine = tmp_path / "q.jsonl"
    with pytest.raises(DataError, match=r"t\.jsonl: gzip-compressed data under a name without \.gz"):
        load_traffic(compressed, on_error=on_error, quarantine=quarantine)
    with pytest.raises(DataError, match=r"u\.csv: UTF-16 text .*save it as UTF-8"):
        load_traffic(utf16, on_error=on_error, quarantine=quarantine)
    assert not quarantine.exists()
    named = compressed.rename(tmp_path / "t.jsonl.gz")
    assert len(load_traffic(named)[0]) == 50  # the same bytes under a .gz name are read


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_wide_tables_metadata_columns_are_reported_where_a_bare_quality_column_shows(tmp_path, suffix):
    """A quality column without its M|total_cost companion is kept as metadata (the layout's rule); it was
    listed nowhere, so a whole model's outcomes vanished without a word."""
    frame = pd.DataFrame({"prompt": ["p1", "p2"], "a": [1.0, 0.0], "a|total_cost": [0.001, 0.001], "b": [0.0, 1.0],
                          "eval_name": ["x", "y"]})
    path = tmp_path / f"w{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    table, report = load_traffic(path)
    assert list(table.models) == ["a"] and report.metadata_columns == ["b"]
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", "data", "inspect", str(path)], capture_output=True,
                         text=True, check=True).stdout
    assert "metadata columns (no 'M|total_cost' beside them, so not models): b" in out


def test_decimal_quality_and_cost_columns_of_a_sql_export_read_as_numbers(tmp_path):
    """decimal128 columns (SQL, Spark, BigQuery exports) were 'quality must be a number, got Decimal' on every
    row."""
    from decimal import Decimal

    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({"prompt": ["q0", "q1"],
                             "m": pa.array([Decimal("1.0"), Decimal("0.5")], pa.decimal128(3, 1)),
                             "m|total_cost": pa.array([Decimal("0.10"), Decimal("0.25")], pa.decimal128(5, 2)),
                             "n": [0.0, 1.0], "n|total_cost": [0.2, 0.2]}), path)
    table, report = load_traffic(path)
    assert report.rejected == 0 and table.quality[:, 0].tolist() == [1.0, 0.5]
    assert table.cost[:, 0].tolist() == [0.1, 0.25]


def test_an_empty_id_or_task_cell_of_a_wide_csv_is_no_value_as_in_parquet(tmp_path):
    """Empty sample_id cells were the id "" of every such row (duplicates with different prompts: rejected), and
    an empty task cell the task "", where the same table in Parquet has none."""
    frame = pd.DataFrame({"sample_id": ["id1", None, None], "prompt": ["first", "second", "third"],
                          "eval_name": ["x", None, "y"], "m": [1.0, 0.0, 1.0], "m|total_cost": [0.1, 0.2, 0.3]})
    frame.to_csv(tmp_path / "w.csv", index=False)
    frame.to_parquet(tmp_path / "w.parquet", index=False)
    (csv_table, csv_report), (pq_table, _) = load_traffic(tmp_path / "w.csv"), load_traffic(tmp_path / "w.parquet")
    assert csv_report.rejected == 0 and len(csv_table) == 3
    assert [r.task for r in csv_table] == ["x", None, "y"]
    assert csv_table.fingerprint() == pq_table.fingerprint()


@pytest.mark.parametrize(("second", "field"), [
    ({"messages": [{"role": "system", "content": "You are a pirate"}, {"role": "user", "content": "What is 2+2?"}]},
     "messages"),
    ({"task": "poetry"}, "task"),
    ({"metadata": {"user": "bob"}}, "metadata.user"),
])
def test_duplicate_ids_that_disagree_on_the_conversation_task_or_metadata_are_rejected_not_merged(tmp_path, second,
                                                                                                  field):
    """A merge kept the first line's conversation, task and metadata and dropped the second's without a word, so
    one model's outcome sat under a context it never saw."""
    first = {"sample_id": "x", "prompt": "What is 2+2?", "task": "math", "metadata": {"user": "alice"},
             "outcomes": {"a": {"quality": 1}}}
    other = {**{k: v for k, v in first.items() if k not in second and not (k == "prompt" and "messages" in second)},
             **second, "outcomes": {"b": {"quality": 0}}}
    path = _jsonl(tmp_path / "dup.jsonl", [json.dumps(first), json.dumps(other)])
    with pytest.raises(DataError) as info:
        load_traffic(path)
    assert info.value.field == field and "duplicate sample_id 'x'" in str(info.value)
    table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    (entry,) = _quarantined(tmp_path / "q.jsonl")  # the rejected record itself, to mend and feed back (once null)
    assert report.rejected == 1 and entry["raw"]["outcomes"] == {"b": {"quality": 0.0}}
    assert load_traffic(_jsonl(tmp_path / "back.jsonl", [json.dumps(entry["raw"])]))[0][0].sample_id == "x"
    # the same request told alike (a prompt, or it as the one user turn; its own time per call) merges
    same = {**{k: v for k, v in first.items() if k != "prompt"}, "messages": [{"role": "user",
                                                                              "content": "What is 2+2?"}],
            "timestamp": "2026-01-01T00:00:00Z", "outcomes": {"b": {"quality": 0}}}
    table, report = load_traffic(_jsonl(tmp_path / "same.jsonl", [json.dumps(first), json.dumps(same)]))
    assert len(table) == 1 and report.merged_duplicates == 1 and set(table[0].outcomes) == {"a", "b"}


def test_a_directory_reads_its_csv_files_in_any_case_and_says_canonical_parquet_needs_one_file(tmp_path):
    """B.CSV (as some systems save a spreadsheet) was skipped without a word; a directory of canonical Parquet
    files failed with "cannot read Parquet file: ... is a directory"."""
    from training.data import write_parquet

    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "a.csv").write_text("prompt,m,m|total_cost,n,n|total_cost\nq1,1,0.1,0,0.2\n")
    (wide / "B.CSV").write_text("prompt,m,m|total_cost,n,n|total_cost\nq2,0,0.1,1,0.2\n")
    (wide / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (wide / "README.md").write_text("# notes\n")
    table, _ = load_traffic(wide)
    assert sorted(table.texts) == ["q1", "q2"]
    canonical = tmp_path / "canonical"
    canonical.mkdir()
    records, _ = load_traffic(_jsonl(tmp_path / "t.jsonl", [json.dumps(GOOD)]))
    write_parquet(records, canonical / "a.parquet")
    with pytest.raises(DataError, match=r"canonical: a directory of canonical Parquet files \(1\); give one file"):
        load_traffic(canonical)


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
    assert report.ignored_columns == []  # RouterBench's M|model_response is the answer text
    assert table.responses("small").tolist() == ["resp", "r"]


def test_a_csv_saved_with_a_byte_order_mark_reads_and_a_repeated_column_is_refused(tmp_path):
    body = 'prompt,a,b,a|total_cost,b|total_cost\n"hi",1,0,0.1,0.2\n"yo",0.5,1,0.1,0.2\n'
    (tmp_path / "plain.csv").write_text(body, encoding="utf-8")
    (tmp_path / "bom.csv").write_text(body, encoding="utf-8-sig")  # as spreadsheet programs save CSV
    plain, _ = load_traffic(tmp_path / "plain.csv")
    bom, _ = load_traffic(tmp_path / "bom.csv")
    assert bom.texts == plain.texts == ["hi", "yo"] and bom.fingerprint() == plain.fingerprint()
    routellm = tmp_path / "rl"
    routellm.mkdir()
    (routellm / "sub.csv").write_text('prompt,m1,m2\n"q1",True,False\n', encoding="utf-8-sig")
    assert load_traffic(routellm)[0].texts == ["q1"]
    (tmp_path / "twice.csv").write_text('prompt,a,a,a|total_cost\n"hi",1,0,0.1\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"twice.csv:1: column 'a' appears twice in the header \(columns 2 and 3\)"):
        load_traffic(tmp_path / "twice.csv")
    pq.write_table(pa.Table.from_arrays([pa.array(["hi"]), pa.array([1.0]), pa.array([0.0]), pa.array([0.1])],
                                        names=["prompt", "a", "a", "a|total_cost"]), tmp_path / "twice.parquet")
    with pytest.raises(DataError, match="column 'a' appears twice in the Parquet schema"):
        load_traffic(tmp_path / "twice.parquet")


def test_a_damaged_or_mislabelled_gzip_file_is_a_data_error_naming_it(tmp_path):
    import gzip

    body = "".join(json.dumps(dict(GOOD, sample_id=f"s{i}", prompt=f"prompt {i}")) + "\n" for i in range(200)).encode()
    whole = tmp_path / "t.jsonl.gz"
    whole.write_bytes(gzip.compress(body))
    assert len(load_traffic(whole)[0]) == 200
    cut, plain = tmp_path / "cut.jsonl.gz", tmp_path / "plain.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[:40])
    plain.write_bytes(body)
    for path in (cut, plain):
        with pytest.raises(DataError, match="cannot decompress the file") as info:
            load_traffic(path)
        assert info.value.location == str(path)


def test_json_lines_with_a_byte_order_mark_read_as_without(tmp_path):
    canonical = json.dumps(GOOD) + "\n" + json.dumps(dict(GOOD, sample_id="s2", prompt="other")) + "\n"
    wide = '{"prompt": "hi", "a": 1.0, "a|total_cost": 0.1, "b": 0.0, "b|total_cost": 0.2}\n'
    for name, body in (("canonical", canonical), ("wide", wide)):
        (tmp_path / f"{name}.jsonl").write_text(body, encoding="utf-8")
        (tmp_path / f"{name}-bom.jsonl").write_text(body, encoding="utf-8-sig")
        plain, report = load_traffic(tmp_path / f"{name}.jsonl")
        bom, bom_report = load_traffic(tmp_path / f"{name}-bom.jsonl")
        assert report.format == bom_report.format and bom.fingerprint() == plain.fingerprint()
        assert bom_report.rejected == 0


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


def test_wide_json_lines_reads_as_its_parquet_and_csv_twins(tmp_path):
    """A wide table written as JSON Lines (``DataFrame.to_json(orient="records", lines=True)``) is detected as
    wide and loads to the same records as the same frame in Parquet and CSV; a bad line is located by its
    line number, and a line with a column the first line lacks is refused, not silently dropped."""
    import pandas as pd

    frame = pd.DataFrame({"sample_id": ["s1", "s2", "s3"], "prompt": ["two\nlines", "['What is 2+2?']", "q3"],
                          "eval_name": ["mmlu", "gsm8k", "mmlu"],
                          "meta/llama-2-70b-chat": [0.0, 1.0, None],
                          "meta/llama-2-70b-chat|total_cost": [1e-3, 2e-3, None],
                          "gpt-4": [1.0, 1.0, 0.5], "gpt-4|total_cost": [0.01, 0.02, 0.03]})
    paths = {kind: tmp_path / f"w.{kind}" for kind in ("jsonl", "parquet", "csv")}
    frame.to_json(paths["jsonl"], orient="records", lines=True)
    frame.to_parquet(paths["parquet"])
    frame.to_csv(paths["csv"], index=False)
    loaded = {}
    for kind, path in paths.items():
        assert detect_format(path) == "wide", kind
        table, _ = load_traffic(path)
        loaded[kind] = table
    for kind in ("parquet", "csv"):
        assert loaded["jsonl"].models == loaded[kind].models == ("meta/llama-2-70b-chat", "gpt-4")
        assert [r.prompt for r in loaded["jsonl"]] == [r.prompt for r in loaded[kind]]
        np.testing.assert_array_equal(loaded["jsonl"].quality, loaded[kind].quality)
        np.testing.assert_array_equal(loaded["jsonl"].cost, loaded[kind].cost)
    assert loaded["jsonl"][1].messages[-1]["content"] == "What is 2+2?" and loaded["jsonl"][0].task == "mmlu"
    assert set(loaded["jsonl"][2].outcomes) == {"gpt-4"}  # null = no outcome
    lines = paths["jsonl"].read_text().splitlines()
    lines[1] = lines[1].replace('"gpt-4":1.0', '"gpt-4":7')
    lines.insert(2, "{not json")
    lines.append(lines[0].replace('"sample_id":"s1"', '"sample_id":"s4","extra":1'))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'outcomes.gpt-4.quality'"):
        load_traffic(bad)
    table, report = load_traffic(bad, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert len(table) == 2 and report.rejected == 3
    quarantined = _quarantined(tmp_path / "q.jsonl")
    assert [e["location"] for e in quarantined] == [f"{bad}:2", f"{bad}:3", f"{bad}:5"]
    assert "not in the first line's" in quarantined[-1]["reason"]


def test_wide_parquet_nan_is_no_outcome(tmp_path):
    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "m1": [1.0, float("nan")], "m1|total_cost": [0.1, None],
                             "m2": [0.0, 1.0], "m2|total_cost": [0.2, 0.3], "m2|output_tokens": [5, 6]}), path)
    table, _ = load_traffic(path)
    assert set(table[1].outcomes) == {"m2"} and table[1].outcomes["m2"].output_tokens == 6


def test_wide_multi_turn_prompts_are_user_turns_and_routerbench_response_columns_are_read(tmp_path):
    """A prompt cell holding a list of strings (RouterBench's MT-Bench rows; a Parquet list column) is a
    chat record of that many user turns, routed on the last one as a live conversation is; RouterBench's
    ``M|model_response`` is the answer text. An empty list or one holding a non-string stays an error."""
    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({"prompt": [["Write a poem.", "Now make it rhyme."], ["What is 2+2?"]],
                             "m": [0.8, 1.0], "m|total_cost": [0.1, 0.1], "m|model_response": ["Roses", "4"]}), path)
    for fmt, kwargs in (("wide", {}), ("hf", {})):
        table, report = load_traffic(path if fmt == "wide" else _dir_of(path, tmp_path / "hf"), format=fmt, **kwargs)
        assert table[0].prompt is None
        assert [dict(m) for m in table[0].messages] == [{"role": "user", "content": "Write a poem."},
                                                         {"role": "user", "content": "Now make it rhyme."}]
        assert table[0].text == "Now make it rhyme." and table[1].text == "What is 2+2?"
        assert table.responses("m").tolist() == ["Roses", "4"]
        assert "m|model_response" not in report.ignored_columns
    long = tmp_path / "long"
    long.mkdir()
    pq.write_table(pa.table({"turns": [["Hi", "Summarise this."]], "model": ["m"], "q": [0.5]}), long / "0.parquet")
    table, _ = load_traffic(long, format="hf", columns={"prompt": "turns", "model": "model", "quality": "q"})
    assert len(table[0].messages) == 2 and table[0].text == "Summarise this."
    for name, prompts in (("empty", [["q"], [], ["ok"]]), ("numbers", [[1], [2, 3], [4]])):
        bad = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"prompt": prompts, "m": [1.0] * 3, "m|total_cost": [0.1] * 3}), bad)
        with pytest.raises(DataError, match=r"row 0.*field 'prompt'" if name == "numbers" else
                           r"row 1.*field 'prompt'"):
            load_traffic(bad)


def test_routerbench_list_text_prompts_and_answers_are_read_as_text(tmp_path):
    """RouterBench's conversion writes every prompt and answer as ``str(list_of_strings)``: read as it is,
    the router would learn from brackets, quotes and escaped newlines that production prompts never hold.
    Such a cell is read as the list it spells (prompt: user turns, routed on the last; answer: the text),
    the same in Parquet (column by column and row by row), CSV, a pickle and a dataset directory. A cell
    that only looks like a list - other text around it, other quotes, numbers - stays the text it is."""
    import pandas as pd

    question = "Which is prime?\nA. 4\nB. 7\nAnswer:"
    looks_like = ["[1, 2, 3] sorted?", '["double", "quoted"]', "['a'] and more", "[]"]
    frame = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(6)],
        "prompt": [str([question]), str(["You are terse.", "Don't say 'no'."]), *looks_like],
        "m": [1.0, 0.0, 1.0, 1.0, 0.5, 0.0],
        "m|total_cost": [0.1] * 6,
        "m|model_response": [str(["The answer is (B)"]), str(["first", "second"]), "plain", "['x'] tail", None, "[]"],
    })
    frame.to_parquet(tmp_path / "w.parquet")
    frame.to_csv(tmp_path / "w.csv", index=False)
    frame.to_pickle(tmp_path / "w.pkl")
    sources = {"parquet": (tmp_path / "w.parquet", {}), "csv": (tmp_path / "w.csv", {}),
               "pickle": (tmp_path / "w.pkl", {"allow_pickle": True}),
               "hf": (_dir_of(tmp_path / "w.parquet", tmp_path / "hf"), {"format": "hf"})}
    for name, (path, kwargs) in sources.items():
        table, _ = load_traffic(path, **kwargs)
        assert [r.text for r in table] == [question, "Don't say 'no'.", *looks_like], name
        assert table[0].prompt is None and [dict(m) for m in table[0].messages] == [
            {"role": "user", "content": question}], name
        assert [m["content"] for m in table[1].messages] == ["You are terse.", "Don't say 'no'."], name
        assert all(r.messages is None and r.prompt == r.text for r in list(table)[2:]), name
        responses = table.responses("m").tolist()
        assert responses[:4] == ["The answer is (B)", "first\n\nsecond", "plain", "['x'] tail"], name
        assert responses[4] is None and responses[5] == "[]", name  # no list of strings: the text stays
        assert table.summary()["chat_records"] == 2, name
    # the canonical formats read such a prompt the same way, on the fast and the per-row paths
    table, _ = load_traffic(tmp_path / "w.parquet")
    records = [Record(prompt=str(["You are terse.", "Don't say 'no'."]), outcomes=table[1].outcomes), *list(table)[2:]]
    for path in (write_jsonl(records, tmp_path / "c.jsonl"), write_parquet(records, tmp_path / "c.parquet")):
        canonical, _ = load_traffic(path)
        assert [r.text for r in canonical] == ["Don't say 'no'.", *looks_like], path
        assert canonical[0].prompt is None and len(canonical[0].messages) == 2, path
    assert load_traffic(tmp_path / "c.jsonl", num_proc=2)[0].records == canonical.records


def _dir_of(file, directory):
    directory.mkdir()
    (directory / file.name).write_bytes(file.read_bytes())
    return directory


def test_wide_orphan_cost_column_is_a_file_error(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("prompt,m,m|total_cost,ghost|total_cost\nq,1,0.1,0.2\n")
    with pytest.raises(DataError, match=r"'ghost\|total_cost' has no quality column 'ghost' beside it; add a "
                                        r"quality column 'ghost'"):
        load_traffic(path)
    # spaces around the '|' are part of the names: the message points at the quality column that is there
    path.write_text("prompt,m,m | total_cost,n,n|total_cost\nq,1,0.1,0,0.2\n")
    with pytest.raises(DataError, match=r"'m \| total_cost' has no quality column 'm ' beside it; the quality column "
                                        r"'m' is there, so write 'm\|total_cost'"):
        load_traffic(path)


@pytest.mark.parametrize("header", ["prompt,pi|pe,pi|pe|total_cost,x,x|total_cost",
                                    "prompt,gpt,gpt|total_cost,gpt|turbo,gpt|turbo|total_cost"])
def test_a_wide_model_name_holding_the_field_separator_is_named_as_such(tmp_path, header):
    """'gpt|turbo|total_cost' was blamed for a missing quality column 'gpt|turbo' that stood in the header."""
    path = tmp_path / "w.csv"
    path.write_text(header + "\nhi,1,0.1,0,0.2\n")
    with pytest.raises(DataError, match=r"a model name cannot hold '\|'; rename the model, or write the records as "
                                        "canonical JSONL or Parquet"):
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
    assert table[0].metadata == {} and table[0].task == "mmlu_a"
    assert table[0].outcomes["strong"].response == "resp" and table[0].outcomes["weak"].response is None
    assert table.responses("strong").tolist() == ["resp", None, None]


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


@pytest.mark.parametrize("columns", [["small-8b_cost", "large-70b_cost"], ["sample_id"]])
def test_a_routellm_csv_refuses_columns_that_are_not_models(tmp_path, columns):
    """Every column beside prompt was read as a model: a cost column became a model of quality 0.001, an id
    column a model whose every cell was an error."""
    path = tmp_path / "mmlu_x.csv"
    path.write_text("\n".join([",".join(["prompt", "small-8b", "large-70b", *columns]),
                               ",".join(["p1", "True", "False", *["0.001"] * len(columns)])]) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}: columns {columns} are not models")):
        load_traffic(path)
    path.write_text("prompt,small-8b,large-70b,small-8b_response\np1,True,False,yes\n")  # answers are not models
    table, _ = load_traffic(path)
    assert list(table.models) == ["small-8b", "large-70b"]


@pytest.mark.parametrize("on_error", ["raise", "quarantine"])
def test_a_quote_never_closed_before_more_rows_fails_the_load_instead_of_dropping_them(tmp_path, on_error):
    """The unclosed quote on line 3 once took lines 3-6 into one quarantined "record": 4 rows gone, 1 counted.
    A broken quote within one line is that row's error only, and the rows after it are read."""
    rows = ["prompt,a,a|total_cost,b,b|total_cost", "p1,1,0.001,0,0.01", '"p2,1,0.001,0,0.01',
            "p3,1,0.001,1,0.01", "p4,0,0.001,1,0.01", "p5,1,0.001,1,0.01"]
    path = tmp_path / "wide.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"wide\.csv:3: a quote opened in this row is never closed, so lines 3-6 "
                                        r"\(the rest of the file\) cannot be read as rows"):
        load_traffic(path, on_error=on_error, quarantine=tmp_path / "q.jsonl")
    # a cell of several lines past csv's 128 KiB default: its next lines were once read as rows
    long = tmp_path / "long.csv"
    long.write_text("\n".join(rows[:2]) + '\n"' + "x" * 140_000 + '\nfoo,1,2\nbar",1,0.001,0,0.01\n' + rows[3] + "\n")
    table, report = load_traffic(long, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert report.rejected == 0 and sorted(map(len, table.texts)) == [2, 2, 140_012]
    # a broken quote after the first line of a cell of several lines: no next row can be told
    long.write_text("\n".join(rows[:2]) + '\n"a\nb"x,1,0.001,0,0.01\n' + rows[3] + "\n")
    with pytest.raises(DataError, match=r"long\.csv:3: malformed CSV in the row starting here"):
        load_traffic(long, on_error=on_error, quarantine=tmp_path / "q.jsonl")
    rows[2] = '"p2"x,1,0.001,0,0.01'
    path.write_text("\n".join(rows) + "\n")
    table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert [r.prompt for r in table] == ["p1", "p3", "p4", "p5"] and report.rejected == 1
    assert [e["location"] for e in _quarantined(tmp_path / "q.jsonl")] == [f"{path}:3"]


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
    # unmapped columns are listed, not dropped without a word; a column named prompt needs no mapping
    plain = datasets.Dataset.from_dict({"prompt": ["q1", "q2"], "llm": ["a", "b"], "score": [1.0, 0.0],
                                        "user": ["alice", "bob"]})
    plain.save_to_disk(str(tmp_path / "plain"))
    table, report = load_traffic(tmp_path / "plain", columns={"model": "llm", "quality": "score"})
    assert sorted(table.texts) == ["q1", "q2"] and report.ignored_columns == ["user"]


def test_hf_parquet_directory_wide_and_pairwise(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"text": ["q1", "q2"], "m": [1.0, 0.0], "m|total_cost": [0.1, 0.1],
                             "m|propensity": [0.5, 0.25]}), d / "part-0.parquet")
    table, _ = load_traffic(d, format="hf", columns={"prompt": "text"})
    assert table.models == ("m",) and table[0].prompt == "q1"
    assert table.propensity[:, 0].tolist() == [0.5, 0.25]  # the wide shape's M|propensity, as in `wide`
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


def test_the_hf_readers_own_bar_follows_quiet_like_ours(tmp_path, capsys, monkeypatch):
    """`datasets` draws "Generating train split" on stderr whatever router-ml's --quiet said; it now follows
    the same rule as router-ml's bars (off when quiet, on when forced)."""
    import datasets

    from training.progress import PROGRESS_ENV, progress_scope

    monkeypatch.setenv(PROGRESS_ENV, "1")  # forced on, as on a terminal
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))  # a fresh cache: the split is generated
    for n, quiet in enumerate((True, False)):
        d = tmp_path / f"pq{n}"
        d.mkdir()
        pq.write_table(pa.table({"text": [f"q{n}", "q"], "m": [1.0, 0.0], "m|total_cost": [0.1, 0.1]}),
                       d / "part-0.parquet")
        with progress_scope(not quiet):
            load_traffic(d, format="hf", columns={"prompt": "text"})
        assert ("Generating train split" in capsys.readouterr().err) is not quiet
        assert not datasets.are_progress_bars_disabled()  # left as it was found


def test_hf_source_that_is_neither_a_local_path_nor_on_the_hub_says_both(tmp_path):
    missing = tmp_path / "no-such-dataset"  # an absolute path: no hub id, so nothing is requested
    with pytest.raises(DataError, match="neither a local file or directory") as info:
        load_traffic(missing, format="hf", columns={"prompt": "q"})
    assert str(missing) in str(info.value)


# --- propensities: every format that carries one, bad values, mixed presence ---------------

RULE = "propensity must be in (0, 1]"
#: bad propensity -> its spelling in a JSON line and in a CSV cell (NaN is no value in a CSV: not logged)
BAD_PROPENSITY = {"zero": (0, "0"), "negative": (-0.25, "-0.25"), "above one": (1.5, "1.5"),
                  "NaN": (float("nan"), None), "boolean": (True, "True"), "text": ("often", "often")}


def _logged(i, propensity=0.5, model="a"):
    out = {"quality": 1, "cost": 0.001}
    if propensity is not None:
        out["propensity"] = propensity
    return {"sample_id": f"s{i}", "prompt": f"q{i}", "outcomes": {model: out}}


def _check_bad_rows(path, bad_locations, n_good, tmp_path, field_prefix="outcomes.a"):
    """Strict mode names the first bad place and the field; quarantine keeps exactly the good rows."""
    with pytest.raises(DataError) as info:
        load_traffic(path)
    assert info.value.location == bad_locations[0] and info.value.field == f"{field_prefix}.propensity"
    assert RULE in str(info.value)
    qfile = tmp_path / f"{path.name}.q.jsonl"
    table, report = load_traffic(path, on_error="quarantine", quarantine=qfile)
    entries = _quarantined(qfile)
    assert (len(table), report.rejected) == (n_good, len(bad_locations))
    assert [e["location"] for e in entries] == bad_locations
    assert all(RULE in e["reason"] and e["raw"] is not None for e in entries)
    assert (~np.isnan(table.propensity)).sum() == n_good  # every kept record kept its propensity
    return table


def test_jsonl_bad_propensities(tmp_path):
    lines = []
    for i, (value, _) in enumerate(BAD_PROPENSITY.values()):
        lines += [json.dumps(_logged(f"g{i}")), json.dumps(_logged(f"b{i}", value))]
    path = _jsonl(tmp_path / "t.jsonl", lines)
    _check_bad_rows(path, [f"{path}:{n}" for n in range(2, len(lines) + 1, 2)], len(BAD_PROPENSITY), tmp_path)


def test_canonical_parquet_bad_propensities(tmp_path):
    from training.data import write_parquet

    good, _ = load_traffic(_jsonl(tmp_path / "t.jsonl", [json.dumps(_logged(i)) for i in range(8)]))
    path = write_parquet(good, tmp_path / "t.parquet")
    rows = pq.read_table(path).to_pylist()
    for i, value in zip((1, 3, 4, 6), (0.0, -1.0, 2.0, float("nan")), strict=True):
        rows[i]["outcomes"][0]["propensity"] = value
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    _check_bad_rows(path, [f"{path} row {i}" for i in (1, 3, 4, 6)], 4, tmp_path)


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_wide_table_propensity_column(tmp_path, suffix):
    import pandas as pd

    cells = [c for _, c in BAD_PROPENSITY.values() if c is not None]
    rows = [{"prompt": f"q{i}", "a": 1.0, "a|total_cost": 0.1, "a|propensity": p}
            for i, p in enumerate(["0.5", *cells, "1"])]
    frame = pd.DataFrame(rows)
    path = tmp_path / f"w.{suffix}"
    if suffix == "csv":
        frame.to_csv(path, index=False)
        locations = [f"{path}:{n}" for n in range(3, 3 + len(cells))]
    else:  # a Parquet table holds numbers: its bad values are the numeric ones
        frame = frame[frame["a|propensity"].isin(["0.5", "0", "-0.25", "1.5", "1"])]
        frame = frame.assign(**{"a|propensity": frame["a|propensity"].astype(float)}).reset_index(drop=True)
        frame.to_parquet(path)
        locations = [f"{path} row {n}" for n in (1, 2, 3)]
    assert detect_format(path) == "wide"
    table = _check_bad_rows(path, locations, 2, tmp_path)
    assert table.propensity[:, 0].tolist() == [0.5, 1.0]


def test_wide_table_empty_propensity_cell_is_not_logged_and_caught_by_the_mixed_check(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("prompt,a,a|total_cost,a|propensity\nq0,1,0.1,0.5\nq1,0,0.1,\nq2,1,0.1,0.25\n")
    with pytest.raises(DataError, match=r"w.csv: field 'propensity': 1 logged records .*first: .*w.csv:3"):
        load_traffic(path)
    table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert [r.prompt for r in table] == ["q0", "q2"] and report.missing_propensity == report.rejected == 1


def test_hf_long_form_propensity_mapping(tmp_path):
    import datasets

    values = [0.5, 0.0, 1.0, -1.0, 2.0, 0.25]
    datasets.Dataset.from_dict({
        "id": [f"r{i}" for i in range(6)], "q": [f"q{i}" for i in range(6)], "llm": ["a"] * 6,
        "score": [1.0] * 6, "p": values,
    }).save_to_disk(str(tmp_path / "ds"))
    columns = {"sample_id": "id", "prompt": "q", "model": "llm", "quality": "score", "propensity": "p"}
    ds = tmp_path / "ds"
    with pytest.raises(DataError) as info:
        load_traffic(ds, columns=columns)
    assert info.value.location == f"{ds} row 1" and info.value.field == "outcomes.a.propensity"
    table, report = load_traffic(ds, columns=columns, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert report.rejected == 3 and table.propensity[:, 0].tolist() == [0.5, 1.0, 0.25]
    assert [e["location"] for e in _quarantined(tmp_path / "q.jsonl")] == [f"{ds} row {n}" for n in (1, 3, 4)]


def _decision_line(rid, model="a", chosen=None, **extra):
    return {"type": "decision", "time": "2026-01-02T03:04:05.000Z", "request_id": rid, "prompt": f"p {rid}",
            "chosen": chosen or model, "model": model, "status": "ok", "fallbacks": [], "cost_usd": 1e-5,
            **extra}


def test_a_decision_log_that_is_missing_a_directory_or_badly_rated_says_which(tmp_path):
    """A missing log read as "the decision log is empty", a directory was an IsADirectoryError, and a decision
    whose only feedback line was refused (quality 5) was reported as having no feedback yet."""
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file"):
        load_traffic(tmp_path / "missing.jsonl", format="decisions")
    (tmp_path / "logs").mkdir()
    with pytest.raises(DataError, match=r"logs: a directory: give the log's file"):
        load_traffic(tmp_path / "logs", format="decisions")
    lines = [_decision_line("r1"), _decision_line("r2"), {"type": "feedback", "request_id": "r1", "quality": 5},
             {"type": "feedback", "request_id": "r2", "quality": 1.0}]
    log = _jsonl(tmp_path / "d.jsonl", [json.dumps(x) for x in lines])
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'feedback': the feedback for request r1 was refused "
                                        r"\(.*d\.jsonl:3: .*quality.*\); fix that line"):
        load_traffic(log)
    table, report = load_traffic(log, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert [r.sample_id for r in table] == ["r2"] and report.rejected == 2  # the decision and its bad rating


def test_decision_log_propensity_goes_on_the_answering_model(tmp_path):
    lines = [_decision_line("r1", propensity=0.2), _decision_line("r2", "b", propensity=1.0),
             _decision_line("r3", propensity=0), _decision_line("r4", propensity="high"),
             _decision_line("r5", "b", chosen="a", propensity=0.5),  # a fallback answered
             _decision_line("r6", propensity=1.5)]
    lines += [{"type": "feedback", "request_id": f"r{i}", "quality": 1.0} for i in range(1, 7)]
    log = _jsonl(tmp_path / "d.jsonl", [json.dumps(x) for x in lines])
    with pytest.raises(DataError, match=rf"d.jsonl:3: field 'propensity': {re.escape(RULE)}.*got 0"):
        load_traffic(log)
    table, report = load_traffic(log, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert report.format == "decisions" and report.rejected == 4
    by_id = {r.sample_id: r for r in table}
    assert by_id["r1"].outcomes["a"].propensity == 0.2 and by_id["r2"].outcomes["b"].propensity == 1.0
    entries = _quarantined(tmp_path / "q.jsonl")
    assert [(e["location"].rsplit(":", 1)[1], e["field"]) for e in entries] == [
        ("3", "propensity"), ("4", "propensity"), ("5", "propensity"), ("6", "propensity")]
    assert "answered by fallback 'b', not the chosen 'a'" in entries[2]["reason"]


def test_decision_log_without_propensity_is_unknown_and_mixing_is_caught(tmp_path):
    old = [_decision_line("r1"), {"type": "feedback", "request_id": "r1", "thumbs": "up", "quality": 1.0}]
    log = _jsonl(tmp_path / "d.jsonl", [json.dumps(x) for x in old])
    table, report = load_traffic(log)
    assert table[0].outcomes["a"].propensity is None and math.isnan(table.propensity[0, 0])
    assert table.summary()["propensity_coverage"] == {"a": 0.0} and report.missing_propensity == 0
    log = _jsonl(tmp_path / "d.jsonl", [json.dumps(x) for x in [
        *old, _decision_line("r2", propensity=0.5), {"type": "feedback", "request_id": "r2", "quality": 0.0}]])
    with pytest.raises(DataError, match=r"1 logged records .*first: .*d.jsonl:1 \(r1\)"):
        load_traffic(log)


def test_mixed_propensity_presence_names_the_gaps_and_quarantines_exactly_them(tmp_path):
    lines = [_logged(0), _logged(1, None), _logged(2, 0.1), _logged(3, None), _logged(4, None),
             _logged(5, None), _logged(6, 1.0),
             # full-information records (every model) need no propensity, and a preference has no outcome
             dict(GOOD, sample_id="full"), {"prompt": "arena", "preferences": [
                 {"model_a": "a", "model_b": "b", "winner": "tie"}]}]
    path = _jsonl(tmp_path / "t.jsonl", [json.dumps(x) for x in lines])
    with pytest.raises(DataError) as info:
        load_traffic(path)
    message = str(info.value)
    assert info.value.field == "propensity" and message.startswith(f"{path}: ")
    assert "4 logged records (one outcome each) carry no propensity" in message
    assert f"first: {path}:2 (s1), {path}:4 (s3), {path}:5 (s4)." in message
    assert "Log propensities for every decision, or drop the propensity column" in message
    table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert [r.sample_id for r in table] == ["s0", "s2", "s6", "full", None]
    assert (report.records, report.rejected, report.missing_propensity) == (5, 4, 4)
    entries = _quarantined(tmp_path / "q.jsonl")
    assert [e["location"] for e in entries] == [f"{path}:{n}" for n in (2, 4, 5, 6)]
    assert {e["field"] for e in entries} == {"outcomes.a.propensity"}
    assert [e["raw"]["sample_id"] for e in entries] == ["s1", "s3", "s4", "s5"]  # nothing lost


def test_decision_log_response_text_goes_on_the_answering_model(tmp_path):
    lines = [_decision_line("r1", response="The answer is (B)"), _decision_line("r2", "b"),
             _decision_line("r3", response=7)]  # not text: a broken line, quarantined with its field
    lines += [{"type": "feedback", "request_id": f"r{i}", "quality": 1.0} for i in range(1, 4)]
    log = _jsonl(tmp_path / "d.jsonl", [json.dumps(x) for x in lines])
    table, report = load_traffic(log, on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert report.rejected == 1
    assert [e["field"] for e in _quarantined(tmp_path / "q.jsonl")] == ["outcomes.a.response"]
    assert table.responses("a").tolist() == ["The answer is (B)", None]
    assert table.responses("b").tolist() == [None, None]


def test_a_refused_load_leaves_no_quarantine_file_and_an_earlier_one_untouched(tmp_path):
    """The quarantine file was opened (truncated) before reading: a load refused before any record (here a
    table without a prompt column) left an empty file and wiped the previous run's rejected records."""
    no_prompt = tmp_path / "t.csv"
    no_prompt.write_text("question,a,a|total_cost\nq,1,0.1\n", encoding="utf-8")
    quarantine = tmp_path / "q.jsonl"
    with pytest.raises(DataError):
        load_traffic(no_prompt, on_error="quarantine", quarantine=quarantine)
    assert not quarantine.exists()
    quarantine.write_text('{"location": "earlier run"}\n', encoding="utf-8")
    with pytest.raises(DataError):
        load_traffic(no_prompt, on_error="quarantine", quarantine=quarantine)
    assert quarantine.read_text(encoding="utf-8") == '{"location": "earlier run"}\n'
    good = tmp_path / "g.jsonl"
    good.write_text("".join(json.dumps(dict(GOOD, prompt=f"q{i}")) + "\n" for i in range(3)), encoding="utf-8")
    load_traffic(good, on_error="quarantine", quarantine=quarantine)
    assert quarantine.read_text(encoding="utf-8") == ""  # a completed load's file is this run's, even empty


def test_a_quarantine_path_that_cannot_be_written_is_refused_before_reading(tmp_path):
    """The file opens at the first rejected record; a path that cannot be one (here a directory) is still
    refused at the start, not after reading the whole input."""
    good = tmp_path / "g.jsonl"
    good.write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    (tmp_path / "qdir").mkdir()
    with pytest.raises(DataError, match=r"--quarantine .*qdir: cannot be written"):
        load_traffic(good, on_error="quarantine", quarantine=tmp_path / "qdir")
