"""`router-ml data ...` as a user runs it: a real process, real files, exit codes and stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "router_ml.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_inspect_json_prints_exactly_one_object(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "outcomes": {"m1": {"quality": 1, "cost": 0.5}, "m2": {"quality": 0}}}\n'
                    '{"prompt": "b", "outcomes": {"m1": {"quality": 0, "cost": 1.5}}}\n')
    out = run("data", "inspect", path, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert out.stdout.count("\n") == 1
    assert info["records"] == 2 and info["models"] == ["m1", "m2"] and info["rejected"] == 0
    assert info["coverage"] == {"m1": 1.0, "m2": 0.5}
    assert info["mean_quality"] == {"m1": 0.5, "m2": 0.0}
    assert info["mean_cost"] == {"m1": 1.0, "m2": None}


def test_inspect_strict_error_goes_to_stderr_with_place(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "outcomes": {"m": {"quality": 1}}}\n'
                    '{"prompt": "b", "outcomes": {"m": {"quality": 1, "cost": -2}}}\n')
    out = run("data", "inspect", path, "--json")
    assert out.returncode == 1 and out.stdout == ""
    assert f"{path}:2: field 'outcomes.m.cost'" in out.stderr


def test_inspect_quarantine_mode_counts(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "outcomes": {"m": {"quality": 1}}}\nnot json\n')
    out = run("data", "inspect", path, "--json", "--on-error", "quarantine", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["records"], info["rejected"]) == (1, 1)
    qfile = tmp_path / "t.jsonl.quarantine.jsonl"
    assert info["quarantine"] == str(qfile) and json.loads(qfile.read_text())["raw"] == "not json"


def test_inspect_human_summary_and_usage_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "outcomes": {"m": {"quality": 1}}}\n')
    out = run("data", "inspect", path)
    assert out.returncode == 0 and "records: 1" in out.stdout and "mean quality" in out.stdout
    assert run("data", "inspect", tmp_path / "missing.jsonl").returncode == 1
    assert run("data", "frobnicate").returncode == 2
    assert run("data", "inspect", path, "--column", "oops").returncode == 1


def test_convert_round_trip(tmp_path):
    src = tmp_path / "w.csv"
    src.write_text("prompt,m,m|total_cost\nq1,1,0.1\nq2,0,0.2\n")
    out = run("data", "convert", src, "--out", tmp_path / "c.parquet")
    assert out.returncode == 0, out.stderr
    back = json.loads(run("data", "inspect", tmp_path / "c.parquet", "--json").stdout)
    assert back["records"] == 2 and back["mean_cost"] == {"m": pytest.approx(0.15)}


def test_prices_fill_missing_costs(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "outcomes": {"m": {"quality": 1, "input_tokens": 1000, "output_tokens": 0}}}\n')
    prices = tmp_path / "p.toml"
    prices.write_text('[m]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n')
    info = json.loads(run("data", "inspect", path, "--json", "--prices", prices).stdout)
    assert info["mean_cost"] == {"m": pytest.approx(0.002)}
