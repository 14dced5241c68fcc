"""scripts/auto_selection_study.py: its choice rules on known selections, and one forced-pick run."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("auto_selection_study", ROOT / "scripts" / "auto_selection_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def _run(test_aiq: float, candidates: dict) -> dict:
    return {"test": {"aiq": test_aiq, "baselines": {"knn": {"aiq": 0.70}, "logreg": {"aiq": 0.71}}},
            "selection": {"candidates": candidates}}


def test_each_rule_picks_from_the_same_selection_and_is_scored_against_the_best_baseline():
    # seed 0: knn leads the ensemble by 0.003 held-out AIQ but beats it on only 60% of resamples
    close = {"ensemble": {"val_aiq": 0.800}, "knn": {"val_aiq": 0.803, "beats_ensemble": 0.60},
             "logreg": {"val_aiq": 0.790}, "mlp": {"val_aiq": 0.780}, "mf": {"val_aiq": 0.770}}
    # seed 1: logreg leads by 0.010 and beats it on 99%
    clear = {"ensemble": {"val_aiq": 0.800}, "knn": {"val_aiq": 0.790}, "mlp": {"val_aiq": 0.780},
             "logreg": {"val_aiq": 0.810, "beats_ensemble": 0.99}, "mf": {"val_aiq": 0.770}}
    tests = {"ensemble": 0.72, "knn": 0.70, "logreg": 0.73, "mlp": 0.69, "mf": 0.68}
    results = {("t", 0): {p: _run(a, close) for p, a in tests.items()},
               ("t", 1): {p: _run(a, clear) for p, a in tests.items()}}
    rules = study.summarize(results)
    default = rules["confidence>=0.95 (default)"]
    assert default["picks"] == {"ensemble": 1, "logreg": 1}
    assert default["mean_vs_best_baseline"] == pytest.approx(((0.72 - 0.71) + (0.73 - 0.71)) / 2)
    assert rules["margin 0.002"]["picks"] == {"knn": 1, "logreg": 1}
    assert rules["margin 0.002"]["runs_below"] == 1  # knn's 0.70 is below the logreg baseline's 0.71
    assert rules["best held-out"]["picks"] == {"knn": 1, "logreg": 1}
    assert rules["always ensemble"]["per_table"]["t"] == pytest.approx(0.01)


def test_a_forced_pick_run_keeps_its_json_and_drops_its_artifact(tmp_path):
    rng = np.random.default_rng(0)
    n, models = 160, ("cheap", "dear")
    frame = pd.DataFrame({"prompt": [f"question {i} about topic {i % 7}" for i in range(n)]})
    for j, model in enumerate(models):
        frame[model] = (rng.random(n) < 0.5 + 0.3 * j).astype(float)
        frame[f"{model}|total_cost"] = 0.001 * (1 + 9 * j)
    table = tmp_path / "tiny.parquet"
    frame.to_parquet(table)
    out = study.run_one(table, 0, "knn", tmp_path)
    report = json.loads(out.read_text())
    assert out.name == "tiny_s0_knn.json" and not (tmp_path / "tiny_s0_knn").exists()
    assert report["selection"]["chosen"] == "knn" and report["selection"]["picked_by"] == "router.auto_pick"
    assert {"knn", "logreg"} <= set(report["test"]["baselines"])
    assert study.run_one(table, 0, "knn", tmp_path) == out  # finished runs are skipped


def test_the_quirk_tables_hold_what_they_say_and_load_as_the_wide_reader_reads_them(tmp_path):
    """``build_quirk_tables``: nine seeded tables from an MMLU-Pro-29-shaped file, each what its name says,
    each loaded by ``load_traffic`` with nothing rejected, and the same files when built again."""
    from training.data import load_traffic

    rng = np.random.default_rng(0)
    n, models = 700, [f"model-{j:02d}-x" for j in range(29)]
    frame = pd.DataFrame({"sample_id": [f"q{i}" for i in range(n)],
                          "prompt": [f"question {i} about topic {i % 9}, isn't it" for i in range(n)],
                          "eval_name": [f"subject {i % 5}" for i in range(n)], "src": "s"})
    for j, m in enumerate(models):
        frame[m] = (rng.random(n) < 0.2 + 0.02 * j).astype(float)
        frame.loc[rng.random(n) < 0.02, m] = np.nan  # MMLU-Pro-29 misses a few outcomes
        frame[f"{m}|total_cost"] = 1e-5 * (1 + j) * (1 + rng.random(n))
    shared = tmp_path / "shared"
    (shared / "mmlu-pro-29").mkdir(parents=True)
    frame.to_parquet(shared / "mmlu-pro-29" / "mmlu_pro_29.parquet")
    paths = study.build_quirk_tables(shared, tmp_path / "tables")
    assert set(paths) == {"rb_quirks", "continuous3", "dominant", "two_cheap_better", "missing10", "free_model",
                          "dups", "m26_200", "names_long"} == set(study.QUIRKS)
    t = {name: pd.read_parquet(p) for name, p in paths.items()}
    quirks = t["rb_quirks"]
    assert all(p.startswith("['") and p.endswith("']") for p in quirks.prompt)
    assert {"oracle_model_to_route_to", f"{models[0]}|model_response"} <= set(quirks.columns)
    graded = t["continuous3"][models[3:6]].to_numpy()
    assert np.allclose(graded * 10, np.round(graded * 10)) and len(np.unique(graded)) > 2
    assert (t["dominant"][models[0]] == 1.0).all()
    a, b = models[:2]
    two = t["two_cheap_better"]
    assert (two[a].mean() > two[b].mean()) == (two[f"{a}|total_cost"].mean() < two[f"{b}|total_cost"].mean())
    assert 0.07 < t["missing10"][models[5:13]].isna().to_numpy().mean() < 0.15
    assert (t["free_model"][f"{models[8]}|total_cost"] == 0).all()
    assert len(t["dups"]) == 360 and t["dups"].prompt.nunique() == 300 and t["dups"].sample_id.nunique() == 360
    assert len(t["m26_200"]) == 200 and sum(c in models for c in t["m26_200"].columns) == 26
    long = t["names_long"]
    assert {f"org/{m.replace('-', ' ')}" for m in models[10:14]} <= set(long.columns)
    assert long.prompt.str.len().max() > 30 * long.prompt.str.len().median()
    for name, path in paths.items():
        table, report = load_traffic(path)
        assert report.rejected == 0 and len(table) == len(t[name]), name
        assert len(table.models) == sum(f"{c}|total_cost" in t[name].columns for c in t[name].columns), name
    again = study.build_quirk_tables(shared, tmp_path / "again")
    assert all(pd.read_parquet(again[name]).equals(t[name]) for name in paths)


def test_an_unknown_table_is_refused_before_any_table_is_built(tmp_path, capsys):
    """A typo in --tables once came out only after the seven tables (and the nine more) had been written."""
    with pytest.raises(SystemExit) as exit_:
        study.study_setup("study", ["--shared", str(tmp_path / "no-shared"), "--out", str(tmp_path / "out"),
                                    "--tables", "mp29_300,rl600"])
    assert exit_.value.code == 2
    assert "--tables: unknown ['rl600']; choose from ['continuous3', " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
