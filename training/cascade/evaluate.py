"""Fit cascade policies on validation rows and score them on test rows, on the router's axes.

Everything here is matrices: :func:`evaluate_cascades` takes the router's prior, the answer scorer's
scores, the answers' pairwise agreement, the observed quality and cost of every (prompt, model), and
the validation and test row indices. It fits each policy *family* (:data:`FAMILIES`) on validation -
the acceptance combiner (cross-fitted), the chains worth trying, every threshold, the hull that
becomes the knob table - then runs each policy's points on the test rows. The curves are scored by
:func:`router_ml.metrics.curve_summary` against the single models of the same test rows, exactly as a
router's curve is, and the router alone (its own curve on the same rows), each single model, random
and the oracle come from :func:`training.baselines.evaluate_held_out`. Loading data, artifacts and
writing files is :mod:`training.cascade.command`'s job.

Numbers per policy: ``aiq``, ``savings_at_iso_quality`` (against the best single model of the test
rows, named in ``reference_model``), ``best_quality``, 95% percentile-bootstrap intervals over test
prompts (the policy fixed, as for routers), and per point the mean number of model calls, of
answer-scorer calls and the scorer's latency they add (``scorer_latency_ms`` per call, an input
figure: the scorer is not timed here).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_ml import metrics
from router_ml.cascade.combiner import FEATURE_SETS, Signals, fit_combiner
from router_ml.cascade.policy import (
    CascadePolicy,
    Outcome,
    candidate_chains,
    chain_points,
    fit_policy,
    rtc_points,
    run_point,
)
from router_ml.errors import RouterMLError
from training.baselines import evaluate_held_out
from training.evaluation import HeldOut, scoreable_rows

__all__ = ["CONTENDERS", "FAMILIES", "GUARD_AIQ", "HEADLINE", "auc", "evaluate_cascades", "fit_families",
           "guarded_headline", "select_headline"]

#: policy name -> (combiner feature set, kinds of operating point on its validation hull, margins tried)
FAMILIES: dict[str, tuple[str, tuple[str, ...], tuple[bool, ...]]] = {
    "cascade": ("full", ("chain", "route_then_cascade"), (False, True)),
    "chain": ("full", ("chain",), (False,)),
    "chain_margin": ("full", ("chain",), (True,)),
    "route_then_cascade": ("full", ("route_then_cascade",), (False,)),
    "route_then_cascade_margin": ("full", ("route_then_cascade",), (True,)),
    "chain_scorer_only": ("scorer", ("chain",), (False,)),
    "chain_agreement_prior": ("agreement_prior", ("chain",), (False,)),
}
#: the preferred headline family: fixed in development (scratch scorer, MMLU-Pro seeds 0-4), where the
#: chain with the margin rule was the steadiest on test; the richer hulls (the union of every kind,
#: route-then-cascade) fitted the ~700 validation rows too closely on some seeds
HEADLINE = "chain_margin"
#: ``headline="default"`` keeps :data:`HEADLINE` unless a contender's cross-validated AIQ on validation is
#: higher by more than this: chains alone never contain the router's own choices, and on data where the
#: router is hard to beat (one strong model cheaper than the rest) a chain loses to routing alone; the
#: margin is about three times the seed-to-seed spread of the AIQ on MMLU-Pro (0.003)
GUARD_AIQ = 0.01
#: ``headline="auto"`` picks among these, on validation alone (:func:`select_headline`)
CONTENDERS = ("cascade", "chain_margin", "route_then_cascade_margin", "chain", "route_then_cascade")
_BASELINES = ("random", "best-single", "oracle")


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for binary ``labels`` (ties count half); None when one class is absent.
    Soft labels are thresholded at 0.5.

    >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    keep = np.isfinite(scores) & np.isfinite(labels)
    s, y = scores[keep], labels[keep] >= 0.5
    pos, neg = int(y.sum()), int((~y).sum())
    if not pos or not neg:
        return None
    from scipy.stats import rankdata  # scikit-learn's dependency, so part of the training extra

    ranks = rankdata(s)  # ties get their average rank
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def fit_families(signals: Signals, quality: np.ndarray, cost: np.ndarray, *, models: tuple[str, ...],
                 wtps: np.ndarray, families: dict[str, tuple[str, tuple[str, ...], tuple[bool, ...]]] | None = None,
                 grid: int = 21, seed: int = 0) -> dict[str, CascadePolicy]:
    """Fit every policy family on these (validation) rows: name -> :class:`CascadePolicy`."""
    families = FAMILIES if families is None else families
    chains = candidate_chains(np.nanmean(cost, axis=0), np.nanmean(quality, axis=0))
    m = quality.shape[1]
    prefixes = [(j,) for j in range(m)] + [c[:k + 1] for c in chains for k in range(1, len(c) - 1)]
    fitted: dict[str, tuple[Any, dict]] = {}
    policies = {}
    for name, (feature_set, kinds, margins) in families.items():
        if feature_set not in fitted:
            fitted[feature_set] = fit_combiner(signals, quality, prefixes, features=FEATURE_SETS[feature_set],
                                               seed=seed)
        combiner, oof = fitted[feature_set]
        candidates = []
        for margin in margins:
            if "chain" in kinds:
                for chain in chains:
                    if all(chain[:k + 1] in oof for k in range(len(chain) - 1)):
                        candidates += chain_points(chain, oof, quality, cost, grid=grid,
                                                   prior=signals.prior if margin else None)
            if "route_then_cascade" in kinds:
                candidates += rtc_points(signals, oof, quality, cost, wtps[::2], grid=grid, margin=margin)
        policies[name] = fit_policy(candidates, models=models, combiner=combiner, name=name)
    return policies


def _bootstrap(point_cost: np.ndarray, point_quality: np.ndarray, quality: np.ndarray, cost: np.ndarray,
               n_boot: int, seed: int) -> dict[str, list[float | None]]:
    """Percentile intervals of the curve numbers over resamples of the test prompts (policy fixed)."""
    n = quality.shape[0]
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {key: [] for key in metrics.CURVE_KEYS}
    for _ in range(n_boot):
        counts = np.bincount(rng.integers(0, n, size=n), minlength=n) / n
        summary = metrics.curve_summary(point_cost @ counts, point_quality @ counts,
                                        single_costs=counts @ cost, single_qualities=counts @ quality)
        for key in values:
            if summary.get(key) is not None:
                values[key].append(float(summary[key]))
    return {key: [float(v) for v in np.quantile(vals, [0.025, 0.975])] if vals else [None, None]
            for key, vals in values.items()}


def _run(policy: CascadePolicy, signals: Signals, quality: np.ndarray, cost: np.ndarray,
         ) -> tuple[list[Outcome], np.ndarray, np.ndarray]:
    """Each point's outcomes and its per-prompt cost and quality, ``(points, n)`` each."""
    outcomes = [run_point(p, signals, policy.combiner, cost) for p in policy.points]
    return outcomes, np.stack([o.cost for o in outcomes]), np.stack([o.quality(quality) for o in outcomes])


def select_headline(signals: Signals, quality: np.ndarray, cost: np.ndarray, *, models: tuple[str, ...],
                    wtps: np.ndarray, families: dict[str, Any], grid: int = 21, seed: int = 0,
                    folds: int = 2) -> tuple[str, dict[str, float]]:
    """The contender (:data:`CONTENDERS`) with the best cross-validated AIQ on these (validation) rows:
    fitted on all folds but one, scored on that one. A policy's own validation curve cannot choose -
    the family with the most candidate points always wins in-sample (the richest hull overfits most)."""
    contenders = {k: v for k, v in families.items() if k in CONTENDERS} or families
    fold = np.random.default_rng(seed).permutation(quality.shape[0]) % folds
    scores: dict[str, list[float]] = {name: [] for name in contenders}
    for f in range(folds):
        fit, held = fold != f, fold == f
        fitted = fit_families(signals.subset(fit), quality[fit], cost[fit], models=models, wtps=wtps,
                              families=contenders, grid=grid, seed=seed)
        sc, sq = metrics.single_model_points(quality[held], cost[held])
        for name, policy in fitted.items():
            _, pc, pq = _run(policy, signals.subset(held), quality[held], cost[held])
            aiq = metrics.curve_summary(pc.mean(axis=1), pq.mean(axis=1), single_costs=sc, single_qualities=sq)["aiq"]
            scores[name].append(np.nan if aiq is None else aiq)
    means = {name: float(np.mean(v)) for name, v in scores.items()}
    return max(means, key=lambda k: -np.inf if np.isnan(means[k]) else means[k]), means


def guarded_headline(cv: dict[str, float]) -> str:
    """``headline="default"``'s pick from the contenders' cross-validated AIQ: :data:`HEADLINE`, unless the
    best contender is higher by more than :data:`GUARD_AIQ` (then that one).

    >>> guarded_headline({"chain_margin": 0.700, "cascade": 0.705})
    'chain_margin'
    >>> guarded_headline({"chain_margin": 0.506, "cascade": 0.538})
    'cascade'
    """
    finite = {k: v for k, v in cv.items() if not np.isnan(v)}
    if not finite:
        return HEADLINE
    best = max(finite, key=finite.__getitem__)
    mine = finite.get(HEADLINE)
    return HEADLINE if mine is not None and not finite[best] > mine + GUARD_AIQ else best


def _score_policy(policy: CascadePolicy, signals: Signals, quality: np.ndarray, cost: np.ndarray, *,
                  scorer_latency_ms: float, latency_s: np.ndarray | None, n_boot: int, seed: int) -> dict[str, Any]:
    outcomes, point_cost, point_quality = _run(policy, signals, quality, cost)
    c, q = point_cost.mean(axis=1), point_quality.mean(axis=1)
    sc, sq = metrics.single_model_points(quality, cost)
    report: dict[str, Any] = metrics.curve_summary(c, q, single_costs=sc, single_qualities=sq)
    if n_boot:
        report["ci95"] = _bootstrap(point_cost, point_quality, quality, cost, n_boot, seed)
    val_c, val_q = (np.array(v) for v in zip(*policy.validation, strict=True))
    report["validation"] = metrics.curve_summary(val_c, val_q, single_costs=sc, single_qualities=sq)
    points = []
    for p, o, pc, pq in zip(policy.points, outcomes, c.tolist(), q.tolist(), strict=True):
        entry = {**p.to_json(policy.models), "cost": pc, "quality": pq, "calls": float(o.calls.mean()),
                 "escalated": float((o.calls > 1).mean()), "scorer_calls": float(o.scored.mean()),
                 "scorer_ms": float(o.scored.mean() * scorer_latency_ms)}
        if latency_s is not None:
            entry["model_latency_s"] = _called_latency(p, o, latency_s)
        points.append(entry)
    report["points"] = points
    report["curve"] = {"cost": c.tolist(), "quality": q.tolist()}
    return report


def _called_latency(point: Any, outcome: Outcome, latency_s: np.ndarray) -> float | None:
    """Mean summed latency (s) of the calls a chain made, where the data logs latency (None otherwise);
    route-then-cascade's calls are the answered model and the first one, not reconstructed here."""
    if point.kind != "chain" or np.isnan(latency_s[:, list(point.models)]).all():
        return None
    steps = np.nan_to_num(latency_s[:, list(point.models)])
    summed = np.cumsum(steps, axis=1)[np.arange(len(outcome.calls)), outcome.calls - 1]
    return float(summed.mean())


def evaluate_cascades(signals: Signals, quality: np.ndarray, cost: np.ndarray, *, val_rows: np.ndarray,
                      test_rows: np.ndarray, models: tuple[str, ...], wtps: np.ndarray,
                      families: dict[str, tuple[str, tuple[str, ...], tuple[bool, ...]]] | None = None,
                      scorer_latency_ms: float = 0.0,
                      latency_s: np.ndarray | None = None, n_boot: int = 200, seed: int = 0,
                      grid: int = 21, headline: str = "default") -> tuple[dict[str, Any], dict[str, CascadePolicy]]:
    """Fit on ``val_rows``, score on ``test_rows`` (rows with every outcome, as routers are scored).

    Returns the report - ``test`` (the numbers of the family ``headline`` names; with ``"auto"`` of the
    one :func:`select_headline` picks on validation; with ``"default"`` :data:`HEADLINE` unless that pick
    beats it by more than :data:`GUARD_AIQ`; ``reference_model``),
    ``policies`` (every family, with its points on test and validation), ``router_only``,
    ``baselines``, ``scorer_auc`` / ``acceptance_auc`` per model on test, ``rows`` - and the fitted
    policies. ``wtps`` is the router's knob grid (route-then-cascade sweeps it).
    """
    val = scoreable_rows(quality, np.asarray(val_rows))
    test = scoreable_rows(quality, np.asarray(test_rows))
    v_sig, t_sig = signals.subset(val), signals.subset(test)
    families = FAMILIES if families is None else families
    policies = fit_families(v_sig, quality[val], cost[val], models=models, wtps=np.asarray(wtps), families=families,
                            grid=grid, seed=seed)
    if headline not in ("auto", "default") and headline not in policies:
        raise RouterMLError(f"headline policy {headline!r}: choose default, auto or one of {', '.join(policies)}")
    selection: dict[str, Any] = {"by": "fixed"}
    if headline in ("auto", "default"):
        best, cv = select_headline(v_sig, quality[val], cost[val], models=models, wtps=np.asarray(wtps),
                                   families=families, grid=grid, seed=seed)
        selection = {"by": "2-fold cross-validated AIQ on the validation rows", "aiq": cv}
        if headline == "default":
            selection["by"] = (f"{HEADLINE} unless a contender's 2-fold cross-validated AIQ on the validation rows "
                               f"is higher by more than {GUARD_AIQ}")
            best = guarded_headline(cv)
        headline = best
    held = HeldOut(quality=quality[test], cost=cost[test], cost_est=signals.cost_est[test], wtps=np.asarray(wtps),
                   models=models, n_boot=n_boot, seed=seed)
    router = evaluate_held_out(signals.prior[test], held, baselines=_BASELINES)
    baselines = router["test"].pop("baselines")
    lat = None if latency_s is None else latency_s[test]
    scored = {name: _score_policy(p, t_sig, quality[test], cost[test], scorer_latency_ms=scorer_latency_ms,
                                  latency_s=lat, n_boot=n_boot, seed=seed) for name, p in policies.items()}
    single = baselines["best-single"]
    combiner = policies[headline].combiner
    report = {
        "test": {**{k: v for k, v in scored[headline].items() if k not in ("points", "curve")},
                 "policy": headline, "selection": selection,
                 "reference_model": single["best_model"], "reference_cost": single["best_model_cost"],
                 "reference_quality": single["best_model_quality"],
                 "router_only": {k: router["test"].get(k) for k in (*metrics.CURVE_KEYS, "ci95")}},
        "policies": scored,
        "router_only": {**router["test"], "curve": router["router_curve"]},
        "baselines": {**baselines, "curves": router["baseline_curves"], "singles": router["singles"]},
        "scorer_auc": {m: auc(t_sig.score[:, j], quality[test, j]) for j, m in enumerate(models)},
        "acceptance_auc": {m: auc(combiner.accept_scores(t_sig, (j,)), quality[test, j]) for j, m in enumerate(models)},
        "rows": {"validation": int(len(val)), "test": int(len(test))},
        "scorer_latency_ms": scorer_latency_ms,
    }
    return report, policies
