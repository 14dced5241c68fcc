"""Scoring routers on a held-out split, next to the baselines every report shows.

A router's predicted quality and the runtime's cost estimate go through the policy
(:func:`router_ml.policy.choose`) at every willingness-to-pay value of the knob grid; the
chosen models' *observed* quality and cost on the test prompts give its cost-quality curve, from
which :mod:`router_ml.metrics` computes AIQ, savings at iso-quality, best quality and - for two
models - RouteLLM's APGR and CPT. Baselines:

- ``best-single``: each model alone, and the non-decreasing convex hull of those points
  (RouterBench's "zero router": mixing single models at random);
- ``random``: each prompt goes to the best single model with probability ``s``, else to the
  cheapest one, for ``s`` from 0 to 1 - the random router at matched cost (RouteLLM's random
  router for two models);
- ``oracle``: the policy applied to the true outcomes (at ``inf`` it picks the cheapest model
  reaching the best available quality): an upper bound, not a router;
- ``knn``, ``logreg``: trained on the same embeddings, scored like the router.

**Logged traffic** (test records with outcomes for only some models) is scored with inverse
propensity weighting: a chosen model's observed quality counts ``1 / p_m`` times, where ``p_m`` is
the share of test records that observed model ``m``, and a choice whose outcome was not observed
counts 0. This is unbiased when which models were observed does not depend on the prompt (random
exploration, like the uniformly masked copies in the tests); with every outcome observed it is the
plain mean. The oracle needs every outcome and is left out then. Costs of unobserved cells are the
imputed ones (:mod:`training.costs`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_ml import metrics
from router_ml.policy import choose

__all__ = [
    "curve_metrics", "evaluate_scores", "ips_weights", "oracle_baseline", "random_baseline", "single_model_baseline",
]


def ips_weights(quality: np.ndarray) -> np.ndarray:
    """``(n, m)`` weights ``1 / p_m`` for observed cells, 0 for unobserved ones (module doc)."""
    observed = ~np.isnan(quality)
    share = observed.mean(axis=0)
    with np.errstate(divide="ignore"):
        return np.where(observed, 1.0 / np.where(share > 0, share, np.inf), 0.0)


def _curve(quality: np.ndarray, cost: np.ndarray, choices: np.ndarray, idx: np.ndarray | None = None):
    rows = np.arange(quality.shape[0])
    weights = ips_weights(quality) if np.isnan(quality).any() else None
    q = np.nan_to_num(quality)[rows[None, :], choices]                   # (k, n)
    if weights is not None:
        q = q * weights[rows[None, :], choices]
    c = cost[rows[None, :], choices]
    if idx is not None:
        q, c = q[:, idx], c[:, idx]
    return c.mean(axis=1), q.mean(axis=1)


def _single_points(quality: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean cost and (observed) mean quality of always choosing each model."""
    return cost.mean(axis=0), np.nanmean(quality, axis=0)


def curve_metrics(costs: np.ndarray, qualities: np.ndarray, single_costs: np.ndarray,
                  single_qualities: np.ndarray) -> dict[str, float | None]:
    """AIQ over the single models' cost range, savings at the best single model's quality, best quality."""
    best = int(np.argmax(single_qualities))
    cost_range = (float(single_costs.min()), float(single_costs.max()))
    out: dict[str, float | None] = {
        "aiq": float(metrics.aiq(costs, qualities, cost_range=cost_range)) if cost_range[1] > cost_range[0] else None,
        "savings_at_iso_quality": metrics.savings_at_iso_quality(
            costs, qualities, reference_cost=float(single_costs[best]),
            reference_quality=float(single_qualities[best])) if single_costs[best] > 0 else None,
        "best_quality": float(metrics.best_quality(qualities)),
        "max_mean_cost": float(np.max(costs)),
    }
    return out


def _ci(statistic, n: int, n_boot: int, seed: int) -> list[float | None]:
    """Bootstrap interval; a resample where the statistic is undefined counts as NaN (skipped)."""
    def safe(idx):
        try:
            value = statistic(idx)
        except ValueError:
            return np.nan
        return np.nan if value is None else value

    try:
        low, high = metrics.bootstrap_ci(safe, n, n_boot=n_boot, seed=seed)
    except ValueError:
        return [None, None]
    return [None if np.isnan(low) else float(low), None if np.isnan(high) else float(high)]


def _with_ci(quality, cost, choices, n_boot, seed, key_fn) -> dict[str, list[float | None]]:
    n = quality.shape[0]

    def stat(name):
        def fn(idx):
            c, q = _curve(quality, cost, choices, idx)
            sc, sq = _single_points(quality[idx], cost[idx])
            return key_fn(c, q, sq, sc)[name]
        return fn

    return {name: _ci(stat(name), n, n_boot, seed) for name in ("aiq", "savings_at_iso_quality", "best_quality")}


def evaluate_scores(pred_quality: np.ndarray, cost_est: np.ndarray, quality: np.ndarray, cost: np.ndarray, *,
                    wtps: np.ndarray, n_boot: int = 200, seed: int = 0,
                    two_model: tuple[int, int] | None = None) -> dict[str, Any]:
    """Metrics of a router (predicted quality + cost estimate) on complete test rows."""
    choices = np.stack([choose(pred_quality, cost_est, w) for w in wtps])
    return _choices_report(choices, quality, cost, wtps=wtps, n_boot=n_boot, seed=seed,
                           scores=None if two_model is None else
                           (pred_quality[:, two_model[1]] - pred_quality[:, two_model[0]]),
                           two_model=two_model)


def _choices_report(choices, quality, cost, *, wtps, n_boot, seed, scores=None, two_model=None):
    sc, sq = _single_points(quality, cost)
    c, q = _curve(quality, cost, choices)
    report: dict[str, Any] = curve_metrics(c, q, sc, sq)
    if n_boot:
        report["ci95"] = _with_ci(quality, cost, choices, n_boot, seed,
                                  lambda c, q, sq, sc: curve_metrics(c, q, sc, sq))
    report["estimator"] = "ips" if np.isnan(quality).any() else "exact"
    if scores is not None and two_model is not None and not np.isnan(quality).any():
        weak, strong = two_model
        report.update(metrics.routellm_metrics(scores, quality[:, weak], quality[:, strong]))
        if n_boot:
            for key in ("apgr", "cpt_50", "cpt_80"):
                report["ci95"][key] = _ci(
                    lambda idx, key=key: metrics.routellm_metrics(scores[idx], quality[idx, weak],
                                                                  quality[idx, strong])[key],
                    len(scores), n_boot, seed)
    report["curve"] = {"willingness_to_pay": [None if np.isinf(w) else float(w) for w in wtps],
                       "cost": c.tolist(), "quality": q.tolist()}
    return report


def single_model_baseline(quality: np.ndarray, cost: np.ndarray, models: tuple[str, ...]) -> dict[str, Any]:
    """Each model alone, and the AIQ of their non-decreasing convex hull (the "zero router")."""
    sc, sq = _single_points(quality, cost)
    best = int(np.argmax(sq))
    report = curve_metrics(sc, sq, sc, sq)
    report.update({"best_model": models[best], "best_model_cost": float(sc[best]),
                   "best_model_quality": float(sq[best]),
                   "models": {m: {"cost": float(sc[j]), "quality": float(sq[j])} for j, m in enumerate(models)}})
    return report


def random_baseline(quality: np.ndarray, cost: np.ndarray, *, points: int = 21, seed: int = 0, n_boot: int = 0,
                    two_model: tuple[int, int] | None = None) -> dict[str, Any]:
    """Random routing between the cheapest and the best single model at shares 0..1 (seeded)."""
    sc, sq = _single_points(quality, cost)
    cheap, best = int(np.argmin(sc)), int(np.argmax(sq))
    rng = np.random.default_rng(seed)
    draws = rng.random(quality.shape[0])
    shares = np.linspace(0.0, 1.0, points)
    choices = np.where(draws[None, :] < shares[:, None], best, cheap)
    scores = rng.random(quality.shape[0]) if two_model is not None else None
    return _choices_report(choices, quality, cost, wtps=shares, n_boot=n_boot, seed=seed, scores=scores,
                           two_model=two_model)


def oracle_baseline(quality: np.ndarray, cost: np.ndarray, *, wtps: np.ndarray,
                    two_model: tuple[int, int] | None = None) -> dict[str, Any]:
    """The policy on the true outcomes: an upper bound on any router's curve (complete rows only)."""
    if np.isnan(quality).any():
        return {"aiq": None, "best_quality": None, "note": "needs every outcome; not available on logged traffic"}
    choices = np.stack([choose(quality, cost, w) for w in wtps])
    scores = None
    if two_model is not None:
        weak, strong = two_model
        scores = quality[:, strong] - quality[:, weak]
    report = _choices_report(choices, quality, cost, wtps=wtps, n_boot=0, seed=0, scores=scores, two_model=two_model)
    top = choose(quality, cost, np.inf)
    rows = np.arange(len(top))
    report["oracle_point"] = {"cost": float(cost[rows, top].mean()), "quality": float(quality[rows, top].mean())}
    return report
