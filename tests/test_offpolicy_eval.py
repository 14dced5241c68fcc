"""Scoring saved routers on logged traffic: the default-knob point and its interval, the refusal without
propensities, model mismatches, artifact directories, and `compare --router` ranking on one log."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router_ml.errors import DataError
from training.data import Outcome, Record, load_traffic, write_jsonl
from training.evaluation import HeldOut, default_knob

from .conftest import DEMO, ROOT, TRAIN_RECORDS
from .test_evaluation import _world  # a prompt-dependent epsilon-greedy log of 3 models, and the truth


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "router_ml.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env={**os.environ})


def _held(quality, propensity=None, n_boot=200, seed=0):
    cost = np.tile([1e-4, 5e-4, 2e-3], (quality.shape[0], 1))
    return HeldOut(quality=quality, cost=cost, cost_est=cost, wtps=np.array([0.0, np.inf]), models=("a", "b", "c"),
                   n_boot=n_boot, seed=seed, propensity=propensity)


def test_default_knob_snips_interval_covers_the_full_information_truth_about_95_percent_of_the_time():
    """The percentile bootstrap re-normalises SNIPS on each resample of records: over 60 independent logs its
    95% interval covers the exact value on the same prompts' every outcome close to 95% of the time."""
    covered, widths = 0, []
    for seed in range(60):
        p_true, quality, logged, propensity = _world(seed, 800, rate=0.3)
        pred = p_true[:, ::-1]  # a candidate unlike the logging policy: mostly off-policy choices
        truth = default_knob(pred, _held(quality, n_boot=0), 1e-3)
        est = default_knob(pred, _held(logged, propensity, seed=seed), 1e-3)
        assert truth["estimator"] == "exact" and est["estimator"] == "snips"
        assert est["models"] == truth["models"] and sum(est["models"].values()) == pytest.approx(1.0)
        assert 0.0 <= est["quality"] <= 1.0 and 0 < est["effective_sample_size"] < 800
        low, high = est["ci95"]["quality"]
        assert low <= est["quality"] <= high
        covered += low <= truth["quality"] <= high
        widths.append(high - low)
        assert est["cost"] == pytest.approx(truth["cost"])  # costs are known for every cell here
    assert 52 <= covered <= 60, covered  # 95% of 60 is 57; binomial sd 1.7
    assert 0.05 < np.mean(widths) < 0.3


def test_default_knob_of_exact_data_is_the_plain_mean_of_the_chosen_outcomes():
    _, quality, _, _ = _world(1, 500)
    pred = np.tile([0.2, 0.9, 0.1], (500, 1))
    out = default_knob(pred, _held(quality, n_boot=50), np.inf)
    assert out["quality"] == pytest.approx(quality[:, 1].mean()) and out["models"] == {"b": 1.0}
    assert out["cost"] == pytest.approx(5e-4) and out["ci95"]["cost"] == [pytest.approx(5e-4)] * 2
    assert out["willingness_to_pay"] is None and "effective_sample_size" not in out


# --- saved routers on real files -----------------------------------------------------------------


def _log(records, models, *, seed=0, rate=0.5, propensities=True):
    """A prompt-dependent epsilon-greedy log of ``records`` over ``models``: one outcome per prompt."""
    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        greedy = models[len(r.text) % len(models)]
        chosen = models[rng.integers(len(models))] if rng.random() < rate else greedy
        p = 1 - rate + rate / len(models) if chosen == greedy else rate / len(models)
        outcome = dataclasses.replace(r.outcomes[chosen], propensity=p if propensities else None)
        out.append(dataclasses.replace(r, outcomes={chosen: outcome}))
    return out


@pytest.fixture(scope="module")
def demo():
    table, _ = load_traffic(DEMO)
    return table


def test_a_log_without_propensities_is_refused_unless_an_estimator_is_forced(tmp_path, trained, demo):
    records = demo.records[TRAIN_RECORDS:TRAIN_RECORDS + 600]
    log = write_jsonl(_log(records, demo.models, propensities=False), tmp_path / "nolog.jsonl")
    refused = run("evaluate", "--router", trained.checkpoint, "--data", log, "--json", "--quiet", cwd=tmp_path)
    assert refused.returncode == 1 and refused.stdout == ""
    message = refused.stderr
    assert str(log) in message and "lack `propensity` (first records: " in message
    first = records[0].sample_id  # the first record (scored in file order) is named, so it can be found
    assert first is not None and f"(first records: {first!r}, " in message
    assert "log the probability of every logged choice" in message and "--estimator ips" in message
    forced = run("evaluate", "--router", trained.checkpoint, "--data", log, "--json", "--quiet", "--estimator",
                 "snips", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    result = json.loads(forced.stdout)
    assert result["biased"] is True and "exposure weights" in result["warning"] and str(log) in result["warning"]
    assert f"router-ml: warning: {result['warning']}" in forced.stderr
    assert result["test"]["estimator"] == "snips" and result["test"]["off_policy"]["biased"] is True
    # with propensities: snips by default, nothing biased, no warning
    ok = write_jsonl(_log(records, demo.models), tmp_path / "log.jsonl")
    fine = run("evaluate", "--checkpoint", trained.checkpoint, "--data", ok, "--json", "--quiet", cwd=tmp_path)
    assert fine.returncode == 0, fine.stderr[-3000:]
    result = json.loads(fine.stdout)
    assert result["biased"] is False and "warning" not in result
    # the one warning left: a curve on few effective prompts per knob value (said exactly when flagged)
    thin = result["test"]["off_policy"]["thin_curve"]
    assert ("warning" in fine.stderr) == thin == ("effective prompts per knob value" in fine.stderr)
    small = write_jsonl(_log(records[:80], demo.models), tmp_path / "small.jsonl")  # < 100 effective prompts
    few = run("evaluate", "--checkpoint", trained.checkpoint, "--data", small, "--json", "--quiet", cwd=tmp_path)
    assert few.returncode == 0, few.stderr[-3000:]
    assert json.loads(few.stdout)["test"]["off_policy"]["thin_curve"] is True
    assert "warning: the off-policy curve rests on a median of" in few.stderr and "read high" in few.stderr
    assert result["test"]["estimator"] == "snips" and result["default_knob"]["estimator"] == "snips"


def test_a_log_that_never_explored_is_refused_unless_an_estimator_is_forced(tmp_path, trained, demo):
    """Every propensity 1 (what the runtime logs with exploration off): scored by snips as if unbiased, a log of
    each prompt's best cheap model put the router - and the random baseline - above the oracle."""
    records = demo.records[TRAIN_RECORDS:TRAIN_RECORDS + 600]
    greedy = write_jsonl(_log(records, demo.models, rate=0.0), tmp_path / "greedy.jsonl")
    assert {o.propensity for r in load_traffic(greedy)[0] for o in r.outcomes.values()} == {1.0}
    refused = run("evaluate", "--router", trained.checkpoint, "--data", greedy, "--json", "--quiet", cwd=tmp_path)
    assert refused.returncode == 1 and refused.stdout == "" and "Traceback" not in refused.stderr
    assert f"{greedy}: logged traffic in which every logged outcome has propensity 1" in refused.stderr
    assert "--explore-rate R" in refused.stderr and "--estimator snips" in refused.stderr
    forced = run("evaluate", "--router", trained.checkpoint, "--data", greedy, "--json", "--quiet", "--estimator",
                 "snips", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    result = json.loads(forced.stdout)
    assert result["biased"] is True and "never explored" in result["warning"]


def test_default_knob_on_a_log_stays_within_the_observed_qualities_and_near_the_truth(tmp_path, trained, demo):
    from training.pipeline import evaluate_router

    records = demo.records[TRAIN_RECORDS:TRAIN_RECORDS + 1600]
    full = write_jsonl(records, tmp_path / "full.jsonl")
    logged = _log(records, demo.models)
    log = write_jsonl(logged, tmp_path / "log.jsonl")
    truth = evaluate_router(trained.checkpoint, full, n_boot=0, progress=False)["default_knob"]
    result = evaluate_router(trained.checkpoint, log, n_boot=100, progress=False)
    knob = result["default_knob"]
    observed = [next(iter(r.outcomes.values())).quality for r in logged]
    assert min(observed) <= knob["quality"] <= max(observed)
    low, high = knob["ci95"]["quality"]
    assert low <= knob["quality"] <= high and high - low < 0.2
    assert knob["quality"] == pytest.approx(truth["quality"], abs=0.05)
    assert knob["willingness_to_pay"] == truth["willingness_to_pay"] and knob["models"] == truth["models"]
    assert "checkpoint" in knob["source"] and knob["effective_sample_size"] > 50
    # the knob can be overridden: at 0 USD per unit of quality the cheapest model takes every prompt
    cheap = evaluate_router(trained.checkpoint, full, n_boot=0, progress=False, willingness_to_pay=0.0)
    assert cheap["default_knob"]["source"] == "--willingness-to-pay" and len(cheap["default_knob"]["models"]) == 1


def test_a_bootstrap_set_in_the_same_file_as_the_log_is_scored_beside_it_without_bias(tmp_path, trained, demo):
    """Records with every outcome and no propensity beside logged ones with theirs (the logged-traffic
    workflow's bootstrap set + log in one file): scored by SNIPS, the full records with weight 1 - not
    refused as logged outcomes lacking a propensity."""
    from training.pipeline import evaluate_router

    records = demo.records[TRAIN_RECORDS:TRAIN_RECORDS + 1600]
    truth = evaluate_router(trained.checkpoint, write_jsonl(records, tmp_path / "full.jsonl"), n_boot=0,
                            progress=False)["default_knob"]
    mixed = write_jsonl(records[:300] + _log(records[300:], demo.models), tmp_path / "mixed.jsonl")
    result = evaluate_router(trained.checkpoint, mixed, n_boot=50, progress=False)
    assert result["biased"] is False and "warning" not in result and result["scored"] == 1600
    assert result["test"]["estimator"] == "snips" and result["test"]["off_policy"]["propensities"] == "logged"
    knob = result["default_knob"]
    assert knob["estimator"] == "snips" and knob["quality"] == pytest.approx(truth["quality"], abs=0.05)
    assert result["set_aside_partial"] == 0


def test_logged_records_set_aside_beside_a_majority_of_complete_ones_are_counted_and_said(tmp_path, trained, demo,
                                                                                          caplog):
    """With at least half the records complete, the complete ones are scored exactly and the logged ones were
    dropped without a word (300 of 600 here)."""
    from training.pipeline import evaluate_router

    records = demo.records[TRAIN_RECORDS:TRAIN_RECORDS + 600]
    mixed = write_jsonl(records[:300] + _log(records[300:], demo.models), tmp_path / "mixed.jsonl")
    with caplog.at_level("WARNING", logger="router_ml.train"):
        result = evaluate_router(trained.checkpoint, mixed, n_boot=0, progress=False)
    assert result["test"]["estimator"] == "exact" and result["scored"] == 300 and result["set_aside_partial"] == 300
    assert f"{mixed}: 300 records hold only some of the models' outcomes and are set aside" in caplog.text
    assert "score them off-policy" in caplog.text
    # a benchmark table's scattered gaps (no propensities): not advised to be scored off-policy
    gaps = [dataclasses.replace(r, outcomes=dict(list(r.outcomes.items())[1:])) if i % 10 == 0 else r
            for i, r in enumerate(records)]
    caplog.clear()
    with caplog.at_level("WARNING", logger="router_ml.train"):
        evaluate_router(trained.checkpoint, write_jsonl(gaps, tmp_path / "gaps.jsonl"), n_boot=0, progress=False)
    assert "60 records hold only some" in caplog.text and "scattered gaps without propensities" in caplog.text
    full = write_jsonl(records[:300], tmp_path / "full.jsonl")
    with caplog.at_level("WARNING", logger="router_ml.train"):
        exact = evaluate_router(trained.checkpoint, full, n_boot=0, progress=False, estimator="ips")
    assert exact["test"]["estimator"] == "exact"  # an estimator asked for on complete data: said, not ignored
    assert f"{full}: every scored record holds every outcome, so the router is scored exactly; --estimator ips" in \
        caplog.text


def test_an_artifact_directory_is_scored_through_the_runtime_and_says_seen_prompts_were_not_checked(
        tmp_path, trained, demo):
    from router_ml import Router
    from training.pipeline import evaluate_router

    records = demo.records[TRAIN_RECORDS:TRAIN_RECORDS + 400]
    full = write_jsonl(records, tmp_path / "full.jsonl")
    result = evaluate_router(trained.artifact, full, n_boot=0, progress=False)
    assert result["router_kind"] == "artifact" and result["seen_prompts"].startswith("not checked")
    assert result["dropped_seen"] == 0 and result["scored"] == 400
    knob = result["default_knob"]
    runtime = Router.load(trained.artifact)
    assert knob["source"].startswith("artifact manifest") and knob["willingness_to_pay"] == runtime.willingness_to_pay
    # independently: the runtime's own routing decisions, their observed outcomes
    chosen = [d.model for d in runtime.route_batch([r.text for r in records])]
    assert knob["quality"] == pytest.approx(np.mean([r.outcomes[m].quality for r, m in zip(records, chosen,
                                                                                             strict=True)]))
    assert knob["cost"] == pytest.approx(np.mean([r.outcomes[m].cost for r, m in zip(records, chosen, strict=True)]))
    # the checkpoint and its fp32 export score the same
    checkpoint = evaluate_router(trained.checkpoint, full, n_boot=0, progress=False)
    assert checkpoint["seen_prompts"] == "dropped"
    assert checkpoint["test"]["aiq"] == pytest.approx(result["test"]["aiq"], abs=1e-6)
    printed = run("evaluate", "--router", trained.artifact, "--data", full, "--quiet", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert "training prompts not checked" in printed.stdout and "default knob" in printed.stdout


def test_a_log_whose_models_differ_from_the_routers_is_refused_or_quarantined(tmp_path, trained, demo, caplog):
    from training.pipeline import evaluate_router

    records = _log(demo.records[TRAIN_RECORDS:TRAIN_RECORDS + 500], demo.models)
    renamed = [dataclasses.replace(r, outcomes={"mystery-70b": o}) if i % 10 == 0 else r
               for i, r in enumerate(records) for o in r.outcomes.values()]
    log = write_jsonl(renamed, tmp_path / "renamed.jsonl")
    with pytest.raises(DataError, match=r"50 logged records .* models the router does not know \(\['mystery-70b'\]"
                       ) as err:
        evaluate_router(trained.checkpoint, log, n_boot=0, progress=False)
    assert str(log) in str(err.value) and "--on-error quarantine" in str(err.value)
    qfile = tmp_path / "q.jsonl"
    with caplog.at_level("WARNING", logger="router_ml"):
        result = evaluate_router(trained.checkpoint, log, n_boot=0, progress=False, on_error="quarantine",
                                 quarantine=qfile)
    assert "not scored" not in caplog.text  # the quarantined records took the unknown model's outcomes along
    caplog.clear()
    assert result["quarantined_unknown_model"] == 50 and result["scored"] == 450 and result["rejected"] == 50
    lines = [json.loads(line) for line in qfile.read_text().splitlines()]
    assert len(lines) == 50 and "mystery-70b" in lines[0]["reason"]
    # an unknown model's outcome beside a known one in the same record: not scored, and said on stderr
    beside = [dataclasses.replace(r, outcomes={**r.outcomes, "mystery-70b": next(iter(r.outcomes.values()))})
              if i % 10 == 0 else r for i, r in enumerate(records)]
    with caplog.at_level("WARNING", logger="router_ml"):
        result = evaluate_router(trained.checkpoint, write_jsonl(beside, tmp_path / "beside.jsonl"), n_boot=0,
                                 progress=False)
    assert result["models_ignored"] == ["mystery-70b"] and result["rejected"] == 0
    assert "50 outcomes of models the router does not know (['mystery-70b']) are not scored" in caplog.text
    # a router model the log never shows: its choices of it cannot be scored
    gone = demo.models[-1]
    without = write_jsonl([r for r in records if gone not in r.outcomes], tmp_path / "without.jsonl")
    with pytest.raises(DataError, match=rf"no outcome of \['{gone}'\], which the router .* can choose"):
        evaluate_router(trained.checkpoint, without, n_boot=0, progress=False)


# --- compare --router: a router that picks the best model ranks above one that picks the worst --------------


def test_compare_sweeps_every_router_alike_and_refuses_routers_of_other_models(tmp_path, trained, demo):
    """The same weights trained with eval.knob_refine 0 and 400 got AIQs 0.0023 apart, "beyond the noise"; a
    router of 2 models ranked above one of 5 by an AIQ over its own models' cost range."""
    from router_ml.errors import RouterMLError
    from training.compare import compare_routers

    refined = Path(shutil.copytree(trained.checkpoint, tmp_path / "refined"))
    config = json.loads((refined / "config.json").read_text())
    (refined / "config.json").write_text(json.dumps({**config, "eval.knob_refine": 400}))
    data = write_jsonl(demo.records[TRAIN_RECORDS:TRAIN_RECORDS + 400], tmp_path / "held.jsonl")
    result = compare_routers([trained.checkpoint, refined], data, n_boot=20, progress=False)
    first, second = result["ranking"]
    assert first["aiq"] == second["aiq"] and second["vs_first"]["aiq"] == 0.0
    other = Path(shutil.copytree(trained.checkpoint, tmp_path / "other"))
    for name in ("manifest.json", "cost_model.json"):  # a router of other models, its files agreeing
        saved = json.loads((other / name).read_text())
        (other / name).write_text(json.dumps({**saved, "models": saved["models"][:-1] + ["gpt-9"]}))
    with pytest.raises(RouterMLError, match=r"the routers choose among different models .*gpt-9.* do not compare"):
        compare_routers([trained.checkpoint, other], data, n_boot=20, progress=False)


def _two_model_records(records, *, good: float, bad: float):
    """The same prompts with two models whose quality does not depend on the prompt."""
    return [Record(prompt=r.text, sample_id=r.sample_id, outcomes={
        "good": Outcome(quality=float(good), cost=2e-3), "bad": Outcome(quality=float(bad), cost=1e-3)})
        for r in records]


@pytest.fixture(scope="module")
def best_and_worst(tmp_path_factory, demo):
    """Two tiny static routers on the same prompts: one taught that 'good' is better, one the reverse."""
    from training.config import load_config
    from training.pipeline import train_router

    root = tmp_path_factory.mktemp("best-worst")
    config = load_config(ROOT / "training/configs/mlp_static.toml",
                         ["train.epochs=15", "router.hidden=32", "eval.n_boot=0", "eval.baselines=random",
                          "tracking.enabled=false"])
    prompts = demo.records[:300]
    out = {}
    for name, good, bad in (("best", 1.0, 0.0), ("worst", 0.0, 1.0)):
        data = write_jsonl(_two_model_records(prompts, good=good, bad=bad), root / f"{name}.jsonl")
        train_router(config, data, out_dir=root / name, progress=False)
        out[name] = root / name
    return root, out


@pytest.mark.slow  # trains two tiny routers
def test_compare_ranks_routers_on_a_log_by_the_same_estimator(best_and_worst, demo):
    root, routers = best_and_worst
    rng = np.random.default_rng(0)
    truth = _two_model_records(demo.records[1000:1600], good=1.0, bad=0.0)
    logged = []
    for r in truth:  # uniform logging: each model with probability 1/2, a noisy outcome
        m = "good" if rng.random() < 0.5 else "bad"
        q = float(rng.random() < (0.8 if m == "good" else 0.2))
        logged.append(dataclasses.replace(r, outcomes={m: dataclasses.replace(r.outcomes[m], quality=q,
                                                                              propensity=0.5)}))
    log = write_jsonl(logged, root / "log.jsonl")
    args = ("compare", "--router", routers["worst"], "--router", routers["best"], "--data", log, "--quiet",
            "--n-boot", "100")
    out = run(*args, "--json", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    ranking = result["ranking"]
    assert result["estimator"] == "snips" and result["sort"] == "aiq"
    assert [row["router_dir"] for row in ranking] == [str(routers["best"]), str(routers["worst"])]
    best, worst = ranking
    assert best["quality"] > 0.7 > 0.3 > worst["quality"]
    assert best["quality_ci95"][0] > worst["quality_ci95"][1] and best["ess"] > 100
    assert best["aiq"] > worst["aiq"]
    # the runner-up against the first, paired on the same resamples of the same prompts
    assert "vs_first" not in best
    diff = worst["vs_first"]
    assert diff["quality"] == pytest.approx(worst["quality"] - best["quality"])
    low, high = diff["quality_ci95"]
    assert low <= diff["quality"] <= high < 0
    own = (best["quality_ci95"][1] - best["quality_ci95"][0]) + (worst["quality_ci95"][1] - worst["quality_ci95"][0])
    assert high - low < own
    by_quality = json.loads(run(*args, "--json", "--sort", "quality", cwd=root).stdout)["ranking"]
    assert by_quality[0]["router_dir"] == str(routers["best"])
    table = run(*args, "--sort", "cost", cwd=root)
    assert table.returncode == 0, table.stderr[-3000:]
    lines = table.stdout.splitlines()
    assert str(routers["worst"]) in lines[2] and str(routers["best"]) in lines[3]  # cheaper first
    assert lines[0].rstrip().endswith("cost - #1's") and lines[2].rstrip().endswith("-")
    assert lines[3].count("[") == 4  # AIQ, quality, cost and the paired cost difference, each with its interval
    assert "sorted by cost" in lines[-1]
    bad = run(*args, "--sort", "apgr", cwd=root)
    assert bad.returncode == 1 and "--sort 'apgr'" in bad.stderr


def test_an_outcome_observed_beside_the_logged_choice_is_not_scored_as_a_draw():
    """A cascade's escalation is observed with no propensity next to the logged first call: the
    estimators must see the logged draw alone, or the row would count two choices of one policy."""
    quality = np.array([[1.0, 0.0], [np.nan, 1.0], [0.0, np.nan]])
    propensity = np.array([[0.9, np.nan], [np.nan, 0.5], [0.8, np.nan]])
    cost = np.ones_like(quality)
    held = HeldOut(quality=quality, cost=cost, cost_est=cost, wtps=np.array([0.0, np.inf]), models=("a", "b"),
                   propensity=propensity)
    assert held.unlogged_outcomes == 1 and np.isnan(held.quality[0, 1]) and held.quality[0, 0] == 1.0
    assert held.has_propensities and held.resolved_estimator() == "snips"
    assert held.subset(np.array([0, 1])).unlogged_outcomes == 1  # counted once, not re-masked
    full = HeldOut(quality=np.ones((2, 2)), cost=np.ones((2, 2)), cost_est=np.ones((2, 2)),
                   wtps=np.array([0.0]), models=("a", "b"), propensity=np.full((2, 2), np.nan))
    assert full.unlogged_outcomes == 0 and not full.logged  # full information is left alone
