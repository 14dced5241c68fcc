"""scripts/auto_tuning_study.py: its runs reproduce ``router-ml train``'s split, baselines and selection scores."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pandas as pd
import pytest

from .conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # the study imports the selection study's tables
spec = importlib.util.spec_from_file_location("auto_tuning_study", ROOT / "scripts" / "auto_tuning_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)
spec = importlib.util.spec_from_file_location("auto_selection_study", ROOT / "scripts" / "auto_selection_study.py")
selection_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(selection_study)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(0)
    n, models = 160, ("cheap", "mid", "dear")
    topic = np.arange(n) % 7
    frame = pd.DataFrame({"prompt": [f"question {i} about topic {t}" for i, t in enumerate(topic)],
                          "eval_name": [f"subject {t % 3}" for t in topic]})  # a group field: the groups candidate
    for j, model in enumerate(models):
        frame[model] = (rng.random(n) < 0.3 + 0.2 * j + 0.05 * (topic % 3)).astype(float)
        frame[f"{model}|total_cost"] = 0.001 * (1 + 4 * j)
    path = tmp_path_factory.mktemp("tuning") / "tiny.parquet"
    frame.to_parquet(path)
    return path


def test_a_run_scores_every_variant_as_train_splits_and_selects(table, tmp_path):
    arrays = study._one("tiny", str(table), 0, str(tmp_path / "cache"), str(tmp_path))
    report = study.analyse(arrays, "tiny", 0)
    with np.load(arrays) as z:
        keys = set(z.files)
        cv_rows, test_rows = len(z["val_quality"]), len(z["test_quality"])
        assert z["cv:knn|25|0"].shape == (cv_rows, 3) and z["test:knn|25|0"].shape == (test_rows, 3)
    # every grid point of both tuned families, and the torch candidates, with and without Platt scaling
    for c in ("0.03", "0.1", "0.3", "1.0", "10.0"):
        assert {f"cv:logreg|{c}|0", f"cv:logreg|{c}|1"} <= keys
    for k in ("10", "25", "50", "100", "200", "400"):
        assert {f"test:knn|{k}|0", f"test:knn|{k}|1"} <= keys
    assert {"cv:mlp|None|0", "cv:mf|None|1"} <= keys
    # the same split, baselines and cross-validated selection scores as `router-ml train` itself
    trained = json.loads(selection_study.run_one(table, 0, "ensemble", tmp_path).read_text())
    assert (cv_rows, test_rows) == (trained["train_records"] + trained["val_records"], trained["test_scored"])
    for name in ("knn", "logreg"):
        assert report["baselines"][name] == pytest.approx(trained["test"]["baselines"][name]["aiq"], abs=1e-9)
    current = report["rules"]["tuned+platt"]["families"]
    for family, entry in trained["selection"]["candidates"].items():
        if family not in ("ensemble", "lexical"):  # the study tunes the candidates over the static features
            assert current[family]["val"] == pytest.approx(entry["val_aiq"], abs=1e-6), family
    # the rules pick as documented
    defaults = report["rules"]["defaults"]["families"]
    assert defaults["logreg"]["choice"] == ["1.0", "0"] and defaults["knn"]["choice"] == ["25", "0"]
    assert defaults["groups"]["choice"] == ["task", "0"] and defaults["mlp"]["choice"] == ["None", "0"]
    assert report["bar"] == max(report["baselines"].values())
    # anchored@X: train's own logistic-regression baseline unless the default beats it on X of the resamples
    wins = report["rules"]["anchored@0.5"]["wins"]
    assert 0 <= wins <= 1 and all(report["rules"][f"anchored@{x}"]["wins"] == wins for x in study.ANCHOR_LEVELS)
    for x in study.ANCHOR_LEVELS:
        rule = report["rules"][f"anchored@{x}"]
        if wins >= x:
            assert rule["kept_test"] == report["rules"]["tuned+platt"]["kept_test"]
        else:  # the anchor: the baseline's setting (C = 1, uncalibrated), fitted on train + validation
            assert rule["kept"] == "anchor" and rule["kept_test"] == defaults["logreg"]["test"]
    summary = study.summarize([report])
    assert summary["tuned+platt"]["paired_vs_default"] == 0.0
    assert summary["defaults"]["mean_vs_best_baseline"] == pytest.approx(
        report["rules"]["defaults"]["kept_test"] - report["bar"], abs=1e-5)
    # the default against each baseline with train's paired interval, and the runs below beyond it
    for name, paired in report["default_vs_baselines"].items():
        assert paired["aiq"] == pytest.approx(report["rules"]["tuned+platt"]["kept_test"] - report["baselines"][name])
        assert paired["ci95"][0] <= paired["aiq"] <= paired["ci95"][1]
    worse = {**report, "default_vs_baselines": {b: {"aiq": -0.05, "ci95": [-0.08, -0.01]} for b in ("knn", "logreg")}}
    flagged = study.summarize([report, worse])["tuned+platt"]["runs_below_beyond_paired_interval"]
    bar_name = max(report["baselines"], key=report["baselines"].get)
    expected = [-0.05] if report["default_vs_baselines"][bar_name]["ci95"][1] >= 0 else [
        round(report["default_vs_baselines"][bar_name]["aiq"], 5), -0.05]
    assert [r["aiq"] for r in flagged] == expected
