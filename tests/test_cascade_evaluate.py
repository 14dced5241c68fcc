"""Cascade evaluation on a synthetic table: the report's keys, the router-only and baseline reference,
and that a scorer that reads the answers beats routing alone; the plot and policy files it writes."""

from __future__ import annotations

import numpy as np
import pytest

from router_ml.metrics import CURVE_KEYS
from training.cascade.combiner import Signals
from training.cascade.command import compact, write_outputs
from training.cascade.evaluate import FAMILIES, auc, evaluate_cascades
from training.cascade.policy import CascadePolicy

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
                             scorer_latency_ms=2.0, n_boot=30, grid=11)


def test_report_keys_and_the_references_beside_the_cascade(evaluated):
    report, policies = evaluated
    test = report["test"]
    for key in (*CURVE_KEYS, "ci95", "policy", "reference_model", "reference_cost", "reference_quality", "router_only"):
        assert key in test, key
    assert test["reference_model"] == "large" and test["policy"] == "cascade"
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
    loaded = CascadePolicy.load(files["cascade"])
    assert loaded.points == policies["cascade"].points and files["cascade"].endswith("policy.json")
    small = compact(report)
    assert "points" not in small["policies"]["chain"] and "curve" not in small["router_only"]
    assert small["test"] == report["test"]


def test_auc_matches_the_rank_definition():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(300), 1)  # many ties
    labels = (rng.random(300) < scores).astype(float)
    pairs = scores[labels == 1][:, None] - scores[labels == 0][None, :]
    assert auc(scores, labels) == pytest.approx(((pairs > 0) + 0.5 * (pairs == 0)).mean())
    assert auc(scores, np.ones(300)) is None
