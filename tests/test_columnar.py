"""The columnar table and the batch readers give exactly what records and the per-row readers give."""

from __future__ import annotations

import gc
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router_ml import DataError
from training.data import (
    Outcome,
    Preference,
    Record,
    TrafficTable,
    fast_jsonl,
    load_traffic,
    write_jsonl,
    write_parquet,
)
from training.data.batches import row_batches
from training.data.columns import concat, is_blank
from training.data.fast_jsonl import jsonl_batches
from training.data.fast_parquet import parquet_batches
from training.data.loader import quarantine_line
from training.data.readers import read_jsonl, read_parquet
from training.data.spill import SpilledText

ROOT = Path(__file__).resolve().parents[1]
MATRICES = ("quality", "cost", "propensity", "input_tokens", "output_tokens", "latency_s")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--n", "1500", "--seed", "5",
                    "--out-dir", str(out)], check=True, capture_output=True)
    jsonl = out / "traffic.jsonl"
    records = [row.record for row in read_jsonl(jsonl)]
    return jsonl, write_parquet(TrafficTable(records), out / "traffic.parquet"), records


def _same(table: TrafficTable, expected: TrafficTable) -> None:
    assert table.models == expected.models and len(table) == len(expected)
    for name in MATRICES:
        np.testing.assert_array_equal(getattr(table, name), getattr(expected, name), err_msg=name)
    assert list(table.texts) == list(expected.texts)
    assert table.records == expected.records
    assert table.fingerprint() == expected.fingerprint()
    assert table == expected


def _mixed_records() -> list[Record]:
    """Full-information, logged (one model, a propensity), chat and arena records side by side."""
    full = [Record(prompt=f"full {i} ünï", sample_id=f"f{i}", task=["law", "code"][i % 2],
                   timestamp="2026-01-02T03:04:05+00:00", metadata={"src": f"s{i % 3}", "n": [i, {"x": 0.1}]},
                   outcomes={m: Outcome(quality=(i + j) % 3 / 2, cost=0.001 * j, input_tokens=10 + i,
                                        output_tokens=j * 7, latency_s=0.5) for j, m in enumerate("cab")})
            for i in range(12)]
    logged = [Record(prompt=f"logged {i}", sample_id=f"l{i}",
                     outcomes={"bd"[i % 2]: Outcome(quality=1.0, cost=0.01, propensity=0.25 + i / 40)})
              for i in range(9)]
    chat = [Record(messages=({"role": "system", "content": "be brief"}, {"role": "user", "content": f"hi {i}"}),
                   outcomes={"a": Outcome(quality=0.5), "c": Outcome(quality=0.0, cost=0.0)}) for i in range(3)]
    arena = [Record(prompt="arena", preferences=(Preference("a", "e", "tie"),))]
    return full[:4] + logged[:3] + chat + full[4:8] + arena + logged[3:] + full[8:]


def test_demo_data_loads_into_the_table_records_build(demo):
    jsonl, parquet, records = demo
    expected = TrafficTable(records)
    for path in (jsonl, parquet):
        table, report = load_traffic(path)
        _same(table, expected)
        assert report.rejected == 0 and table.summary() == expected.summary()


def test_mixed_full_and_logged_data_round_trips_through_both_formats(tmp_path):
    records = _mixed_records()
    expected = TrafficTable(records)
    assert {"e"} <= set(expected.models) and expected.summary()["chat_records"] == 3
    for name, writer in (("t.jsonl", write_jsonl), ("t.parquet", write_parquet)):
        loaded, _ = load_traffic(writer(expected, tmp_path / name))
        _same(loaded, expected)
        # the rebuilt records keep each record's outcome order: the written file is byte for byte the same
        again = writer(loaded, tmp_path / f"again-{name}")
        if name.endswith(".jsonl"):
            assert again.read_bytes() == (tmp_path / name).read_bytes()


@pytest.mark.parametrize("block", [700, 1 << 30])
def test_fast_batches_equal_the_per_row_reader(demo, block):
    jsonl, parquet, _ = demo
    row_path = concat([b.columns for b in row_batches(read_jsonl(jsonl))])
    fast = [b for b in jsonl_batches(jsonl, block_bytes=block)]
    assert len(fast) > 100 if block == 700 else len(fast) == 1
    models = row_path.first_appearance_order()
    assert concat([b.columns for b in fast]).digest(models) == row_path.digest(models)
    parquet_fast = concat([b.columns for b in parquet_batches(parquet, batch_rows=block // 10)])
    assert parquet_fast.digest(models) == row_path.digest(models)
    parquet_rows = concat([b.columns for b in row_batches(read_parquet(parquet))])
    assert parquet_rows.digest(models) == row_path.digest(models)


def _expected_quarantine(rows) -> str:
    return "".join(quarantine_line(r.location, r.error.field, r.error.reason, r.raw) for r in rows if r.error)


BAD_LINES = [
    {"prompt": "x", "outcomes": {"a": {"quality": 1.5}}},
    {"prompt": "x", "outcomes": {"a": {"quality": 1, "cost": -2}}},
    {"prompt": "x", "outcomes": {"a": {"quality": 1, "propensity": 0}}},
    {"prompt": "x", "outcomes": {"a": {"quality": True, "input_tokens": -1}}},
    {"prompt": " ", "outcomes": {"a": {"quality": 1}}},
    {"prompt": "x", "timestamp": "yesterday", "outcomes": {"a": {"quality": 1}}},
    {"prompt": "x", "outcomes": {"a": {"quality": 1, "latency_s": -1.0}}},
]


@pytest.mark.parametrize("block", [None, 900])
def test_a_bad_row_inside_a_valid_batch_is_quarantined_as_before(demo, tmp_path, block, monkeypatch):
    _, _, records = demo
    lines = [json.dumps(r.to_dict()) for r in records[:60]]
    for i, bad in enumerate(BAD_LINES):
        lines.insert(5 + 7 * i, json.dumps(bad))
    lines.insert(30, '{"prompt": "cut')
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    if block:
        monkeypatch.setattr(fast_jsonl, "_BLOCK_BYTES", block)
    with pytest.raises(DataError) as info:
        load_traffic(path)
    assert info.value.location == f"{path}:6" and info.value.field == "outcomes.a.quality"
    qfile = tmp_path / "q.jsonl"
    table, report = load_traffic(path, on_error="quarantine", quarantine=qfile)
    assert qfile.read_text() == _expected_quarantine(read_jsonl(path))
    assert report.rejected == len(BAD_LINES) + 1
    _same(table, TrafficTable(records[:60]))


def test_a_bad_parquet_row_is_quarantined_as_before(demo, tmp_path):
    _, _, records = demo
    good = records[:40]
    bad = [Record(prompt="x", outcomes={"a": Outcome(quality=q, cost=c, propensity=p)})
           for q, c, p in ((1.5, None, None), (math.nan, None, None), (1.0, -1.0, None), (1.0, None, 0.0),
                           (1.0, math.inf, None))]
    mixed = good[:10] + bad[:2] + good[10:30] + bad[2:] + good[30:]
    path = write_parquet(TrafficTable(mixed), tmp_path / "t.parquet")
    with pytest.raises(DataError) as info:
        load_traffic(path)
    assert info.value.location == f"{path} row 10"
    qfile = tmp_path / "q.jsonl"
    table, report = load_traffic(path, on_error="quarantine", quarantine=qfile)
    assert qfile.read_text() == _expected_quarantine(read_parquet(path))
    assert report.rejected == len(bad)
    _same(table, TrafficTable(good))


def test_duplicates_merge_across_batches_in_first_appearance_order(tmp_path, monkeypatch):
    # long-form logged calls: one line per (prompt, model); model "z" first shows up in a merged line
    lines = [{"sample_id": f"s{i % 5}", "prompt": f"p{i % 5}", "outcomes": {m: {"quality": 1.0 if m == "z" else 0.5}}}
             for i, m in enumerate(["a"] * 5 + ["z"] * 5 + ["b"] * 5)]
    lines.insert(7, {"sample_id": "solo", "prompt": "q", "outcomes": {"b": {"quality": 0.0}}})
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    expected, report = load_traffic(path)
    assert expected.models == ("a", "z", "b") and len(expected) == 6 and report.merged_duplicates == 10
    assert expected[0].outcomes == {"a": Outcome(1.0 - 0.5), "z": Outcome(1.0), "b": Outcome(0.5)}
    monkeypatch.setattr(fast_jsonl, "_BLOCK_BYTES", 150)
    table, report = load_traffic(path)
    _same(table, expected)
    assert report.merged_duplicates == 10
    conflict = path.with_name("c.jsonl")
    conflict.write_text(path.read_text() + json.dumps({"sample_id": "s1", "prompt": "p1",
                                                       "outcomes": {"a": {"quality": 0.0}}}) + "\n")
    with pytest.raises(DataError, match=r"c.jsonl:17: field 'outcomes.a': duplicate sample_id 's1' .*"
                                        r"first seen at .*c.jsonl:2\)"):
        load_traffic(conflict)


def test_exclusions_drop_rows_from_a_fast_batch(demo):
    jsonl, parquet, records = demo
    drop = {records[3].text, records[100].text.upper()}
    for path in (jsonl, parquet):
        table, report = load_traffic(path, exclude=drop)
        keep = [r for r in records if r.text not in {records[3].text, records[100].text}]
        assert report.excluded == len(records) - len(keep)
        _same(table, TrafficTable(keep))


def test_table_api_reads_the_columns(demo):
    _, parquet, records = demo
    table, _ = load_traffic(parquet)
    assert table[-1] == records[-1] and [r.sample_id for r in table[2:5]] == [r.sample_id for r in records[2:5]]
    assert table.texts[1:3] == [records[1].text, records[2].text] and isinstance(table.texts[0], str)
    sub = table.subset(np.array([5, 2, 5]))
    assert sub.records == [records[5], records[2], records[5]] and sub.models == table.models
    assert table.group_values("task").tolist() == [r.task or "" for r in records]
    assert table.group_values("metadata.difficulty").tolist() == [str(r.metadata["difficulty"]) for r in records]
    j = table.models.index("frontier-xl")
    assert table.output_tokens[7, j] == records[7].outcomes["frontier-xl"].output_tokens
    narrow = TrafficTable(records[:4], models=["tiny-1b", "new-model"])
    assert narrow.quality.shape == (4, 2) and np.isnan(narrow.quality[:, 1]).all()
    assert narrow.subset([0]).records == [records[0]]  # outcomes of the other models are kept
    with pytest.raises(IndexError):
        table[len(records)]


def test_num_proc_gives_the_one_process_result(demo, tmp_path, monkeypatch):
    from training.data import parallel

    _, _, records = demo
    lines = [json.dumps(r.to_dict()) for r in records[:300]]
    for i, bad in enumerate(BAD_LINES):
        lines.insert(20 + 37 * i, json.dumps(bad))
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    parquet = write_parquet(TrafficTable(records[:300] + [Record(prompt="x", outcomes={"a": Outcome(2.0)})]
                                         + records[300:]), tmp_path / "t.parquet", batch_size=64)
    monkeypatch.setattr(parallel, "_SHARD_BYTES", 40_000)
    monkeypatch.setattr(parallel, "_SHARD_ROWS", 100)
    assert len(parallel._jsonl_shards(jsonl, 40_000)) > 4 and len(parallel._parquet_shards(parquet, 100)) > 4
    for path in (jsonl, parquet):
        results = []
        for num_proc in (1, 2):
            qfile = tmp_path / f"q{num_proc}.jsonl"
            table, report = load_traffic(path, on_error="quarantine", quarantine=qfile, num_proc=num_proc)
            results.append((table, {**report.to_dict(), "quarantine": None}, qfile.read_text()))
            with pytest.raises(DataError) as info:
                load_traffic(path, num_proc=num_proc)
            results[-1] += (str(info.value),)
        (one, *rest_one), (two, *rest_two) = results
        _same(two, one)
        assert rest_two == rest_one and rest_one[1].count("\n") == (len(BAD_LINES) if path == jsonl else 1)


def test_cli_inspect_takes_num_proc_and_reports_the_same(demo):
    _, parquet, records = demo
    outs = [subprocess.run([sys.executable, "-m", "router_ml.cli", "data", "inspect", str(parquet), "--json",
                            *extra], capture_output=True, text=True, timeout=300, check=True).stdout
            for extra in ((), ("--num-proc", "2"))]
    assert outs[0] == outs[1] and json.loads(outs[0])["records"] == len(records)


def test_repetitive_columns_are_dictionary_encoded_and_read_back_the_same(tmp_path):
    records = [Record(prompt=f"p{i}", task=None if i % 3 else "law", metadata={"src": "ab"[i % 2]} if i % 5 else {},
                      outcomes={"m": Outcome(quality=1.0, output_tokens=i)}) for i in range(1500)]
    expected = TrafficTable(records)
    table, _ = load_traffic(write_parquet(expected, tmp_path / "t.parquet"))
    assert "dictionary" in str(table.columns.metadata.array.type) and "dictionary" in str(table.columns.task.array.type)
    assert table.columns.output_tokens.dtype == np.float32 and table.output_tokens.dtype == np.float64
    _same(table, expected)
    for field in ("task", "metadata.src", "metadata.none"):
        assert table.group_values(field).tolist() == expected.group_values(field).tolist()
    assert table.group_values("metadata.src").tolist()[:6] == ["", "b", "a", "b", "a", ""]
    assert table.summary() == expected.summary() and table.subset([0, 5, 3]).records == [records[i] for i in (0, 5, 3)]


def test_kept_rows_grow_in_place_across_batches_widening_a_column_when_needed(tmp_path, monkeypatch):
    # 6000 rows in ~60 batches: the matrices grow past their first allocation, a model appears late,
    # and a token count too big for float32 arrives after float32 batches
    records = [Record(prompt=f"p{i}", outcomes={("m" if i < 5000 else "late"): Outcome(
        quality=0.5, output_tokens=(2**25 + 1 if i == 5500 else i))}) for i in range(6000)]
    path = write_jsonl(records, tmp_path / "t.jsonl")
    monkeypatch.setattr(fast_jsonl, "_BLOCK_BYTES", 5000)
    table, _ = load_traffic(path)
    assert table.columns.output_tokens.dtype == np.float64 and table.models == ("m", "late")
    _same(table, TrafficTable(records))
    assert table[5500].outcomes["late"].output_tokens == 2**25 + 1


def test_without_orjson_the_stdlib_parser_gives_the_same_result(demo, tmp_path, monkeypatch):
    _, _, records = demo
    odd = ['{"prompt": "x", "outcomes": {"a": {"quality": 1, "propensity": NaN}}}',
           '{"prompt": "x", "outcomes": {"a": {"quality": 1, "cost": NaN}}}',
           '{"prompt": "x", "outcomes": {"a": {"quality": Infinity}}}',
           '{"prompt": "\\udc80x", "outcomes": {"a": {"quality": 1}}}',
           '{"prompt": "x", "metadata": {"big": 123456789012345678901234567890}, "outcomes": {"a": {"quality": 1}}}']
    lines = [json.dumps(r.to_dict()) for r in records[:50]] + odd
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines) + "\n")
    results = []
    for loads in (fast_jsonl._loads(), lambda line: json.loads(line.decode("utf-8"))):
        monkeypatch.setattr(fast_jsonl, "_loads", lambda loads=loads: loads)
        qfile = tmp_path / "q.jsonl"
        table, report = load_traffic(path, on_error="quarantine", quarantine=qfile)
        assert qfile.read_text() == _expected_quarantine(read_jsonl(path))
        results.append((table, report.rejected))
    _same(results[1][0], results[0][0])
    assert results[0][1] == results[1][1] == 3
    assert results[0][0][-1].metadata["big"] == 123456789012345678901234567890
    assert results[0][0][-2].outcomes["a"].cost is None


def test_a_table_is_written_to_parquet_from_its_columns_exactly_as_from_its_records(demo, tmp_path):
    import pyarrow.parquet as pq

    _, parquet, records = demo
    for table in (load_traffic(parquet)[0], TrafficTable(_mixed_records())):
        from_columns = write_parquet(table, tmp_path / "columns.parquet", batch_size=500)
        from_records = write_parquet(list(table), tmp_path / "records.parquet", batch_size=500)
        a, b = pq.read_table(from_columns), pq.read_table(from_records)
        assert a.equals(b) and a.schema.equals(b.schema, check_metadata=True)
        _same(load_traffic(from_columns)[0], table)


def test_gzipped_jsonl_streams_through_the_fast_path(demo, tmp_path):
    import gzip

    jsonl, _, records = demo
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl.read_bytes() + b'{"prompt": "x", "outcomes": {}}\n'))
    for num_proc in (1, 2):  # a compressed file is not cut into shards: one process reads it
        table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q.jsonl", num_proc=num_proc)
        _same(table, TrafficTable(records))
        assert report.rejected == 1
        assert (tmp_path / "q.jsonl").read_text() == _expected_quarantine(read_jsonl(path))


def test_empty_tables_and_selections_keep_their_shape():
    records = [Record(prompt="p", outcomes={"a": Outcome(1.0)}), Record(prompt="q", outcomes={"b": Outcome(0.0)})]
    assert TrafficTable([]).quality.shape == (0, 0) and TrafficTable([], models=["a"]).quality.shape == (0, 1)
    empty = TrafficTable(records).subset([])
    assert (empty.models, empty.quality.shape, list(empty), empty.texts[:]) == (("a", "b"), (0, 2), [], [])
    assert empty.summary()["records"] == 0 and empty.group_values("task").tolist() == []
    assert TrafficTable(records)[::-1].records == records[::-1]


def test_a_rejected_row_keeps_no_frames_alive(tmp_path):
    # a traceback's frames would hold the reader's whole batch as long as the error is kept
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "x", "outcomes": {"a": {"quality": "high"}}}\n'
                    '{"prompt": "x", "outcomes": {"a": {"quality": 1, "cost": -1}}}\n')
    errors = [row.error for row in read_jsonl(path)]
    assert [e.field for e in errors] == ["outcomes.a.quality", "outcomes.a.cost"]
    assert all(e.__traceback__ is None and e.__context__ is None and e.__cause__ is None for e in errors)


def _spill_fds() -> int:
    """Open descriptors of spill files in this process (Linux: /proc/self/fd; -1 elsewhere)."""
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        return -1
    names = []
    for fd in fds.iterdir():
        try:
            names.append(os.readlink(fd))
        except OSError:
            continue
    return sum("router-ml-texts-" in name for name in names)


@pytest.fixture
def spill_dir(tmp_path, monkeypatch):
    path = tmp_path / "spill"
    monkeypatch.setenv("ROUTER_ML_SPILL_DIR", str(path))
    return path


def test_a_table_with_its_texts_on_disk_equals_the_in_memory_one(demo, tmp_path, spill_dir, monkeypatch):
    jsonl, parquet, records = demo
    expected = TrafficTable(records)
    monkeypatch.setattr(fast_jsonl, "_BLOCK_BYTES", 30_000)  # texts pass the budget after a few batches
    for path in (jsonl, parquet):
        table, _ = load_traffic(path, text_memory_mb=0.05)
        texts = table.texts
        assert isinstance(texts, SpilledText) and not any(spill_dir.iterdir())  # unlinked while open
        _same(table, expected)
        assert table.summary() == expected.summary()
        assert texts[-1] == records[-1].text and texts[3] == records[3].text
        assert texts[5:9] == [r.text for r in records[5:9]] and texts[10:2:-3] == [r.text for r in records[10:2:-3]]
        assert texts[np.array([7, 0, 7])] == [records[i].text for i in (7, 0, 7)]
        with pytest.raises(IndexError):
            texts[len(records)]
        a = write_jsonl(table, tmp_path / "spilled.jsonl")
        assert a.read_bytes() == write_jsonl(expected, tmp_path / "memory.jsonl").read_bytes()
        a = write_parquet(table, tmp_path / "spilled.parquet", batch_size=300)
        assert a.read_bytes() == write_parquet(expected, tmp_path / "memory.parquet", batch_size=300).read_bytes()
        small = table.subset([4, 1, 4])  # fits the budget: its texts come into memory
        assert not isinstance(small.texts, SpilledText) and small.records == [records[i] for i in (4, 1, 4)]
        big = table[::-1]  # does not: stays on disk, as rows of the same file
        assert isinstance(big.texts, SpilledText) and big.records == records[::-1]
        _same(big.subset(np.arange(len(records))[::-1]), expected)
        copy = pickle.loads(pickle.dumps(texts))  # another process gets the texts themselves
        assert not isinstance(copy, SpilledText) and copy == texts


def test_spilled_texts_survive_merges_and_dropped_rows(tmp_path, spill_dir, monkeypatch):
    lines = [{"sample_id": f"s{i % 40}", "prompt": f"prompt {i % 40} " + "é" * (i % 40 % 7),
              "outcomes": {"ab"[i // 40]: {"quality": 0.5, "propensity": 0.5}}} for i in range(80)]
    lines.insert(50, {"sample_id": "lacks", "prompt": "no propensity", "outcomes": {"a": {"quality": 1.0}}})
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    monkeypatch.setattr(fast_jsonl, "_BLOCK_BYTES", 400)
    results = []
    for budget in (math.inf, 0):
        table, report = load_traffic(path, on_error="quarantine", quarantine=tmp_path / "q.jsonl",
                                     text_memory_mb=budget)
        assert isinstance(table.texts, SpilledText) == (budget == 0)
        results.append((table, report.to_dict(), (tmp_path / "q.jsonl").read_text()))
    (spilled, *rest_spilled), (memory, *rest_memory) = results[1], results[0]
    _same(spilled, memory)
    assert rest_spilled == rest_memory and rest_memory[0]["merged_duplicates"] == 40
    assert rest_memory[0]["missing_propensity"] == 1 and len(memory) == 40


def test_spill_files_go_when_the_table_does(demo, spill_dir, monkeypatch):
    jsonl, _, records = demo
    before = _spill_fds()
    table, _ = load_traffic(jsonl, text_memory_mb=0)
    sub = table[10:]
    assert isinstance(sub.texts, SpilledText) and not any(spill_dir.iterdir())
    assert before < 0 or _spill_fds() == before + 1  # one file, shared by the table and its selection
    del table
    gc.collect()
    assert sub.texts[0] == records[10].text  # the selection keeps the file open
    del sub
    gc.collect()
    assert before < 0 or _spill_fds() == before
    assert not any(spill_dir.iterdir())
    table, _ = load_traffic(jsonl)  # the default budget (1 GB) keeps demo-sized texts in memory
    assert not isinstance(table.texts, SpilledText)
    with pytest.raises(DataError, match="text_memory_mb"):
        load_traffic(jsonl, text_memory_mb=-1)
    monkeypatch.setenv("ROUTER_ML_TEXT_MEMORY_MB", "0")  # how a command without the option spills
    assert isinstance(load_traffic(jsonl)[0].texts, SpilledText)
    monkeypatch.setenv("ROUTER_ML_TEXT_MEMORY_MB", "lots")
    with pytest.raises(DataError, match="ROUTER_ML_TEXT_MEMORY_MB"):
        load_traffic(jsonl)


def test_a_field_no_record_carries_takes_no_memory(demo):
    _, parquet, records = demo
    table, _ = load_traffic(parquet)
    assert is_blank(table.columns.propensity) and not is_blank(table.columns.quality)
    assert table.propensity.shape == table.quality.shape and np.isnan(table.propensity).all()
    assert is_blank(table.subset([3, 1]).columns.propensity) and is_blank(table.columns.with_models(["x"]).propensity)
    expected = TrafficTable(records[:5] + _mixed_records())
    mixed, _ = load_traffic(write_jsonl(expected, Path(parquet).with_name("m.jsonl")))
    assert not is_blank(mixed.columns.propensity)
    _same(mixed, expected)


# --- RouterBench-style wide Parquet: column by column, the same as row by row -------------------------

def _wide_table(n: int = 90):
    """A wide table with every column kind the fast reader takes, bad rows spread over it, a model with no
    value in the first rows, a priced model whose cost comes from its tokens, and repeated sample ids."""
    import pyarrow as pa

    rng = np.random.default_rng(3)
    qa = rng.random(n)
    qa[7::7] = np.nan
    cols = {
        "sample_id": pa.array([i if i % 11 else None for i in range(n)], pa.int64()),
        # RouterBench writes prompts and answers as str(list): chat records and answer texts on both paths
        "prompt": [str(["Be brief.", f"question {i} 'ünï'"]) if i % 8 == 3 else f"question {i} ünï" for i in range(n)],
        "category": pa.array([["law", "maths", None][i % 3] for i in range(n)]).dictionary_encode(),  # categorical
        "src": [f"set{i % 4}" for i in range(n)],
        "when": pa.array([np.datetime64("2026-01-01T00:00:00") + np.timedelta64(i, "h") for i in range(n)]),
        "tags": [[f"t{i}", "x"] if i % 2 else None for i in range(n)],
        "a": qa,
        "a|total_cost": rng.random(n) / 100,
        "a|input_tokens": pa.array([10 + i if i % 5 else None for i in range(n)], pa.int64()),
        "a|propensity": [0.5 if i % 3 else None for i in range(n)],
        "a|response": [None if i % 4 == 0 else ("" if i % 4 == 1 else str([f"answer {i}"]) if i % 8 == 2
                                                 else f"answer {i}") for i in range(n)],
        "a|judge": rng.random(n),
        "b": pa.array([i % 2 if i % 6 else None for i in range(n)], pa.int64()),
        "b|total_cost": [float("nan") if i % 9 == 0 else 0.002 for i in range(n)],
        "b|output_tokens": [float(i) for i in range(n)],
        "c": pa.array([bool(i % 3) for i in range(n)]),
        "c|latency": [0.1 * i for i in range(n)],
        "c|input_tokens": [3] * n,
        "d": [None if i < 40 else 0.25 for i in range(n)],
        "d|total_cost": [0.5] * n,
    }
    bad = {5: ("a", 1.5), 12: ("a|total_cost", -1.0), 18: ("a|total_cost", float("inf")), 23: ("a|propensity", 0.0),
           29: ("prompt", "   "), 31: ("prompt", None), 37: ("b|output_tokens", 2.5), 44: ("b|output_tokens", -3.0),
           52: ("c|latency", -0.5), 61: ("a|propensity", 1.5)}
    table = pa.table(cols)
    data = table.to_pydict()
    for i, (name, value) in bad.items():
        data[name][i] = value
    for name in ("a", "b", "c", "d"):  # rows 47 and 48 carry no outcome at all
        data[name][47] = data[name][48] = None
    for name in data:  # the same record twice: merged
        data[name][70] = data[name][20]
    return pa.table(data, schema=table.schema), sorted([*bad, 47, 48])


def test_wide_parquet_batches_equal_the_per_row_reader(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from training.data import fast_wide
    from training.data.readers import PriceCatalog
    from training.data.tabular import read_wide

    table, bad = _wide_table()
    path = tmp_path / "w.parquet"
    pq.write_table(table, path)
    prices = PriceCatalog({"c": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}})
    for catalog in (None, prices):
        row_path = list(row_batches(read_wide(path, prices=catalog)))
        expected = concat([b.columns for b in row_path])
        models = expected.first_appearance_order()
        for rows in (7, 16, 1 << 20):
            batches = list(fast_wide.wide_batches(path, catalog, batch_rows=rows))
            assert all(b.locations.strings is None for b in batches)  # the column path, not the row path
            assert concat([b.columns for b in batches]).digest(models) == expected.digest(models)
            assert [pos + k * rows for k, b in enumerate(batches) for pos, _ in b.errors] == bad
        assert len(expected) == len(table) - len(bad)
    assert expected.first_appearance_order() == ("a", "c", "b", "d")  # b from row 1, d from row 40
    # the loader: strict mode names the first bad row; quarantine lines, counts and the table as before
    with pytest.raises(DataError) as info:
        load_traffic(path)
    assert info.value.location == f"{path} row 5" and info.value.field == "outcomes.a.quality"
    for rows in (7, 1 << 20):
        monkeypatch.setattr(fast_wide, "_ROW_BATCH", rows)
        qfile = tmp_path / f"q{rows}.jsonl"
        loaded, report = load_traffic(path, on_error="quarantine", quarantine=qfile, prices=prices)
        assert qfile.read_text() == _expected_quarantine(read_wide(path, prices=prices))
        assert report.rejected == len(bad) and report.merged_duplicates == 1
        assert report.ignored_columns == ["a|judge"]
        kept = [row.record for row in read_wide(path, prices=prices) if row.error is None]
        assert loaded.records == [r for i, r in enumerate(kept) if r.sample_id != "20" or i == kept.index(
            next(x for x in kept if x.sample_id == "20"))]
    by_id = {r.sample_id: r for r in loaded.records}
    assert by_id["3"].prompt is None
    assert [m["content"] for m in by_id["3"].messages] == ["Be brief.", "question 3 'ünï'"]
    assert by_id["3"].text == "question 3 'ünï'" and by_id["2"].outcomes["a"].response == "answer 2"
    assert by_id["4"].prompt == "question 4 ünï" and by_id["6"].outcomes["a"].response == "answer 6"
    first = loaded.records[1]
    assert first.metadata == {"src": "set1", "when": "2026-01-01T01:00:00", "tags": ["t1", "x"]}
    assert first.outcomes["a"].response == "" and first.outcomes["c"].cost == 3 / 1e6
    assert loaded.records[0].sample_id is None and first.sample_id == "1" and first.task == "maths"


def test_wide_files_the_column_checks_do_not_cover_take_the_row_path_whole(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.data.fast_wide import wide_batches
    from training.data.tabular import read_wide

    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"prompt": ["p0", "p1"], "m": ["1", "true"], "m|total_cost": [0.1, 0.2]}),
                   tmp_path / "d" / "a.parquet")  # a quality stored as text
    (tmp_path / "d" / "b.csv").write_text("prompt,m,m|total_cost\np2,0,0.3\np3,lots,0.4\n")
    pq.write_table(pa.table({"prompt": ["p4"], "m": [0.5], "m|total_cost": [0.5]}), tmp_path / "d" / "c.parquet")
    batches = list(wide_batches(tmp_path / "d"))
    row_path = list(row_batches(read_wide(tmp_path / "d")))
    assert concat([b.columns for b in batches]).digest(("m",)) == concat([b.columns for b in row_path]).digest(("m",))
    assert [row.location for b in batches for _, row in b.errors] == [f"{tmp_path / 'd' / 'b.csv'}:3"]
    assert [b.locations.strings is None for b in batches] == [False, False, True]  # only c.parquet by columns
    table, _ = load_traffic(tmp_path / "d", on_error="quarantine", quarantine=tmp_path / "q.jsonl")
    assert table.quality[:, 0].tolist() == [1.0, 1.0, 0.0, 0.5]
