"""Tests of router_ml.metrics: hand-computed values, RouteLLM parity and hull properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_ml import metrics
from router_ml.metrics import (
    aiq,
    apgr,
    best_quality,
    bootstrap_ci,
    choice_outcomes,
    complete_rows,
    cpt,
    curve_from_choices,
    pgr,
    propensity_weights,
    quality_hull,
    routellm_curve,
    routellm_metrics,
    savings_at_iso_quality,
    single_model_points,
)

# Three models, four prompts: model 0 cheap and weak, model 2 expensive and strong.
QUALITY = np.array(
    [
        [0.0, 1.0, 1.0],
        [1.0, 0.0, 1.0],
        [0.0, 0.0, 1.0],
        [1.0, 1.0, 0.0],
    ]
)
COST = np.array(
    [
        [1.0, 2.0, 10.0],
        [1.0, 2.0, 10.0],
        [3.0, 2.0, 10.0],
        [3.0, 6.0, 10.0],
    ]
)


def test_all_is_sorted_and_matches_public_names():
    assert metrics.__all__ == sorted(metrics.__all__)
    public = {n for n, v in vars(metrics).items() if callable(v) and not n.startswith("_")}
    public -= {"Callable", "annotations"}
    constants = {n for n in vars(metrics) if n.isupper() and not n.startswith("_")}
    assert public | constants == set(metrics.__all__)
    assert metrics.HEADLINE_KEYS == metrics.CURVE_KEYS + metrics.TWO_MODEL_KEYS


# --- outcomes of choices ---------------------------------------------------------------------------------


def test_choice_outcomes_hand_computed():
    # prompt -> model: 0->2 (q1, $10), 1->0 (q1, $1), 2->1 (q0, $2), 3->1 (q1, $6)
    cost, quality = choice_outcomes(QUALITY, COST, np.array([2, 0, 1, 1]))
    assert cost == pytest.approx((10 + 1 + 2 + 6) / 4)
    assert quality == pytest.approx(3 / 4)


def test_curve_from_choices_matches_choice_outcomes_row_by_row():
    choices = np.array([[0, 0, 0, 0], [2, 0, 1, 1], [2, 2, 2, 2]])
    costs, qualities = curve_from_choices(QUALITY, COST, choices)
    np.testing.assert_allclose(costs, [2.0, 4.75, 10.0])
    np.testing.assert_allclose(qualities, [0.5, 0.75, 0.75])
    for row, c, q in zip(choices, costs, qualities, strict=True):
        assert choice_outcomes(QUALITY, COST, row) == pytest.approx((c, q))


def test_single_model_points_use_complete_rows_only():
    quality = np.vstack([QUALITY, [np.nan, 1.0, 1.0]])
    cost = np.vstack([COST, [100.0, 100.0, 100.0]])
    costs, qualities = single_model_points(quality, cost)
    # the NaN row (with its $100 costs) must not count for any model
    np.testing.assert_allclose(costs, [2.0, 3.0, 10.0])
    np.testing.assert_allclose(qualities, [0.5, 0.5, 0.75])


def test_weighted_single_model_points_price_a_model_on_the_prompts_it_was_logged_on():
    """Logged traffic: the always-this-model point is the same self-normalised estimate as a router's curve,
    for cost as for quality - a cost imputed for a prompt the model never saw does not count."""
    rng = np.random.default_rng(0)
    n = 4000
    length = rng.integers(10, 1000, n)
    cost = np.stack([1e-6 * length, 1e-5 * length], axis=1)  # per-token prices: long prompts cost more
    quality = rng.random((n, 2))
    strong = rng.random(n) < np.where(length > 500, 0.9, 0.1)  # the logging router sends long prompts to 1
    p = np.where(length > 500, 0.9, 0.1)
    logged = np.where(np.stack([~strong, strong], axis=1), quality, np.nan)
    propensity = np.where(np.stack([~strong, strong], axis=1), np.stack([1 - p, p], axis=1), np.nan)
    imputed = np.where(np.isnan(logged), np.nanmean(np.where(np.isnan(logged), np.nan, cost), axis=0), cost)
    costs, qualities = single_model_points(logged, imputed, weights=propensity_weights(logged, propensity))
    np.testing.assert_allclose(costs, cost.mean(axis=0), rtol=0.05)  # the truth: every prompt at its own price
    np.testing.assert_allclose(qualities, quality.mean(axis=0), atol=0.03)
    assert imputed[:, 1].mean() > 1.2 * cost[:, 1].mean()  # the plain mean of the imputed costs is far off


def test_complete_rows_marks_nan_in_quality_or_cost():
    quality = QUALITY.copy()
    cost = COST.copy()
    quality[1, 2] = np.nan
    cost[3, 0] = np.nan
    np.testing.assert_array_equal(complete_rows(quality, cost), [True, False, True, False])


def test_missing_outcome_for_chosen_model_raises_with_count():
    quality = QUALITY.copy()
    cost = COST.copy()
    quality[0, 2] = np.nan
    cost[1, 0] = np.nan
    quality[2, 0] = np.nan  # not chosen below: must not count
    with pytest.raises(ValueError, match=r"2 of 4 prompts lack an outcome"):
        choice_outcomes(quality, cost, np.array([2, 0, 1, 1]))
    # prompt 2's NaN only matters at the knob value that picks model 0 for it
    with pytest.raises(ValueError, match=r"1 of 4 prompts .* at knob value 1"):
        curve_from_choices(quality, cost, np.array([[1, 1, 1, 1], [1, 1, 0, 1]]))
    with pytest.raises(ValueError, match="none of the 1 prompts"):
        single_model_points(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]]))


def test_bad_choices_raise():
    with pytest.raises(ValueError, match=r"model indices in \[0, 3\)"):
        choice_outcomes(QUALITY, COST, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        choice_outcomes(QUALITY, COST, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match=r"shape \(k, 4\)"):
        curve_from_choices(QUALITY, COST, np.array([[0, 1, 2]]))


# --- hull, AIQ, iso-quality savings -------------------------------------------------------------------------


def test_quality_hull_hand_drawn():
    costs = np.array([1.0, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0])
    qualities = np.array([0.2, 0.1, 0.5, 0.3, 0.6, 0.7, 0.65, 0.7])
    # (1, 0.1): same cost as (1, 0.2), worse.  (2.5, 0.3): below the chord.  (3, 0.6): on the segment
    # (2, 0.5)-(4, 0.7), collinear.  (5, 0.65): dearer and worse.  (6, 0.7): dearer, not better.
    hull_costs, hull_qualities = quality_hull(costs, qualities)
    np.testing.assert_allclose(hull_costs, [1.0, 2.0, 4.0])
    np.testing.assert_allclose(hull_qualities, [0.2, 0.5, 0.7])


def test_quality_hull_drops_point_below_chord_even_if_better_than_its_left_neighbour():
    # (2, 0.55) beats (1, 0.5) but lies below the chord (1, 0.5)-(3, 0.7), whose midpoint is 0.6:
    # mixing the two outer routers 50/50 gives quality 0.6 at cost 2.
    hull_costs, hull_qualities = quality_hull(np.array([3.0, 2.0, 1.0]), np.array([0.7, 0.55, 0.5]))
    np.testing.assert_allclose(hull_costs, [1.0, 3.0])
    np.testing.assert_allclose(hull_qualities, [0.5, 0.7])


def test_quality_hull_single_best_cheapest_point():
    hull_costs, hull_qualities = quality_hull(np.array([2.0, 1.0, 3.0]), np.array([0.4, 0.9, 0.8]))
    np.testing.assert_allclose(hull_costs, [1.0])
    np.testing.assert_allclose(hull_qualities, [0.9])


def test_quality_hull_rejects_nan():
    with pytest.raises(ValueError, match="finite"):
        quality_hull(np.array([1.0, 2.0]), np.array([0.5, np.nan]))


@settings(database=None, max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=100.0, allow_subnormal=False),
            st.floats(min_value=0.0, max_value=1.0, allow_subnormal=False),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_quality_hull_properties(points):
    costs = np.array([c for c, _ in points])
    qualities = np.array([q for _, q in points])
    hull_costs, hull_qualities = quality_hull(costs, qualities)
    assert np.all(np.diff(hull_costs) > 0)
    assert np.all(np.diff(hull_qualities) > 0)
    assert hull_costs[0] == costs.min()
    assert hull_qualities[-1] == qualities.max()
    pairs = set(points)
    assert all((c, q) in pairs for c, q in zip(hull_costs.tolist(), hull_qualities.tolist(), strict=True))
    # every point is on or below the hull (flat at its top beyond the last hull point)
    assert np.all(qualities <= np.interp(costs, hull_costs, hull_qualities) + 1e-9)
    # and the hull is concave: slopes do not increase
    slopes = np.diff(hull_qualities) / np.diff(hull_costs)
    assert np.all(np.diff(slopes) <= 1e-9 * (1 + np.abs(slopes[1:])))


def test_aiq_hand_computed_piecewise_linear_hull():
    costs = np.array([1.0, 2.0, 4.0, 3.0])
    qualities = np.array([0.5, 0.8, 0.9, 0.6])  # (3, 0.6) is under the hull and must not count
    # [1, 2]: (0.5 + 0.8) / 2 * 1 = 0.65;  [2, 4]: (0.8 + 0.9) / 2 * 2 = 1.7;  area 2.35 over width 3
    assert aiq(costs, qualities, cost_range=(1.0, 4.0)) == pytest.approx(2.35 / 3)
    # left of the cheapest point (cost 1) nothing counts: area 2.35 over width 4
    assert aiq(costs, qualities, cost_range=(0.0, 4.0)) == pytest.approx(2.35 / 4)
    # right of the dearest point quality stays 0.9: 2.35 + 0.9 * 2 over width 5
    assert aiq(costs, qualities, cost_range=(1.0, 6.0)) == pytest.approx(4.15 / 5)
    # a window inside the hull: [1.5, 3], h(1.5) = 0.65, h(3) = 0.85:
    # (0.65 + 0.8) / 2 * 0.5 + (0.8 + 0.85) / 2 * 1 = 0.3625 + 0.825 over width 1.5
    assert aiq(costs, qualities, cost_range=(1.5, 3.0)) == pytest.approx(1.1875 / 1.5)
    # a window wholly left of the hull
    assert aiq(costs, qualities, cost_range=(0.0, 0.5)) == 0.0


def test_aiq_matches_routerbench_code_with_range_from_zero():
    # RouterBench's calc_AIQ: np.trapz over the hull from its cheapest point, extended flat to the largest
    # hull cost among the compared routers (here 6), divided by that largest cost.
    router_a = (np.array([1.0, 2.0, 4.0]), np.array([0.5, 0.8, 0.9]))
    router_b = (np.array([0.5, 6.0]), np.array([0.3, 0.95]))
    largest = 6.0
    hull_a = np.array([[1.0, 0.5], [2.0, 0.8], [4.0, 0.9], [largest, 0.9]])
    expected_a = np.sum(np.diff(hull_a[:, 0]) * (hull_a[1:, 1] + hull_a[:-1, 1]) / 2) / largest
    assert aiq(*router_a, cost_range=(0.0, largest)) == pytest.approx(expected_a)
    assert aiq(*router_b, cost_range=(0.0, largest)) == pytest.approx((0.3 + 0.95) / 2 * 5.5 / largest)


def test_aiq_of_single_models_equals_aiq_of_their_hull_and_of_always_choosing_them():
    costs, qualities = single_model_points(QUALITY, COST)  # (2, 0.5), (3, 0.5), (10, 0.75)
    cost_range = (float(costs.min()), float(costs.max()))
    # hull (2, 0.5), (10, 0.75): (0.5 + 0.75) / 2 * 8 over width 8
    assert aiq(costs, qualities, cost_range=cost_range) == pytest.approx(0.625)
    assert aiq(*quality_hull(costs, qualities), cost_range=cost_range) == pytest.approx(0.625)
    always = np.repeat(np.arange(3)[:, None], 4, axis=1)
    assert aiq(*curve_from_choices(QUALITY, COST, always), cost_range=cost_range) == pytest.approx(0.625)


def test_aiq_rejects_bad_range():
    with pytest.raises(ValueError, match="lo < hi"):
        aiq(np.array([1.0]), np.array([0.5]), cost_range=(2.0, 2.0))


def test_savings_at_iso_quality_hand_computed():
    costs = np.array([1.0, 2.0, 4.0, 3.0])
    qualities = np.array([0.5, 0.8, 0.9, 0.6])
    # 0.85 lies halfway between (2, 0.8) and (4, 0.9): cost 3, a share 3 / 4 of the reference's $4
    assert savings_at_iso_quality(costs, qualities, reference_cost=4.0, reference_quality=0.85) == pytest.approx(0.75)
    # on the segment (1, 0.5)-(2, 0.8): 0.71 at cost 1 + 0.21 / 0.3 = 1.7; share 1.7 / 2
    assert savings_at_iso_quality(costs, qualities, reference_cost=2.0, reference_quality=0.71) == pytest.approx(0.85)
    # the cheapest point already reaches it
    assert savings_at_iso_quality(costs, qualities, reference_cost=4.0, reference_quality=0.4) == pytest.approx(0.25)
    assert savings_at_iso_quality(costs, qualities, reference_cost=4.0, reference_quality=0.9) == pytest.approx(1.0)
    assert savings_at_iso_quality(costs, qualities, reference_cost=4.0, reference_quality=0.95) is None
    # the best point itself, reached by another sum of the same outcomes (2.4e-15 apart): reached, not None
    noisy = 0.9 + 2.4e-15
    assert savings_at_iso_quality(costs, qualities, reference_cost=4.0, reference_quality=noisy) == pytest.approx(1.0)
    assert savings_at_iso_quality(costs, qualities, reference_cost=4.0, reference_quality=0.9 + 1e-9) is None


def test_best_quality():
    assert best_quality(np.array([0.5, 0.9, 0.7])) == 0.9
    with pytest.raises(ValueError):
        best_quality(np.array([0.5, np.nan]))


# --- RouteLLM ------------------------------------------------------------------------------------------------


def test_routellm_thresholds_follow_qcut_edges_with_strict_last_edge():
    # 7 prompts, scores 0..6. qcut(10) edges are the linear quantiles at positions 0.6 * i:
    # 0, 0.6, 1.2, 1.8, 2.4, 3.0, 3.6, 4.2, 4.8, 5.4, 6. Strong calls (score >= edge, last: > 6):
    # 7, 6, 5, 5, 4, 4, 3, 2, 2, 1, 0.  A plain "top 10% steps" scheme would give 7, 6.3, ... instead.
    shares, _ = routellm_curve(np.arange(7.0), np.zeros(7), np.ones(7))
    np.testing.assert_allclose(shares * 7, [0, 1, 2, 2, 3, 4, 4, 5, 5, 6, 7])


# Worked case, 10 prompts, prompt k has score k, so raising the share sends k = 9, 8, ... to the strong
# model. qcut edges are 0.9 * i, so edge i sends the top 10 - i prompts (edge 10: score > 9, none).
#   k:       0 1 2 3 4 5 6 7 8 9
WEAK = np.array([0, 1, 0, 1, 0, 0, 1, 1, 0, 0], dtype=float)  # mean 0.4
STRONG = np.array([0, 1, 1, 1, 0, 1, 0, 1, 1, 1], dtype=float)  # mean 0.7
# gain strong - weak in strong-first order k = 9..0: +1 +1 0 -1 +1 0 0 +1 0 0
# cumulative gain G_j after j strong calls (j = 0..10): 0 1 2 2 1 2 2 2 3 3 3
# quality 0.4 + G_j / 10: .4 .5 .6 .6 .5 .6 .6 .6 .7 .7 .7;  PGR = G_j / 3
# AUC (trapezoid, step 0.1) = 0.1 * (6.5 - (0.4 + 0.7) / 2) = 0.595;  weak AUC 0.4, strong AUC 0.7
# APGR = (0.595 - 0.4) / (0.7 - 0.4) = 0.65
# CPT(50%): PGR 1/3 at share 0.1, 2/3 at 0.2 -> 0.1 + (0.5 - 1/3) / (1/3) * 0.1 = 0.15
# CPT(80%): PGR 2/3 at share 0.7, 1 at 0.8 -> 0.7 + (0.8 - 2/3) / (1/3) * 0.1 = 0.74
# (the dip at share 0.4 is why CPT takes the first crossing rather than np.interp's undefined answer)
SCORES = np.arange(10.0)


def test_routellm_worked_case():
    shares, qualities = routellm_curve(SCORES, WEAK, STRONG)
    np.testing.assert_allclose(shares, np.arange(11) / 10)
    np.testing.assert_allclose(qualities, [0.4, 0.5, 0.6, 0.6, 0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7])
    assert apgr(SCORES, WEAK, STRONG) == pytest.approx(0.65)
    assert cpt(SCORES, WEAK, STRONG, pgr_target=0.5) == pytest.approx(0.15)
    assert cpt(SCORES, WEAK, STRONG, pgr_target=0.8) == pytest.approx(0.74)
    assert cpt(SCORES, WEAK, STRONG, pgr_target=1.0) == pytest.approx(0.8)
    assert cpt(SCORES, WEAK, STRONG, pgr_target=0.0) == 0.0
    result = routellm_metrics(SCORES, WEAK, STRONG)
    assert result == pytest.approx({"apgr": 0.65, "cpt_50": 0.15, "cpt_80": 0.74})


def test_pgr():
    assert pgr(0.55, weak=0.4, strong=0.7) == pytest.approx(0.5)
    np.testing.assert_allclose(pgr(np.array([0.4, 0.7]), weak=0.4, strong=0.7), [0.0, 1.0])
    with pytest.raises(ValueError, match="equal quality"):
        pgr(0.5, weak=0.6, strong=0.6)
    with pytest.raises(ValueError, match="equal quality"):
        apgr(SCORES, WEAK, WEAK)


def test_routellm_inputs_validated():
    with pytest.raises(ValueError, match="equal length"):
        apgr(SCORES[:5], WEAK, STRONG)
    with pytest.raises(ValueError, match="finite"):
        apgr(np.where(SCORES == 3, np.nan, SCORES), WEAK, STRONG)
    with pytest.raises(ValueError, match="pgr_target"):
        cpt(SCORES, WEAK, STRONG, pgr_target=1.5)


def _synthetic_pair(n, seed):
    rng = np.random.default_rng(seed)
    weak = (rng.random(n) < 0.5).astype(float)
    strong = (rng.random(n) < 0.8).astype(float)
    return rng, weak, strong


def test_random_scores_give_apgr_near_half():
    rng, weak, strong = _synthetic_pair(20_000, seed=1)
    result = routellm_metrics(rng.random(20_000), weak, strong)
    assert abs(result["apgr"] - 0.5) < 0.02
    assert abs(result["cpt_50"] - 0.5) < 0.05
    assert abs(result["cpt_80"] - 0.8) < 0.05


def test_oracle_beats_random_and_informative_scores():
    rng, weak, strong = _synthetic_pair(5_000, seed=2)
    tie_break = rng.random(5_000)  # keeps the quantile edges distinct without changing the order of gains
    oracle = (strong - weak) * 2 + tie_break
    informative = (strong - weak) + rng.normal(scale=1.0, size=5_000)
    oracle_apgr = apgr(oracle, weak, strong)
    assert oracle_apgr > apgr(informative, weak, strong) > apgr(rng.random(5_000), weak, strong) + 0.05
    for _ in range(5):
        assert oracle_apgr > apgr(rng.permutation(oracle), weak, strong)
    assert cpt(oracle, weak, strong, pgr_target=0.8) < cpt(informative, weak, strong, pgr_target=0.8)


def test_matches_routellm_evaluate_code_literally():
    # RouteLLM's benchmarks.py / evaluate.py, transcribed with pandas: qcut edges, >= (strict > at the
    # last edge), sort by strong %, trapezoid AUCs, np.interp for the "x% qual" call shares.
    pd = pytest.importorskip("pandas")
    rng, weak, _ = _synthetic_pair(3_000, seed=3)
    # the strong model is right wherever the weak one is, so every extra strong call helps or is neutral
    # and the curve rises strictly, where np.interp (RouteLLM's CPT) is well defined
    strong = np.maximum(weak, (rng.random(3_000) < 0.6).astype(float))
    scores = pd.Series((strong - weak) + rng.normal(scale=0.8, size=3_000))
    _, thresholds = pd.qcut(scores, 10, retbins=True)
    rows = []
    for i, threshold in enumerate(thresholds):
        selection = scores >= threshold if i != len(thresholds) - 1 else scores > threshold
        results = np.where(selection, strong, weak)
        rows.append({"strong_percentage": selection.sum() / len(results) * 100,
                     "accuracy": sum(results) / len(results) * 100})
    df = pd.DataFrame(rows).sort_values(by=["strong_percentage"])
    weak_accuracy, strong_accuracy = weak.mean() * 100, strong.mean() * 100
    x = df["strong_percentage"] / 100
    auc = np.trapezoid(df["accuracy"], x)
    weak_auc = np.trapezoid(np.full(len(df), weak_accuracy), x)
    strong_auc = np.trapezoid(np.full(len(df), strong_accuracy), x)
    expected_apgr = (auc - weak_auc) / (strong_auc - weak_auc)
    assert np.all(np.diff(df["accuracy"].to_numpy()) > 0), "np.interp parity needs a rising curve"
    expected_cpt = {
        pct: np.interp(pct * (strong_accuracy - weak_accuracy) + weak_accuracy, df["accuracy"],
                       df["strong_percentage"]) / 100
        for pct in (0.5, 0.8)
    }
    result = routellm_metrics(scores.to_numpy(), weak, strong)
    assert result["apgr"] == pytest.approx(expected_apgr, abs=1e-12)
    assert result["cpt_50"] == pytest.approx(expected_cpt[0.5], abs=1e-12)
    assert result["cpt_80"] == pytest.approx(expected_cpt[0.8], abs=1e-12)
    shares, _ = routellm_curve(scores.to_numpy(), weak, strong)
    np.testing.assert_allclose(shares, x.to_numpy())


# --- bootstrap -----------------------------------------------------------------------------------------------


def test_bootstrap_ci_of_mean_brackets_true_mean_and_is_deterministic():
    # A fixed draw whose sample mean (2.963) is 0.7 standard errors from the true 3.0; a 95% interval
    # misses the true mean for 1 draw in 20, so the draw is fixed rather than random.
    data = np.random.default_rng(0).normal(loc=3.0, scale=1.0, size=400)

    def mean(idx):
        return float(data[idx].mean())

    low, high = bootstrap_ci(mean, len(data), n_boot=500, seed=11)
    assert low < 3.0 < high
    assert low < data.mean() < high
    # the 95% interval of a mean of 400 unit-variance draws is about 2 * 1.96 / 20 = 0.196 wide
    assert 0.15 < high - low < 0.25
    np.random.seed(123)  # global state must not matter
    assert bootstrap_ci(mean, len(data), n_boot=500, seed=11) == (low, high)
    assert bootstrap_ci(mean, len(data), n_boot=500, seed=12) != (low, high)
    narrow = bootstrap_ci(mean, len(data), n_boot=500, alpha=0.5, seed=11)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_ci_skips_undefined_resamples():
    data = np.arange(10.0)

    def sometimes_undefined(idx):
        if idx[0] % 3 == 0:
            return None
        if idx[0] % 3 == 1:
            return float("nan")
        return float(data[idx].mean())

    low, high = bootstrap_ci(sometimes_undefined, 10, n_boot=300, seed=0)
    assert 0.0 <= low < 4.5 < high <= 9.0
    with pytest.raises(ValueError, match="all 50 bootstrap resamples"):
        bootstrap_ci(lambda idx: None, 10, n_boot=50)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(lambda idx: 1.0, 10, alpha=1.0)


# --- per-cell weights: logged traffic through the same functions --------------------------------------


def test_exposure_weights_are_inverse_observed_shares_and_zero_where_unobserved():
    quality = np.array([[1.0, np.nan], [0.0, 1.0], [1.0, np.nan], [0.0, 0.0]])
    w = metrics.exposure_weights(quality)
    np.testing.assert_allclose(w, [[1.0, 0.0], [1.0, 2.0], [1.0, 0.0], [1.0, 2.0]])
    assert (metrics.exposure_weights(QUALITY) == 1.0).all()  # every cell observed: the plain mean


def test_weighted_curve_equals_the_plain_curve_with_unit_weights_and_ignores_unobserved_cells():
    choices = np.array([[0, 1, 2, 0], [2, 2, 1, 1]])
    plain = metrics.curve_from_choices(QUALITY, COST, choices)
    weighted = metrics.curve_from_choices(QUALITY, COST, choices, weights=np.ones_like(QUALITY))
    np.testing.assert_array_equal(plain[0], weighted[0])
    np.testing.assert_array_equal(plain[1], weighted[1])
    holes = QUALITY.copy()
    holes[1, 1] = np.nan
    w = metrics.exposure_weights(holes)
    costs, qualities = metrics.curve_from_choices(holes, COST, choices, weights=w)
    # the unobserved chosen cell (1, 1) counts 0; observed cells of model 1 count 4/3 (3 of 4 prompts observed it)
    chosen = [[QUALITY[0, 0], 0.0, QUALITY[2, 2], QUALITY[3, 0]],
              [QUALITY[0, 2], QUALITY[1, 2], QUALITY[2, 1] * 4 / 3, QUALITY[3, 1] * 4 / 3]]
    np.testing.assert_allclose(qualities, np.mean(chosen, axis=1))
    # the cost is estimated the same way, from the logged costs of the matching choices
    chosen_c = [[COST[0, 0], 0.0, COST[2, 2], COST[3, 0]],
                [COST[0, 2], COST[1, 2], COST[2, 1] * 4 / 3, COST[3, 1] * 4 / 3]]
    np.testing.assert_allclose(costs, np.mean(chosen_c, axis=1))
    s_costs, _ = metrics.curve_from_choices(holes, COST, choices, weights=w, estimator="snips")
    total = [[1, 0, 1, 1], [1, 1, 4 / 3, 4 / 3]]
    np.testing.assert_allclose(s_costs, np.sum(chosen_c, axis=1) / np.sum(total, axis=1))
    with pytest.raises(ValueError, match="no quality"):
        metrics.curve_from_choices(holes, COST, choices, weights=np.ones_like(QUALITY))
    with pytest.raises(ValueError, match="shape"):
        metrics.curve_from_choices(QUALITY, COST, choices, weights=np.ones((2, 2)))
    with pytest.raises(ValueError, match=">= 0"):
        metrics.curve_from_choices(QUALITY, COST, choices, weights=-np.ones_like(QUALITY))


def test_weighted_single_points_average_each_model_over_the_prompts_that_observed_it():
    holes = QUALITY.copy()
    holes[1, 1] = np.nan
    costs, qualities = metrics.single_model_points(holes, COST, weights=metrics.exposure_weights(holes))
    np.testing.assert_allclose(costs, np.nanmean(np.where(np.isnan(holes), np.nan, COST), axis=0))
    assert costs[1] != COST[:, 1].mean()  # the hole's cost does not count, as its quality does not
    np.testing.assert_allclose(qualities, np.nanmean(holes, axis=0))
    # unweighted: complete rows only
    np.testing.assert_allclose(metrics.single_model_points(holes, COST)[1], QUALITY[[0, 2, 3]].mean(axis=0))


def test_curve_summary_and_weak_and_strong():
    out = metrics.curve_summary(np.array([1.0, 2.0]), np.array([0.5, 0.9]), single_costs=np.array([1.0, 4.0]),
                                single_qualities=np.array([0.5, 0.9]))
    assert out["best_quality"] == 0.9 and out["max_mean_cost"] == 2.0 and out["savings_at_iso_quality"] == 0.5
    assert out["aiq"] == pytest.approx(metrics.aiq(np.array([1.0, 2.0]), np.array([0.5, 0.9]), cost_range=(1, 4)))
    flat = metrics.curve_summary(np.array([1.0]), np.array([0.5]), single_costs=np.array([1.0, 1.0]),
                                 single_qualities=np.array([0.5, 0.4]))
    assert flat["aiq"] is None  # every single model costs the same: no cost range to average over
    assert metrics.weak_and_strong(np.array([0.3, 0.7])) == (0, 1)
    with pytest.raises(ValueError, match="two models"):
        metrics.weak_and_strong(np.array([0.3, 0.7, 0.1]))


# --- off-policy estimators: logged traffic with propensities ----------------------------------------


def _logged(seed: int, n: int = 4000, rate: float = 0.2):
    """A known world (every outcome), a prompt-dependent epsilon-greedy logging policy, and its log."""
    rng = np.random.default_rng(seed)
    m = 3
    x = rng.random(n)
    p_true = np.stack([0.3 + 0.6 * x, 0.8 - 0.5 * x, np.full(n, 0.55)], axis=1)
    quality = (rng.random((n, m)) < p_true).astype(float)
    greedy = np.where(x > 0.5, 0, 1)  # the deployed router: model 0 for high x, else model 1
    explore = rng.random(n) < rate
    logged_choice = np.where(explore, rng.integers(0, m, n), greedy)
    prob = np.where(logged_choice == greedy, 1 - rate + rate / m, rate / m)
    logged = np.full((n, m), np.nan)
    propensity = np.full((n, m), np.nan)
    rows = np.arange(n)
    logged[rows, logged_choice] = quality[rows, logged_choice]
    propensity[rows, logged_choice] = prob
    return x, p_true, quality, logged, propensity


def test_off_policy_estimates_recover_a_candidates_true_quality_where_exposure_weights_do_not():
    cost = np.tile([1.0, 2.0, 3.0], (4000, 1))
    candidate = lambda x: np.where(x > 0.7, 0, np.where(x < 0.3, 1, 2))  # noqa: E731
    errors = {name: [] for name in ("ips", "snips", "dr", "exposure")}
    for seed in range(20):
        x, p_true, quality, logged, propensity = _logged(seed)
        choices = candidate(x)[None, :]
        truth = metrics.curve_from_choices(quality, cost, choices)[1][0]
        w = metrics.propensity_weights(logged, propensity)
        for name in ("ips", "snips", "dr"):
            model = p_true + np.random.default_rng(seed).normal(0, 0.1, p_true.shape)  # a noisy reward model
            est = metrics.curve_from_choices(logged, cost, choices, weights=w, estimator=name, reward_model=model)[1][0]
            errors[name].append(est - truth)
        exposure = metrics.curve_from_choices(logged, cost, choices, weights=metrics.exposure_weights(logged))[1][0]
        errors["exposure"].append(exposure - truth)
    for name in ("ips", "snips", "dr"):
        assert abs(np.mean(errors[name])) < 0.01, (name, np.mean(errors[name]))  # unbiased (or nearly: snips)
        assert np.std(errors[name]) < 0.05, name
    # assuming random exposure when the logging policy looked at the prompt is badly biased
    assert abs(np.mean(errors["exposure"])) > 0.05


def test_doubly_robust_cost_is_exact_with_a_right_cost_model_and_less_variable_with_a_biased_one():
    """Off-policy mean cost: the cost model's mean over every prompt plus the logged residuals. A cost
    model that is right gives the true cost from any log; one off by a constant is corrected by the
    residuals; one that knows the prompt length varies far less across logs than the logged costs."""
    candidate = lambda x: np.where(x > 0.7, 0, np.where(x < 0.3, 1, 2))  # noqa: E731
    errors = {name: [] for name in ("logged costs", "dr", "dr, model +20%")}
    for seed in range(20):
        x, _, quality, logged, propensity = _logged(seed)
        rng = np.random.default_rng(100 + seed)
        length = rng.lognormal(0, 0.8, len(x))  # prompt length drives every model's cost
        true_cost = np.outer(length, [1.0, 2.0, 3.0]) * rng.uniform(0.9, 1.1, quality.shape)
        estimate = np.outer(length, [1.0, 2.0, 3.0])
        logged_cost = np.where(np.isnan(logged), estimate, true_cost)  # unobserved cells hold an estimate
        choices = candidate(x)[None, :]
        truth = metrics.curve_from_choices(quality, true_cost, choices)[0][0]
        w = metrics.propensity_weights(logged, propensity)
        for estimator in ("ips", "snips"):
            exact = metrics.curve_from_choices(logged, true_cost, choices, weights=w, estimator=estimator,
                                               cost_model=true_cost)[0][0]
            assert exact == pytest.approx(truth, rel=1e-12)  # every residual 0
        plain = metrics.curve_from_choices(logged, logged_cost, choices, weights=w, estimator="snips")[0][0]
        errors["logged costs"].append(plain / truth - 1)
        for name, model in (("dr", estimate), ("dr, model +20%", 1.2 * estimate)):
            est = metrics.curve_from_choices(logged, logged_cost, choices, weights=w, estimator="snips",
                                             cost_model=model)[0][0]
            errors[name].append(est / truth - 1)
    assert abs(np.mean(errors["dr, model +20%"])) < 0.01  # the residuals remove the model's bias
    assert np.std(errors["dr"]) < 0.5 * np.std(errors["logged costs"])
    assert np.std(errors["dr, model +20%"]) < 0.5 * np.std(errors["logged costs"])
    with pytest.raises(ValueError, match="cost_model must have shape"):
        metrics.curve_from_choices(logged, logged_cost, choices, weights=w, cost_model=estimate[:, :2])


def test_snips_stays_in_the_range_of_the_data_and_ess_counts_matching_prompts():
    x, _, quality, logged, propensity = _logged(0, n=500)
    w = metrics.propensity_weights(logged, propensity)
    cost = np.ones_like(quality)
    choices = np.stack([np.zeros(500, int), np.ones(500, int), np.full(500, 2)])
    snips = metrics.curve_from_choices(logged, cost, choices, weights=w, estimator="snips")[1]
    assert ((snips >= 0) & (snips <= 1)).all()
    ess = metrics.effective_sample_size(w, choices)
    assert (ess > 0).all() and (ess <= 500).all()
    assert ess[2] < ess[0]  # model 2 is only ever explored: few prompts, equal weights
    # a valid but tiny propensity (1e-300): one weight dominates, the size is 1 - not NaN from an overflow
    tiny = np.where(np.isnan(logged), np.nan, propensity)
    first = np.flatnonzero(~np.isnan(logged[:, 0]))[0]
    tiny[first, 0] = 1e-300
    with np.errstate(over="raise", invalid="raise"):
        assert metrics.effective_sample_size(metrics.propensity_weights(logged, tiny), choices[:1])[0] == \
            pytest.approx(1.0)
    assert metrics.effective_sample_size(np.zeros((0, 2)), np.zeros((2, 0), int)).tolist() == [0.0, 0.0]  # no prompts
    with pytest.raises(ValueError, match="no propensity"):
        metrics.propensity_weights(logged, np.where(np.isnan(logged), np.nan, np.nan))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        metrics.propensity_weights(logged, np.where(np.isnan(logged), np.nan, 1.5))
    with pytest.raises(ValueError, match="reward_model"):
        metrics.curve_from_choices(logged, cost, choices, weights=w, estimator="dr")
    with pytest.raises(ValueError, match="estimator must be"):
        metrics.curve_from_choices(logged, cost, choices, weights=w, estimator="magic")


@pytest.mark.parametrize("estimator", [None, "ips", "snips", "dr"])
def test_curve_in_knob_blocks_equals_one_pass(monkeypatch, estimator):
    """Large test sets are scored a block of knob values at a time (memory); the numbers and the
    missing-outcome error must not depend on the block size."""
    rng = np.random.default_rng(0)
    n, m, k = 3000, 5, 81
    q, c = rng.random((n, m)), rng.random((n, m))
    choices = rng.integers(0, m, (k, n)).astype(np.int8)
    options = {} if estimator is None else {
        "weights": rng.random((n, m)) * (rng.random((n, m)) > 0.5), "estimator": estimator, "reward_model": q}
    monkeypatch.setattr(metrics.curve, "_BLOCK_CELLS", 1 << 40)
    whole = metrics.curve_from_choices(q, c, choices, **options)
    monkeypatch.setattr(metrics.curve, "_BLOCK_CELLS", 7 * n + 3)  # 7 knob values a block, the last one short
    blocked = metrics.curve_from_choices(q, c, choices, **options)
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(whole, blocked, strict=True))
    if estimator is None:
        q[10, :] = np.nan
        q[20, 2] = np.nan
        errors = []
        for cells in (1 << 40, 7 * n + 3):
            monkeypatch.setattr(metrics.curve, "_BLOCK_CELLS", cells)
            with pytest.raises(ValueError, match="lack an outcome") as info:
                metrics.curve_from_choices(q, c, choices)
            errors.append(str(info.value))
        assert errors[0] == errors[1] and errors[0].startswith("2 of 3000 prompts")


def test_inputs_a_metric_cannot_mean_anything_by_are_refused_instead_of_scored():
    """Each once returned a plausible number (or NaN) where the rest of the module raises."""
    c2, q2 = np.array([1.0, 2.0]), np.array([0.5, 0.6])
    with pytest.raises(ValueError, match="reference_quality must be a finite quality"):
        metrics.savings_at_iso_quality(c2, q2, reference_cost=2.0, reference_quality=np.nan)  # once 0.5
    with pytest.raises(ValueError, match="must be finite"):  # the NaN model was taken for the best single model
        metrics.curve_summary(c2, q2, single_costs=np.array([1.0, 2.0]), single_qualities=np.array([0.6, np.nan]))
    with pytest.raises(ValueError, match="equal length"):
        metrics.curve_summary(c2, q2, single_costs=np.array([1.0, 2.0, 3.0]), single_qualities=q2)
    with pytest.raises(ValueError, match="mean qualities must be finite"):
        metrics.weak_and_strong(np.array([np.nan, 0.5]))  # once (1, 0): the NaN model "strong"
    assert metrics.bootstrap_ci(lambda i: np.inf if i[0] == 0 else float(i.mean()), 5, n_boot=50)[0] >= 0
    with pytest.raises(ValueError, match="not finite on all 5 bootstrap resamples"):
        metrics.bootstrap_ci(lambda i: np.inf, 5, n_boot=5)  # once (nan, nan)
    q = np.array([[np.nan, 1.0], [0.5, 0.2]])
    with pytest.raises(ValueError, match="a cell with a positive weight has no quality"):
        metrics.single_model_points(q, np.ones((2, 2)), weights=np.ones((2, 2)))  # once quality [nan, 0.6]
    with pytest.raises(ValueError, match=r"choices must be model indices in \[0, 2\)"):
        metrics.effective_sample_size(np.ones((3, 2)), np.array([[0, -1, 0]]))  # -1 once wrapped round
    with pytest.raises(ValueError, match=r"choices must have shape \(k, 3\)"):
        metrics.effective_sample_size(np.ones((3, 2)), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="reward_model must be finite"):
        metrics.curve_from_choices(np.ones((2, 2)), np.ones((2, 2)), np.array([[0, 1]]), weights=np.ones((2, 2)),
                                   estimator="dr", reward_model=np.full((2, 2), np.nan))
