"""training.evaluation: the one scoring path, on full-information and on logged (bandit) data."""

from __future__ import annotations

import numpy as np
import pytest

from router_ml import metrics
from router_ml.errors import RouterMLError
from training.evaluation import HeldOut, evaluate_held_out, score_predictions


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
    np.testing.assert_allclose(est["curve"]["quality"], truth["curve"]["quality"], atol=0.04)
    assert all(0.0 <= q <= 1.0 for q in est["curve"]["quality"])  # never outside the range of the data
    dr = score_predictions(pred, _held(logged, propensity, estimator="dr", reward_model=pred))
    np.testing.assert_allclose(dr["curve"]["quality"], truth["curve"]["quality"], atol=0.04)
    with pytest.raises(RouterMLError, match="estimator 'magic'"):
        score_predictions(pred, _held(logged, propensity, estimator="magic"))


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
