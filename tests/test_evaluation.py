"""training.evaluation: the one scoring path, on full-information and on logged (bandit) data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from router_ml import metrics
from router_ml.errors import RouterMLError
from training.baselines import evaluate_held_out
from training.evaluation import HeldOut, score_predictions


def _world(seed: int, n: int = 3000, rate: float = 0.2):
    """Every outcome of 3 models, and a log of them by a prompt-dependent epsilon-greedy policy."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    p_true = np.stack([0.3 + 0.6 * x, 0.8 - 0.5 * x, np.full(n, 0.55)], axis=1)
    quality = (rng.random((n, 3)) < p_true).astype(float)
    greedy = np.where(x > 0.5, 0, 1)
    choice = np.where(rng.random(n) < rate, rng.integers(0, 3, n), greedy)
    rows = np.arange(n)
    logged, propensity = np.full((n, 3), np.nan), np.full((n, 3), np.nan)
    logged[rows, choice] = quality[rows, choice]
    propensity[rows, choice] = np.where(choice == greedy, 1 - rate + rate / 3, rate / 3)
    return p_true, quality, logged, propensity


def _held(quality, propensity=None, **kw):
    n = quality.shape[0]
    cost = np.tile([1e-4, 5e-4, 2e-3], (n, 1))
    return HeldOut(quality=quality, cost=cost, cost_est=cost, wtps=np.array([0.0, 1e-3, 1e-2, np.inf]),
                   models=("a", "b", "c"), n_boot=0, propensity=propensity, **kw)


def test_logged_traffic_with_propensities_is_scored_by_snips_close_to_the_truth():
    p_true, quality, logged, propensity = _world(0)
    pred = p_true + np.random.default_rng(1).normal(0, 0.05, p_true.shape)  # a candidate router
    truth = score_predictions(pred, _held(quality))
    est = score_predictions(pred, _held(logged, propensity))
    assert truth["estimator"] == "exact" and est["estimator"] == "snips"
    assert est["off_policy"]["propensities"] == "logged"
    assert 0 < est["off_policy"]["effective_sample_size"]["min"] <= len(logged)
    assert est["off_policy"]["thin_curve"] is False
    # 80 logged prompts: a few dozen effective ones per knob value, and the report says the curve is thin
    small = score_predictions(pred[:80], _held(logged[:80], propensity[:80]))
    assert small["off_policy"]["effective_sample_size"]["median"] < 100 and small["off_policy"]["thin_curve"] is True
    np.testing.assert_allclose(est["curve"]["quality"], truth["curve"]["quality"], atol=0.04)
    assert all(0.0 <= q <= 1.0 for q in est["curve"]["quality"])  # never outside the range of the data
    dr = score_predictions(pred, _held(logged, propensity, estimator="dr", reward_model=pred))
    np.testing.assert_allclose(dr["curve"]["quality"], truth["curve"]["quality"], atol=0.04)
    with pytest.raises(RouterMLError, match="estimator 'magic'"):
        score_predictions(pred, _held(logged, propensity, estimator="magic"))


def test_full_information_records_beside_a_log_count_with_propensity_one():
    """A bootstrap set (every outcome, no propensity) in the same data as a log that carries its propensities:
    scored by SNIPS with weight 1 on the full records' outcomes, not refused or scored by exposure weights."""
    p_true, quality, logged, propensity = _world(0)
    mixed = logged.copy()
    mixed[:600] = quality[:600]  # the first 600 prompts evaluated on every model, without a propensity
    propensity = propensity.copy()
    propensity[:600] = np.nan
    pred = p_true + np.random.default_rng(1).normal(0, 0.05, p_true.shape)
    held = _held(mixed, propensity)
    assert held.has_propensities and held.resolved_estimator() == "snips"
    weights = held.weights()
    assert (weights[:600] == 1.0).all()
    np.testing.assert_allclose(weights[600:][~np.isnan(mixed[600:])], 1 / propensity[600:][~np.isnan(mixed[600:])])
    truth = score_predictions(pred, _held(quality))
    est = score_predictions(pred, held)
    assert est["estimator"] == "snips" and est["off_policy"]["propensities"] == "logged"
    assert est["off_policy"]["biased"] is False
    np.testing.assert_allclose(est["curve"]["quality"], truth["curve"]["quality"], atol=0.03)


def test_without_propensities_logged_traffic_falls_back_to_exposure_weights_and_says_so():
    p_true, quality, logged, _ = _world(0)
    report = evaluate_held_out(p_true, _held(logged), baselines=("random", "best-single", "oracle"))
    test = report["test"]
    assert test["estimator"] == "ips" and test["off_policy"]["propensities"].startswith("exposure")
    assert test["baselines"]["oracle"]["aiq"] is None  # needs every outcome
    # full information: exact, no off-policy block, identical to the plain metrics
    full = score_predictions(p_true, _held(quality))
    assert "off_policy" not in full
    always_a = metrics.curve_from_choices(quality, _held(quality).cost, np.zeros((1, len(quality)), int))[1][0]
    assert full["curve"]["quality"][0] == pytest.approx(always_a)  # knob 0: the cheapest model everywhere


def _curve_intervals_one_metric_at_a_time(held, choices):
    """The intervals as first computed: one bootstrap per metric over resampled copies."""
    from training.evaluation import _curve_summary

    def stat(name):
        return lambda idx: _curve_summary(held.quality[idx], held.cost[idx], choices[:, idx], None)[0][name]
    return {name: list(metrics.bootstrap_ci(stat(name), len(held.quality), n_boot=held.n_boot, seed=held.seed))
            for name in metrics.CURVE_KEYS}


@pytest.mark.parametrize("chunk", [65536, 128])
def test_curve_intervals_from_resample_counts_equal_resampled_copies(chunk, monkeypatch):
    monkeypatch.setattr("training.evaluation._CHUNK", chunk)  # 128: the prompts summed in several products
    rng = np.random.default_rng(4)
    n, m = 700, 3
    quality = rng.random((n, m)).round(2)
    cost = np.tile([0.001, 0.004, 0.02], (n, 1)) * rng.uniform(0.5, 1.5, (n, 1))
    held = HeldOut(quality=quality, cost=cost, cost_est=cost, wtps=np.geomspace(1e-3, 10, 9), models=("a", "b", "c"),
                   n_boot=60, seed=2)
    pred = quality + rng.normal(0, 0.2, quality.shape)
    report = score_predictions(pred, held)
    from router_ml.policy import choose

    choices = np.stack([choose(pred, held.cost_est, w) for w in held.wtps])
    want = _curve_intervals_one_metric_at_a_time(held, choices)
    for name in metrics.CURVE_KEYS:
        np.testing.assert_allclose(report["ci95"][name], want[name], rtol=1e-9)


def test_trained_baselines_fit_and_score_on_the_sampled_records():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(900, 4)).astype(np.float32)
    quality = np.stack([(X[:, 0] > 0).astype(float), np.ones(900)], axis=1)
    cost = np.tile([0.001, 0.01], (900, 1))
    scored = np.arange(600, 900)
    sample = np.sort(rng.choice(300, 120, replace=False))
    held = HeldOut(quality=quality[scored], cost=cost[scored], cost_est=cost[scored], wtps=np.geomspace(1e-3, 1, 7),
                   models=("cheap", "dear"), n_boot=0, features=X[scored][sample], train_features=X[:200],
                   train_quality=quality[:200], baseline_rows=sample)
    report = evaluate_held_out(quality[scored], held, baselines=("knn", "logreg", "random"))["test"]["baselines"]
    for name in ("knn", "logreg"):
        assert report[name]["fit_records"] == 200 and report[name]["scored_records"] == 120
        assert report[name]["aiq"] > report["random"]["aiq"]


def _baseline_world(n_train: int = 1500, n_test: int = 800):
    """Two models; the cheap one answers when feature 0 > 0: learnable from the features."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(n_train + n_test, 4)).astype(np.float32)
    p = np.stack([np.where(X[:, 0] > 0, 0.9, 0.2), np.full(len(X), 0.8)], axis=1)
    quality = (rng.random(p.shape) < p).astype(float)
    cost = np.tile([0.001, 0.01], (len(X), 1))
    test = np.arange(n_train, n_train + n_test)
    held = HeldOut(quality=quality[test], cost=cost[test], cost_est=cost[test], wtps=np.geomspace(1e-3, 1, 9),
                   models=("cheap", "dear"), n_boot=300, seed=1, features=X[test], train_features=X[:n_train],
                   train_quality=quality[:n_train])
    return p[test], held


def test_paired_differences_use_the_same_resamples_and_are_narrower_than_separate_intervals():
    p_true, held = _baseline_world()
    good = evaluate_held_out(p_true, held, baselines=("knn", "logreg"))["test"]
    for name, diff in good["vs_baselines"].items():
        base = good["baselines"][name]
        assert diff["aiq"] == pytest.approx(good["aiq"] - base["aiq"])
        low, high = diff["ci95"]["aiq"]
        assert low <= diff["aiq"] <= high
        separate = (good["ci95"]["aiq"][1] - good["ci95"]["aiq"][0]) + (base["ci95"]["aiq"][1] - base["ci95"]["aiq"][0])
        assert high - low < 0.5 * separate  # pairing removes the luck both share
    # a router that ignores the prompt is significantly below both trained baselines
    blind = evaluate_held_out(np.tile([0.55, 0.8], (len(p_true), 1)), held, baselines=("knn", "logreg"))["test"]
    for diff in blind["vs_baselines"].values():
        assert diff["ci95"]["aiq"][1] < 0
    # the same router as the baseline: every resample's difference is exactly 0
    from training.baselines import paired_differences

    same = score_predictions(p_true, held)
    zero = paired_differences(same, score_predictions(p_true, held))
    assert zero["aiq"] == 0 and zero["ci95"]["aiq"] == [0.0, 0.0]
    # baselines scored on a sample of the prompts are paired with the router on that sample
    rows = np.arange(0, 800, 2)
    sampled = dataclasses.replace(held, features=held.features[rows], baseline_rows=rows)
    test = evaluate_held_out(p_true, sampled, baselines=("knn",))["test"]
    on_sample = score_predictions(p_true[rows], held.subset(rows))
    assert test["vs_baselines"]["knn"]["prompts"] == 400
    assert test["vs_baselines"]["knn"]["aiq"] == pytest.approx(on_sample["aiq"] - test["baselines"]["knn"]["aiq"])


def test_the_dr_estimator_estimates_cost_from_the_routers_cost_model_and_the_logged_residuals():
    from training.evaluation import default_knob

    p_true, quality, logged, propensity = _world(2)
    rng = np.random.default_rng(3)
    length = rng.lognormal(0, 0.8, len(quality))
    true_cost = np.outer(length, [1e-4, 5e-4, 2e-3])  # what each model costs on each prompt
    logged_cost = np.where(np.isnan(logged), np.nan, true_cost)
    held = HeldOut(quality=logged, cost=np.where(np.isnan(logged_cost), true_cost.mean(axis=0), logged_cost),
                   cost_est=true_cost, wtps=np.array([0.0, 1e-3, 1e-2, np.inf]), models=("a", "b", "c"), n_boot=50,
                   propensity=propensity, estimator="dr", reward_model=p_true)
    truth = metrics.curve_from_choices(quality, true_cost, np.argmax(p_true, axis=1)[None, :])[0][0]
    dr = default_knob(p_true, held, np.inf)
    snips = default_knob(p_true, dataclasses.replace(held, estimator="snips"), np.inf)
    assert dr["cost"] == pytest.approx(truth, rel=1e-9)  # a right cost model leaves no residual
    assert abs(snips["cost"] / truth - 1) > 1e-3  # the logged costs of the matching choices alone
    low, high = dr["ci95"]["cost"]
    assert low <= truth <= high


def test_two_models_of_equal_mean_quality_on_the_test_prompts_leave_apgr_undefined_not_an_error():
    """A small two-model test split can hold both models at the same mean quality: there is no gap to
    recover, so APGR and CPT are None (null in the JSON), in the router's report and in every
    resample, while AIQ and the rest are scored as usual."""
    quality = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]] * 5)
    cost = np.tile([1e-4, 1e-3], (len(quality), 1))
    held = HeldOut(quality=quality, cost=cost, cost_est=cost, wtps=np.geomspace(1e-3, 10, 9), models=("weak", "strong"),
                   two_model=(0, 1), n_boot=30)
    pred = np.random.default_rng(0).random(quality.shape)
    report = evaluate_held_out(pred, held, baselines=("random", "best-single"))["test"]
    assert {report[key] for key in metrics.TWO_MODEL_KEYS} == {None} and 0 < report["aiq"] <= 1
    assert report["ci95"]["aiq"][0] is not None
    unequal = dataclasses.replace(held, quality=np.vstack([quality, [[0.0, 1.0]]]),
                                  cost=np.vstack([cost, cost[:1]]), cost_est=np.vstack([cost, cost[:1]]))
    scored = evaluate_held_out(np.vstack([pred, [[0.2, 0.8]]]), unequal, baselines=("random",))["test"]
    assert 0 <= scored["apgr"] <= 1 and scored["cpt_50"] is not None


def test_the_rows_with_every_outcome_are_scored_exactly_unless_the_data_is_a_log_with_propensities():
    """Which rows `train` and `evaluate` score: the complete ones when they are at least half; without any
    propensity (a benchmark table with scattered gaps) also when they are fewer, from MIN_EXACT_ROWS on;
    a log with propensities, or too few complete rows, is scored off-policy on every row with an outcome."""
    from training.evaluation import MIN_EXACT_ROWS, scoreable_rows

    rng = np.random.default_rng(0)
    quality = rng.integers(0, 2, (200, 26)).astype(float)
    quality[rng.random(quality.shape) < 0.03] = np.nan  # 3% of the cells: about 45% of the rows complete
    rows = np.arange(200)
    complete = rows[np.isfinite(quality).all(axis=1)]
    assert MIN_EXACT_ROWS <= len(complete) < 100
    assert np.array_equal(scoreable_rows(quality, rows), complete)
    none_logged = np.full(quality.shape, np.nan)
    assert np.array_equal(scoreable_rows(quality, rows, none_logged), complete)
    logged = none_logged.copy()
    logged[~np.isnan(quality) & (rng.random(quality.shape) < 0.01)] = 0.5  # some outcomes carry one
    assert len(scoreable_rows(quality, rows, logged)) == 200  # a log: every row, off-policy
    few = complete[:MIN_EXACT_ROWS - 1]
    sparse = np.concatenate([few, np.setdiff1d(rows, complete)])
    assert len(scoreable_rows(quality, sparse)) == len(sparse)  # too few complete rows: every row
    half = np.concatenate([complete, np.setdiff1d(rows, complete)[:len(complete)]])
    assert np.array_equal(scoreable_rows(quality, half, logged), complete)  # half complete: exact, as before


def _two_model_router(n: int = 300, seed: int = 3):
    """Outcomes of a weak and a strong model at fixed prices, and predictions whose strong-minus-weak
    differences lie close together (0.12-0.21, as an averaged, calibrated router's do) but rank the
    prompts where the strong model helps first, with noise."""
    rng = np.random.default_rng(seed)
    quality = (rng.random((n, 2)) < np.array([0.65, 0.82])).astype(float)
    signal = quality[:, 1] - quality[:, 0] + rng.normal(0, 0.8, n)
    spread = (np.argsort(np.argsort(signal)) + 0.5) / n
    pred = np.column_stack([np.full(n, 0.65), 0.77 + 0.09 * spread])
    cost = np.tile([6e-4, 1e-2], (n, 1))
    return quality, cost, pred


def test_a_refined_knob_sweep_reaches_the_exact_two_model_curve_where_the_fixed_grid_falls_short():
    """With two models a prompt switches to the strong model at one willingness to pay; routing the top j
    prompts by predicted difference, for every j, is the router's whole curve. ``refine`` knob values at
    the quantiles of those points find its AIQ exactly; the fixed geometric grid (81 points, a factor of
    1.2 apart) leaves this router a handful of points between all-weak and all-strong, and less AIQ."""
    from router_ml.policy import knob_grid
    from training.evaluation import router_wtps

    quality, cost, pred = _two_model_router()
    n = len(quality)
    order = np.argsort(-(pred[:, 1] - pred[:, 0]), kind="stable")
    strong = np.zeros(n, dtype=bool)
    costs, qualities = [cost[:, 0].mean()], [quality[:, 0].mean()]
    for i in order:  # the exact curve: one more prompt to the strong model at a time
        strong[i] = True
        costs.append(np.where(strong, cost[:, 1], cost[:, 0]).mean())
        qualities.append(np.where(strong, quality[:, 1], quality[:, 0]).mean())
    exact = metrics.aiq(np.array(costs), np.array(qualities), cost_range=(cost[0, 0], cost[0, 1]))
    grid = knob_grid(cost.mean(axis=0), 81)
    held = HeldOut(quality=quality, cost=cost, cost_est=cost, wtps=grid, models=("weak", "strong"), n_boot=0)
    fixed = score_predictions(pred, held)
    refined = score_predictions(pred, dataclasses.replace(held, refine=n))
    assert refined["aiq"] == pytest.approx(exact, abs=1e-12)
    assert fixed["aiq"] < exact - 0.005  # the fixed grid's shortfall on this router
    assert len(refined["curve"]["willingness_to_pay"]) > len(grid) == len(fixed["curve"]["willingness_to_pay"])
    assert np.array_equal(router_wtps(pred, cost, grid, 0), grid)  # refine 0: the fixed grid, as before
    # fewer refined points than prompts: between the two, never below the fixed grid
    coarse = score_predictions(pred, dataclasses.replace(held, refine=20))["aiq"]
    assert fixed["aiq"] <= coarse <= exact


def test_refined_sweeps_never_lower_a_routers_aiq_and_each_router_gets_its_own():
    """Knob values are only added, so the hull of a refined sweep lies on or above the fixed grid's, for
    any number of models; the oracle is refined on its own tie points too."""
    rng = np.random.default_rng(11)
    n, m = 400, 5
    quality = (rng.random((n, m)) < rng.uniform(0.3, 0.9, m)).astype(float)
    cost = np.tile(np.geomspace(1e-4, 1e-2, m), (n, 1)) * rng.uniform(0.5, 1.5, (n, 1))
    held = HeldOut(quality=quality, cost=cost, cost_est=cost, wtps=np.array([0.0, 1e-3, 1e-2, 1e-1, np.inf]),
                   models=tuple("abcde"), n_boot=0)
    refined = dataclasses.replace(held, refine=200)
    for trial in range(5):
        pred = np.clip(quality * 0.3 + rng.random((n, m)) * 0.7, 0, 1)
        assert score_predictions(pred, refined)["aiq"] >= score_predictions(pred, held)["aiq"] - 1e-12, trial
        assert not np.array_equal(refined.grid(pred), refined.grid(np.roll(pred, 1, axis=0)))
    oracle = [evaluate_held_out(quality * 0.9, h, baselines=("oracle",))["test"]["baselines"]["oracle"]
              for h in (held, refined)]
    assert oracle[1]["aiq"] > oracle[0]["aiq"]  # five knob values leave the oracle's curve far short


def test_savings_never_reached_on_the_test_set_has_no_upper_bound_taken_from_the_resamples_that_reach_it():
    """A router that always picks the cheap model, which is a little worse than the best one: savings at
    iso-quality is null on the test set and on many resamples. Its interval's upper bound is null
    (unbounded), not the percentile of the resamples that happened to reach the best model's quality."""
    rng = np.random.default_rng(3)
    n = 60
    quality = np.stack([rng.random(n) < 0.5, rng.random(n) < 0.56, rng.random(n) < 0.3], axis=1).astype(float)
    pred = np.tile([0.9, 0.1, 0.1], (n, 1))  # always the cheap one
    report = score_predictions(pred, dataclasses.replace(_held(quality), n_boot=300, seed=0))
    draws = report["draws"]["savings_at_iso_quality"]
    assert report["savings_at_iso_quality"] is None and 0.05 < np.isnan(draws).mean() < 0.95  # reached on some
    assert report["ci95"]["savings_at_iso_quality"][1] is None
    assert all(v is not None for v in report["ci95"]["aiq"])  # the others as before
    from training.evaluation import percentile_interval

    assert percentile_interval(np.array([0.2, 0.4] * 50), undefined_is_inf=True) == \
        percentile_interval(np.array([0.2, 0.4] * 50))  # every resample defined: the same interval
