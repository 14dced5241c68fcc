"""Cascade evaluation on a synthetic table: the report's keys, the router-only and baseline reference,
and that a scorer that reads the answers beats routing alone; the plot and policy files it writes."""

from __future__ import annotations

import numpy as np
import pytest

from router_ml.cascade.combiner import Signals
from router_ml.cascade.policy import CascadePolicy
from router_ml.metrics import CURVE_KEYS
from training.cascade.command import compact, write_outputs
from training.cascade.evaluate import CONTENDERS, FAMILIES, GUARD_AIQ, auc, evaluate_cascades, guarded_headline

MODELS = ("small", "mid", "large")


def synthetic(n: int = 1500, seed: int = 0, scorer_noise: float = 0.15):
    """Three models (cost 1, 3, 20) whose correctness depends on a hidden difficulty the router sees
    only dimly; the scorer sees each answer's correctness through ``scorer_noise``."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    skill = np.array([0.45, 0.6, 0.8])
    quality = (rng.random((n, 3)) < np.clip(skill[None, :] + 0.5 - difficulty[:, None], 0, 1)).astype(float)
    cost = np.tile([1.0, 3.0, 20.0], (n, 1)) * (1 + 0.1 * rng.random((n, 1)))
    prior = np.clip(skill[None, :] + 0.5 - difficulty[:, None] + rng.normal(0, 0.3, (n, 1)), 0.01, 0.99)
    score = np.clip(0.5 + 0.35 * (2 * quality - 1) + rng.normal(0, scorer_noise, (n, 3)), 0.01, 0.99)
    agreement = np.ones((n, 3, 3))
    for a in range(3):
        for b in range(3):
            if a != b:
                agreement[:, a, b] = (quality[:, a] == quality[:, b]) * (quality[:, a] == 1)
    signals = Signals(prior=prior, score=score, cost_est=cost, agreement=agreement)
    rows = rng.permutation(n)
    return signals, quality, cost, rows[: n // 3], rows[n // 3:]


@pytest.fixture(scope="module")
def evaluated():
    signals, quality, cost, val, test = synthetic()
    wtps = np.concatenate([[0.0], np.geomspace(0.1, 1e4, 20), [np.inf]])
    return evaluate_cascades(signals, quality, cost, val_rows=val, test_rows=test, models=MODELS, wtps=wtps,
                             scorer_latency_ms=2.0, n_boot=30, grid=11, headline="auto")


def test_report_keys_and_the_references_beside_the_cascade(evaluated):
    report, policies = evaluated
    test = report["test"]
    for key in (*CURVE_KEYS, "ci95", "policy", "reference_model", "reference_cost", "reference_quality", "router_only"):
        assert key in test, key
    assert test["reference_model"] == "large" and test["policy"] in CONTENDERS
    assert set(test["selection"]["aiq"]) == set(CONTENDERS)  # chosen on validation, among these
    assert set(report["policies"]) == set(FAMILIES) == set(policies)
    assert set(report["baselines"]) >= {"random", "best-single", "oracle"}
    assert set(report["scorer_auc"]) == set(MODELS) and all(0.5 < v <= 1 for v in report["scorer_auc"].values())
    assert report["rows"] == {"validation": 500, "test": 1000}
    for lo, hi in (test["ci95"][k] for k in ("aiq", "best_quality")):
        assert lo <= hi
    for point in report["policies"]["chain"]["points"]:
        assert point["scorer_ms"] == pytest.approx(2.0 * point["scorer_calls"])
        assert 1.0 <= point["calls"] <= 3.0


def test_a_scorer_that_reads_the_answers_beats_routing_alone(evaluated):
    report, _ = evaluated
    test, router = report["test"], report["test"]["router_only"]
    assert test["aiq"] > router["aiq"]
    assert test["best_quality"] > report["test"]["reference_quality"]
    assert test["savings_at_iso_quality"] is not None and test["savings_at_iso_quality"] < 0.8
    oracle = report["baselines"]["oracle"]
    assert test["aiq"] <= oracle["aiq"]


def test_outputs_are_written_and_the_policy_reloads(evaluated, tmp_path):
    report, policies = evaluated
    files = write_outputs(tmp_path / "out", report, policies)
    assert (tmp_path / "out" / "curves.png").stat().st_size > 10_000
    headline = report["test"]["policy"]
    loaded = CascadePolicy.load(files[headline])
    assert loaded.points == policies[headline].points and files[headline].endswith("/policy.json")
    small = compact(report)
    assert "points" not in small["policies"]["chain"] and "curve" not in small["router_only"]
    assert small["test"] == report["test"]


def test_the_default_headline_is_the_margin_chain_unless_validation_clearly_prefers_another():
    signals, quality, cost, val, test = synthetic(600, seed=1)
    wtps = np.array([0.0, 1.0, np.inf])
    report, _ = evaluate_cascades(signals, quality, cost, val_rows=val, test_rows=test, models=MODELS, wtps=wtps,
                                  n_boot=0, grid=5)
    selection = report["test"]["selection"]
    assert set(selection["aiq"]) == set(CONTENDERS) and "unless a contender" in selection["by"]
    assert report["test"]["policy"] == guarded_headline(selection["aiq"])
    assert report["test"]["aiq"] == report["policies"][report["test"]["policy"]]["aiq"]
    fixed, _ = evaluate_cascades(signals, quality, cost, val_rows=val, test_rows=test, models=MODELS, wtps=wtps,
                                 n_boot=0, grid=5, headline="chain")
    assert fixed["test"]["policy"] == "chain" and fixed["test"]["selection"] == {"by": "fixed"}
    # the rule itself: the preferred chain stays within the margin, a clearly better contender replaces it
    assert guarded_headline({"chain_margin": 0.70, "cascade": 0.70 + GUARD_AIQ}) == "chain_margin"
    assert guarded_headline({"chain_margin": 0.50, "cascade": 0.50 + 2 * GUARD_AIQ, "chain": 0.51}) == "cascade"
    assert guarded_headline({"chain_margin": float("nan"), "chain": 0.5}) == "chain"
    with pytest.raises(Exception, match="headline policy 'best'.*default, auto or one of cascade"):
        evaluate_cascades(signals, quality, cost, val_rows=val, test_rows=test, models=MODELS, wtps=wtps, n_boot=0,
                          grid=5, headline="best")


def test_auc_matches_the_rank_definition():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(300), 1)  # many ties
    labels = (rng.random(300) < scores).astype(float)
    pairs = scores[labels == 1][:, None] - scores[labels == 0][None, :]
    assert auc(scores, labels) == pytest.approx(((pairs > 0) + 0.5 * (pairs == 0)).mean())
    assert auc(scores, np.ones(300)) is None


@pytest.fixture(scope="module")
def answered_run(tmp_path_factory, cache_root):
    """800 demo records given answer texts (right answers say (A), wrong ones another letter), a static
    router trained on them by the pipeline (checkpoint + split.json) and exported as an artifact."""
    import dataclasses

    from training.config import load_config
    from training.data import load_traffic, write_jsonl
    from training.export import export_router
    from training.pipeline import train_router

    from .conftest import DEMO, ROOT

    root = tmp_path_factory.mktemp("cascade")
    table, _ = load_traffic(DEMO)
    rng = np.random.default_rng(0)
    records = []
    for record in table.records[:800]:
        outcomes = {m: dataclasses.replace(o, response="Step by step. The answer is (" + (
            "A" if o.quality >= 0.5 else "BCDE"[rng.integers(4)]) + ").") for m, o in record.outcomes.items()}
        records.append(dataclasses.replace(record, outcomes=outcomes))
    data = write_jsonl(records, root / "answered.jsonl")
    config = load_config(ROOT / "training/configs/mlp_static.toml",
                         ["train.epochs=5", "eval.n_boot=0", "eval.baselines=random", "tracking.enabled=false",
                          "data.train_size=0.7", "data.val_size=0.2"])  # the scorer configs' split
    train_router(config, data, out_dir=root / "run", progress=False)
    export_router(root / "run", root / "run" / "artifact")
    return data, root / "run" / "artifact"


@pytest.fixture(scope="module")
def answered_scorer(answered_run, tmp_path_factory):
    """A static answer scorer trained on the same records and split as the router."""
    from training.cascade.scorer_run import train_scorer
    from training.config import load_config

    from .conftest import ROOT

    config = load_config(ROOT / "training/configs/scorer_static.toml",
                         ["tracking.enabled=false", "featurizer.max_tokens=64", "scorer.response_head=16",
                          "data.train_size=0.7"])
    out = tmp_path_factory.mktemp("cascade-scorer") / "scorer"
    train_scorer(config, answered_run[0], out_dir=out, progress=False)
    return out / "artifact"


@pytest.mark.slow
def test_a_scorer_that_does_not_score_the_routers_models_is_refused_before_any_scoring(answered_run, answered_scorer,
                                                                                         tmp_path):
    """A scorer trained on 4 of the router's 5 models was a traceback after the router had scored the data."""
    import json
    import shutil

    from router_ml.errors import RouterMLError
    from training.cascade.command import run_cascade_evaluate

    data, artifact = answered_run
    fewer = shutil.copytree(answered_scorer, tmp_path / "fewer")
    manifest = json.loads((fewer / "manifest.json").read_text())
    (fewer / "manifest.json").write_text(json.dumps({**manifest, "models": manifest["models"][:-1]}))
    with pytest.raises(RouterMLError, match=r"fewer: the answer scorer does not score \['frontier-xl'\], which the "
                                            r"router .* chooses"):
        run_cascade_evaluate(router=artifact, scorer=fewer, data=data, train_size=0.7, seed=0, n_boot=0)


@pytest.mark.slow
def test_the_cli_prints_the_report_with_scorer_artifacts(answered_run, answered_scorer, tmp_path):
    import json
    import subprocess
    import sys

    data, artifact = answered_run
    done = subprocess.run([sys.executable, "-m", "router_ml.cli", "cascade", "evaluate", "--quiet", "--router",
                           str(artifact), "--scorer", str(answered_scorer), "--data", str(data), "--train-size", "0.7",
                           "--seed", "0", "--out", str(tmp_path / "out"), "--n-boot", "20",
                           "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["test"]) >= {*CURVE_KEYS, "reference_model", "router_only", "policy", "ci95"}
    assert set(report["scorer_auc"]) == set(CascadePolicy.load(tmp_path / "out" / "policy.json").models)
    assert report["scorer_auc"]["tiny-1b"] > 0.9  # right answers say (A): the trained scorer reads that
    measured = report["scorer_latency"]  # the artifact timed one answer at a time, as serving calls it
    assert measured["source"] == "measured" and measured["answers"] > 0 and measured["threads"] == 1
    assert 0 < measured["p50_ms"] == report["scorer_latency_ms"] <= measured["p99_ms"] < 1000
    assert "points" not in report["policies"]["chain"]
    assert (tmp_path / "out" / "curves.png").is_file()
    # logged to MLflow so that compare ranks it beside the routers of its split
    from training.compare import compare_runs

    assert report["mlflow"]["error"] is None
    ranked = compare_runs(experiments=["router-ml"], tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", plot=None)
    (row,) = ranked["runs"]
    assert row["run_id"] == report["mlflow"]["run_id"] and row["router"] == f"cascade:{report['test']['policy']}"
    assert row["featurizer"] == "scorer:static" and row["aiq"] == pytest.approx(report["test"]["aiq"])
    assert row["test_records"] == report["split"]["test"]
    wrong = subprocess.run([sys.executable, "-m", "router_ml.cli", "cascade", "evaluate", "--router", str(artifact),
                            "--scorer", str(artifact), "--data", str(data), "--train-size", "0.7"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert wrong.returncode != 0 and "scorer" in wrong.stderr  # a router artifact is not a scorer


@pytest.mark.slow
def test_the_command_rebuilds_the_split_and_writes_policy_and_plot(answered_run, tmp_path):
    from training.cascade.command import run_cascade_evaluate

    data, artifact = answered_run
    seen = []

    def score_fn(prompts, models, responses):  # a scorer that reads the answer: "(A)" is right
        seen.append(len(prompts))
        return np.array([0.9 if "(A)" in r else 0.1 for r in responses])

    report = run_cascade_evaluate(router=artifact, scorer=score_fn, data=data, train_size=0.7, seed=0,
                                  out=tmp_path / "out", n_boot=0, grid=5)
    assert report["split"]["checked"]["split_json"].endswith("split.json")
    assert report["split"]["checked"]["data_fingerprint"] is True
    assert report["rows"]["test"] == report["split"]["test"] and report["rows"]["validation"] == report["split"]["val"]
    assert sum(seen) == 5 * (report["split"]["val"] + report["split"]["test"])  # every response scored once
    assert report["scorer_auc"]["tiny-1b"] == 1.0
    assert report["scorer_latency"] == {"ms": 1.0, "source": "assumed"}  # a function is not timed
    assert report["test"]["aiq"] > report["test"]["router_only"]["aiq"]
    assert all(p["model_latency_s"] is None or p["model_latency_s"] > 0
               for p in report["policies"]["chain"]["points"])  # the demo logs latency
    policy = CascadePolicy.load(tmp_path / "out" / "policy.json")
    assert policy.models == ("tiny-1b", "small-8b", "code-34b", "large-70b", "frontier-xl")
    assert (tmp_path / "out" / "curves.png").is_file() and (tmp_path / "out" / "report.json").is_file()
    with pytest.raises(Exception, match="data.seed=0, not 1; pass --seed 0"):
        run_cascade_evaluate(router=artifact, scorer=score_fn, data=data, train_size=0.7, seed=1, n_boot=0)
    # the same records without their answers: every policy was once fitted and reported on nothing
    import dataclasses

    from training.data import load_traffic, write_jsonl

    bare = write_jsonl([dataclasses.replace(r, outcomes={m: dataclasses.replace(o, response=None)
                                                         for m, o in r.outcomes.items()})
                        for r in load_traffic(data)[0].records], tmp_path / "bare.jsonl")
    with pytest.raises(Exception, match=r"bare\.jsonl: no recorded response of \['tiny-1b', .*a cascade scores"):
        run_cascade_evaluate(router=artifact, scorer=score_fn, data=bare, train_size=0.7, seed=0, n_boot=0)


def test_compare_summarises_cascade_reports_over_seeds(evaluated, tmp_path):
    import json
    import subprocess
    import sys

    from training.compare import compare_cascades

    report, policies = evaluated
    for seed in (0, 1):
        write_outputs(tmp_path / f"s{seed}", {**report, "split": {"train_size": 0.7, "seed": seed}}, policies)
    done = subprocess.run([sys.executable, "-m", "router_ml.cli", "compare", "--cascade", str(tmp_path / "s0"),
                           "--cascade", str(tmp_path / "s1"), "--sort", "savings_at_iso_quality", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["seeds"] == [0, 1] and result["reference_model"] == "large"
    rows = {row["policy"]: row for row in result["ranking"]}
    assert set(rows) == {*FAMILIES, "router only", "best-single", "random", "oracle"}
    assert rows["chain"]["aiq"] == pytest.approx(report["policies"]["chain"]["aiq"]) and rows["chain"]["aiq_sd"] == 0
    savings = [row["savings_at_iso_quality"] for row in result["ranking"] if row["savings_at_iso_quality"] is not None]
    assert savings == sorted(savings)  # lower is better
    write_outputs(tmp_path / "other", {**report, "split": {"train_size": 0.5, "seed": 0}}, policies)
    with pytest.raises(Exception, match="differ in data, train size"):
        compare_cascades([tmp_path / "s0", tmp_path / "other"])
    with pytest.raises(Exception, match="no_such_dir.*report.json.*cascade evaluate --out"):
        compare_cascades([tmp_path / "no_such_dir"])


def test_a_scorer_trained_on_another_split_than_the_router_is_refused():
    from training.cascade.command import check_same_split

    router = {"data.train_size": 0.7, "data.seed": 0, "data.val_size": 0.2}
    same = {"training": {"config": {"data.train_size": 0.7, "data.seed": 0, "data.val_size": 0.2}}}
    check_same_split(router, same, router="r", scorer="s")
    check_same_split(router, {}, router="r", scorer="s")  # a scoring function has no manifest: nothing to check
    other = {"training": {"config": {"data.train_size": 0.7, "data.seed": 0}}}  # val_size left at its default 0.1
    with pytest.raises(Exception, match=r"s: the answer scorer was trained with data.val_size=0.1, the router r "
                                        r"with 0.2; .*--set data.val_size="):
        check_same_split(router, other, router="r", scorer="s")
    with pytest.raises(Exception, match="data.seed=1"):
        check_same_split(router, {"training": {"config": {**same["training"]["config"], "data.seed": 1}}},
                         router="r", scorer="s")
    # the same numbers on other data: its training records may be the router's test records (a scorer trained on
    # them once raised the headline AIQ from 0.808 to 0.824 and its AUC from 0.61 to 0.82)
    fingerprinted = {"training": {**same["training"], "data_fingerprint": "b" * 64}}
    check_same_split(router, fingerprinted, router="r", scorer="s", router_fingerprint="b" * 64)
    with pytest.raises(Exception, match=r"s: the answer scorer was trained on other data \(fingerprint bbbbbbbbbbbb"
                                        r"\.\.\.\) than the router r \(aaaaaaaaaaaa\.\.\.\)"):
        check_same_split(router, fingerprinted, router="r", scorer="s", router_fingerprint="a" * 64)


def test_an_out_that_is_a_file_is_refused_before_anything_is_loaded(tmp_path):
    """It was found only when the report was written, after the whole evaluation."""
    from training.cascade.command import run_cascade_evaluate

    data = tmp_path / "answers.jsonl"
    data.write_text("{}\n")
    with pytest.raises(Exception, match=r"--out .*answers\.jsonl: exists and is not a directory"):
        run_cascade_evaluate(router=tmp_path / "no-router", scorer=tmp_path / "no-scorer", data=data,
                             train_size=0.7, seed=0, out=data)
    assert data.read_text() == "{}\n"
