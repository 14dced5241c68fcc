"""Cascade policies on small matrices with known answers: costs, knob table, JSON, agreement, combiner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from router_ml.cascade.agreement import agreement, agreement_matrix, final_answer
from router_ml.cascade.combiner import Combiner, Signals, fit_combiner, fit_logistic
from router_ml.cascade.policy import (
    CascadePolicy,
    Point,
    candidate_chains,
    chain_points,
    fit_policy,
    rtc_points,
    run_point,
)
from router_ml.errors import RouterMLError

RAW = Combiner(("score",))  # no weights: a step's acceptance score is the scorer's own output


def two_models(n: int = 1000, seed: int = 0):
    """A cheap model (cost 1, right 60% of the time) and a strong one (cost 10, always right)."""
    rng = np.random.default_rng(seed)
    cheap_right = (rng.random(n) < 0.6).astype(float)
    quality = np.column_stack([cheap_right, np.ones(n)])
    cost = np.column_stack([np.ones(n), np.full(n, 10.0)])
    return quality, cost


def signals_for(score: np.ndarray, cost: np.ndarray, prior: np.ndarray | None = None) -> Signals:
    return Signals(prior=np.full(score.shape, 0.5) if prior is None else prior, score=score, cost_est=cost)


def test_a_perfect_scorer_escalates_exactly_the_wrong_answers_and_pays_for_both_calls():
    quality, cost = two_models()
    wrong = 1 - quality[:, 0]
    outcome = run_point(Point("chain", (0, 1), (0.5,)), signals_for(quality.copy(), cost), RAW, cost)
    assert outcome.quality(quality).mean() == 1.0
    # every prompt pays the cheap call, the escalated ones the strong call on top
    assert outcome.cost.mean() == pytest.approx(1 + 10 * wrong.mean())
    assert np.array_equal(outcome.calls, 1 + wrong.astype(int))
    assert np.array_equal(outcome.answered, wrong.astype(int))
    assert outcome.scored.tolist() == [1] * len(wrong)


def test_threshold_ends_need_no_scorer_and_give_the_single_models():
    quality, cost = two_models(50)
    sig = signals_for(quality.copy(), cost)
    accept_all = run_point(Point("chain", (0, 1), (-np.inf,)), sig, RAW, cost)
    escalate_all = run_point(Point("chain", (0, 1), (np.inf,)), sig, RAW, cost)
    assert accept_all.cost.mean() == 1.0 and accept_all.quality(quality).mean() == quality[:, 0].mean()
    assert escalate_all.cost.mean() == 11.0 and escalate_all.quality(quality).mean() == 1.0
    assert accept_all.scored.sum() == escalate_all.scored.sum() == 0


def test_three_step_chain_stops_at_the_first_accepted_answer():
    quality = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    cost = np.tile([1.0, 2.0, 5.0], (3, 1))
    outcome = run_point(Point("chain", (0, 1, 2), (0.5, 0.5)), signals_for(quality.copy(), cost), RAW, cost)
    assert outcome.answered.tolist() == [1, 2, 0]
    assert outcome.cost.tolist() == [3.0, 8.0, 1.0]
    assert outcome.calls.tolist() == [2, 3, 1]
    assert outcome.scored.tolist() == [2, 2, 1]


def noisy_policy(seed: int = 0) -> tuple[CascadePolicy, np.ndarray, np.ndarray, Signals]:
    quality, cost = two_models(2000, seed)
    rng = np.random.default_rng(seed + 1)
    score = np.clip(0.3 + 0.4 * quality + rng.normal(0, 0.25, quality.shape), 0, 1)
    sig = signals_for(score, cost)
    candidates = chain_points((0, 1), {(0,): score[:, 0]}, quality, cost, grid=21)
    return fit_policy(candidates, models=("cheap", "strong"), combiner=RAW), quality, cost, sig


def test_the_knob_table_is_a_monotone_path_from_cheapest_to_best():
    policy, quality, cost, sig = noisy_policy()
    assert len(policy.points) >= 3
    starts = [p.min_wtp for p in policy.points]
    thresholds = [p.thresholds[0] for p in policy.points]
    val_cost, val_quality = zip(*policy.validation, strict=True)
    assert starts[0] == 0.0 and starts == sorted(starts) and len(set(starts)) == len(starts)
    assert thresholds == sorted(thresholds)  # a higher willingness to pay escalates more, never less
    assert list(val_cost) == sorted(val_cost) and list(val_quality) == sorted(val_quality)
    assert policy.point(0.0) is policy.points[0] and policy.point(np.inf) is policy.points[-1]
    assert policy.point(0.0).thresholds == (-np.inf,)  # the cheapest point: the cheap model alone
    # each point maximises quality - cost / wtp among the table's points in its knob range
    for r, p in enumerate(policy.points[1:], 1):
        w = p.min_wtp * 1.0001
        utilities = [q - c / w for c, q in policy.validation]
        assert int(np.argmax(utilities)) == r
    with pytest.raises(ValueError, match="willingness_to_pay"):
        policy.point(-1.0)


def test_policy_json_round_trip_keeps_every_decision(tmp_path):
    policy, quality, cost, sig = noisy_policy()
    quality3 = np.column_stack([quality, quality[:, 1]])
    cost3 = np.column_stack([cost, cost[:, 1] * 2])
    sig3 = Signals(np.column_stack([sig.prior, sig.prior[:, :1]]), np.column_stack([sig.score, sig.score[:, :1]]),
                   cost3)
    combiner, _ = fit_combiner(sig3, quality3, [(0,), (1,), (2,)], features=("score", "prior"))
    rtc = Point("route_then_cascade", thresholds=(0.6,), first_wtp=0.0, escalate_wtp=np.inf, min_wtp=3.0)
    chain = Point("chain", (0, 2), (0.1,), min_wtp=7.5, margin=True)
    original = CascadePolicy(("cheap", "strong", "dearest"), combiner, (policy.points[0], rtc, chain),
                             ((1.0, 0.5), (2.0, 0.7), (3.0, 0.9)), name="mixed")
    path = original.save(tmp_path / "policy.json")
    json.loads(path.read_text())  # strict JSON: no Infinity literals
    assert "Infinity" not in path.read_text()
    loaded = CascadePolicy.load(path)
    assert loaded.points == original.points and loaded.validation == original.validation
    assert loaded.models == original.models and loaded.name == "mixed"
    for point in loaded.points:
        a, b = run_point(point, sig3, original.combiner, cost3), run_point(point, sig3, loaded.combiner, cost3)
        assert np.array_equal(a.answered, b.answered) and np.array_equal(a.cost, b.cost)


def test_loading_refuses_other_files_and_unknown_models(tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"format": "router-ml-metrics", "version": 1}))
    with pytest.raises(RouterMLError, match="other.json.*not a router-ml-cascade-policy"):
        CascadePolicy.load(bad)
    policy = noisy_policy()[0].to_json()
    policy["points"][0]["models"] = ["cheap", "mystery"]
    with pytest.raises(RouterMLError, match="mystery"):
        CascadePolicy.from_json(policy)


def test_route_then_cascade_escalates_to_a_pricier_model_the_router_picks():
    # model 0 cheap, 1 mid, 2 dear; the prior says 2 is best, 1 second
    quality = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    cost = np.tile([1.0, 3.0, 9.0], (2, 1))
    prior = np.tile([0.3, 0.6, 0.9], (2, 1))
    sig = Signals(prior=prior, score=quality.copy(), cost_est=cost)
    cheap_first = Point("route_then_cascade", thresholds=(0.5,), first_wtp=0.0, escalate_wtp=np.inf)
    outcome = run_point(cheap_first, sig, RAW, cost)
    assert outcome.answered.tolist() == [2, 0] and outcome.cost.tolist() == [10.0, 1.0]
    thrifty = run_point(Point("route_then_cascade", thresholds=(0.5,), first_wtp=0.0, escalate_wtp=1.0), sig, RAW, cost)
    assert thrifty.answered.tolist() == [1, 0] and thrifty.cost.tolist() == [4.0, 1.0]
    dear_first = run_point(Point("route_then_cascade", thresholds=(np.inf,), first_wtp=np.inf), sig, RAW, cost)
    assert dear_first.answered.tolist() == [2, 2] and dear_first.calls.tolist() == [1, 1]  # nothing pricier
    candidates = rtc_points(sig, {(j,): quality[:, j] for j in range(3)}, quality, cost, np.array([0.0, 1.0, np.inf]))
    assert {p.kind for _, _, p in candidates} == {"route_then_cascade"}
    assert max(q for _, q, _ in candidates) == 1.0


def test_margin_escalates_where_the_next_model_is_predicted_to_gain_most():
    # both cheap answers look equally doubtful (0.5); the router expects the strong model to get only
    # prompt 1 right, so the margin rule escalates prompt 1 alone
    cost = np.tile([1.0, 10.0], (2, 1))
    sig = Signals(prior=np.array([[0.5, 0.2], [0.5, 0.9]]), score=np.full((2, 2), 0.5), cost_est=cost)
    plain = run_point(Point("chain", (0, 1), (0.0,)), sig, RAW, cost)
    margin = run_point(Point("chain", (0, 1), (0.0,), margin=True), sig, RAW, cost)
    assert plain.answered.tolist() == [0, 0]
    assert margin.answered.tolist() == [0, 1] and margin.cost.tolist() == [1.0, 11.0]
    rtc = run_point(Point("route_then_cascade", thresholds=(0.0,), first_wtp=0.0, margin=True), sig, RAW, cost)
    assert rtc.answered.tolist() == [0, 1]


def test_candidate_chains_skip_models_far_below_a_cheaper_one():
    mean_cost = np.array([1.0, 2.0, 3.0, 10.0])
    mean_quality = np.array([0.6, 0.3, 0.58, 0.7])  # model 1 is much worse than the cheaper model 0
    chains = candidate_chains(mean_cost, mean_quality)
    assert (0, 3) in chains and (0, 2, 3) in chains
    assert not any(1 in chain for chain in chains)
    assert all(mean_cost[list(c)].tolist() == sorted(mean_cost[list(c)]) for c in chains)


def test_final_answers_and_agreement_across_formats():
    assert final_answer("Let's think. The answer is (C).") == "c"
    assert final_answer("so \\boxed{B}") == final_answer("Answer: B") == "b"
    assert final_answer("The answer is $1,250.00") == final_answer("#### 1250")
    assert final_answer("The answer is (A). Wait, no: the answer is (D).") == "d"  # the last statement wins
    assert final_answer("no conclusion here") is None and final_answer("") is None
    assert agreement("The answer is (A)", "the answer is B") == 0.0
    same = "it depends on the ratio of the two forces acting on the body"
    assert agreement(same, same) == 1.0
    assert 0.0 <= agreement(same, "completely unrelated words about cooking pasta") < 0.3
    matrix = agreement_matrix([["The answer is A", "answer is (A)", None]])
    assert matrix.shape == (1, 3, 3) and matrix[0, 0, 1] == matrix[0, 1, 0] == 1.0
    assert np.isnan(matrix[0, 0, 2]) and np.isnan(matrix[0, 2, 2])


def test_combiner_learns_that_agreement_predicts_a_right_answer():
    rng = np.random.default_rng(0)
    n = 600
    quality = (rng.random((n, 2)) < 0.6).astype(float)
    agree = np.where(quality[:, 1] == 1, rng.random(n) < 0.8, rng.random(n) < 0.2).astype(float)
    pair = np.zeros((n, 2, 2))
    pair[:, 0, 1] = pair[:, 1, 0] = agree
    sig = Signals(prior=np.full((n, 2), 0.6), score=np.full((n, 2), 0.5), cost_est=np.ones((n, 2)), agreement=pair)
    combiner, oof = fit_combiner(sig, quality, [(0, 1)], features=("score", "prior", "agreement"))
    assert combiner.weights[(0, 1)][2] > 1.0  # the agreement weight
    accept = combiner.accept_scores(sig, (0, 1))
    assert accept[agree == 1].mean() > 0.7 > 0.35 > accept[agree == 0].mean()
    assert oof[(0, 1)].shape == (n,) and np.isfinite(oof[(0, 1)]).all()
    w = fit_logistic(np.array([[0.0], [0.0], [0.0], [0.0]]), np.array([1.0, 1.0, 1.0, 0.0]))
    assert 1 / (1 + np.exp(-w[-1])) == pytest.approx(0.75, abs=1e-6)  # unpenalised intercept: the base rate


def test_the_serving_loop_reproduces_the_matrix_outcome_prompt_by_prompt():
    """next_call() with only the answers received so far makes the calls run_point() accounts for."""
    rng = np.random.default_rng(5)
    n, m = 60, 3
    quality = (rng.random((n, m)) < [0.5, 0.6, 0.8]).astype(float)
    cost = np.tile([1.0, 2.0, 9.0], (n, 1))
    pair = rng.random((n, m, m))
    sig = Signals(prior=rng.random((n, m)), score=rng.random((n, m)), cost_est=cost, agreement=pair)
    combiner, _ = fit_combiner(sig, quality, [(0,), (1,), (2,), (0, 1)], features=("score", "prior", "agreement"))
    policy = CascadePolicy(("a", "b", "c"), combiner, ())
    points = [Point("chain", (0, 1, 2), (0.5, 0.6)), Point("chain", (0, 1, 2), (-0.1, 0.0), margin=True),
              Point("route_then_cascade", thresholds=(0.55,), first_wtp=0.3, escalate_wtp=np.inf),
              Point("route_then_cascade", thresholds=(0.0,), first_wtp=0.0, escalate_wtp=5.0, margin=True)]
    for point in points:
        expected = run_point(point, sig, combiner, cost)
        for i in range(n):
            row = sig.subset(np.array([i]))
            hidden = Signals(row.prior, np.full((1, m), np.nan), row.cost_est, np.full((1, m, m), np.nan))
            called: list[int] = []
            while (j := policy.next_call(point, hidden, called)) is not None:
                called.append(j)
                hidden.score[0, j] = row.score[0, j]  # the answer arrives and is scored
                for k in called:
                    hidden.agreement[0, j, k] = hidden.agreement[0, k, j] = row.agreement[0, j, k]
            assert called[-1] == expected.answered[i] and len(called) == expected.calls[i], (point, i)
            assert cost[i, called].sum() == expected.cost[i]
