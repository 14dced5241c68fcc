"""The baselines every held-out report shows, and the router scored next to them.

:data:`BASELINES` maps a baseline's name (``eval.baselines`` in a config) to its scoring function:

- ``best-single``: each model alone, and the non-decreasing convex hull of those points
  (RouterBench's "zero router": mixing single models at random);
- ``random``: each prompt goes to the best single model with probability ``s``, else to the
  cheapest one, for ``s`` from 0 to 1 - the random router at matched cost (RouteLLM's random
  router for two models);
- ``oracle``: the policy applied to the true outcomes (at ``inf`` it picks the cheapest model
  reaching the best available quality): an upper bound, not a router;
- ``knn``, ``logreg``: trained on the same embeddings as the router, scored like it (these need
  the training split, so only training computes them).

:func:`evaluate_held_out` scores a router's predictions next to the named baselines, with
:func:`paired_differences` (router minus baseline on the same bootstrap resamples) and :func:`summary`
(a report without its curve and draws). Every curve is scored by :mod:`training.evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router_ml import metrics
from router_ml.errors import RouterMLError
from router_ml.policy import choose
from training.evaluation import (
    HeldOut,
    _two_model_scores,
    knob_choices,
    percentile_interval,
    score_choices,
    score_predictions,
)

__all__ = [
    "BASELINES",
    "PAIRED_KEYS",
    "Baseline",
    "evaluate_held_out",
    "paired_differences",
    "summary",
]


# --- baselines ------------------------------------------------------------------------------------


def _single_points(held: HeldOut) -> tuple[np.ndarray, np.ndarray]:
    return metrics.single_model_points(held.quality, held.cost, weights=held.weights())


def _best_single(held: HeldOut) -> dict[str, Any]:
    """Each model alone, and the AIQ of their non-decreasing convex hull (the "zero router")."""
    sc, sq = _single_points(held)
    best = int(np.argmax(sq))
    report: dict[str, Any] = metrics.curve_summary(sc, sq, single_costs=sc, single_qualities=sq)
    report.update({"best_model": held.models[best], "best_model_cost": float(sc[best]),
                   "best_model_quality": float(sq[best]),
                   "models": {m: {"cost": float(sc[j]), "quality": float(sq[j])} for j, m in enumerate(held.models)}})
    return report


def _random(held: HeldOut, *, points: int = 21) -> dict[str, Any]:
    """Random routing between the cheapest and the best single model at shares 0..1 (seeded)."""
    sc, sq = _single_points(held)
    cheap, best = int(np.argmin(sc)), int(np.argmax(sq))
    rng = np.random.default_rng(held.seed)
    draws = rng.random(held.quality.shape[0])
    shares = np.linspace(0.0, 1.0, points)
    choices = np.where(draws[None, :] < shares[:, None], best, cheap)
    scores = rng.random(held.quality.shape[0]) if held.two_model is not None else None
    return score_choices(choices, held, wtps=shares, scores=scores)


def _oracle(held: HeldOut) -> dict[str, Any]:
    """The policy on the true outcomes: an upper bound on any router's curve (complete rows only)."""
    if held.logged:
        return {"aiq": None, "best_quality": None, "note": "needs every outcome; not available on logged traffic"}
    quality, cost = held.quality, held.cost
    wtps = held.grid(quality, cost)
    choices = knob_choices(quality, cost, wtps)
    report = score_choices(choices, held, wtps=wtps, n_boot=0, scores=_two_model_scores(quality, held))
    top = choose(quality, cost, np.inf)
    rows = np.arange(len(top))
    report["oracle_point"] = {"cost": float(cost[rows, top].mean()), "quality": float(quality[rows, top].mean())}
    return report


def _trained(kind: str) -> Callable[[HeldOut], dict[str, Any]]:
    def baseline(held: HeldOut) -> dict[str, Any]:
        from training.routers import ROUTERS

        if held.features is None or held.train_features is None or held.train_quality is None:
            raise RouterMLError(f"the '{kind}' baseline is trained on the training split's features; "
                                "it is computed by 'router-ml train', not on saved routers")
        target = held if held.baseline_rows is None else held.subset(held.baseline_rows)
        model = ROUTERS[kind]().fit(held.train_features, held.train_quality)
        report = score_predictions(model.predict(held.features), target)
        return {**report, "fit_records": len(held.train_features), "scored_records": len(target.quality)}

    baseline.__doc__ = f"The '{kind}' router trained on the router's own features and training split."
    return baseline


@dataclass(frozen=True)
class Baseline:
    """A baseline's scoring function and whether it is trained (needs the training split)."""

    score: Callable[[HeldOut], dict[str, Any]]
    trained: bool = False


#: name -> baseline; ``eval.baselines`` in a config names entries of this registry.
BASELINES: dict[str, Baseline] = {
    "random": Baseline(_random),
    "best-single": Baseline(_best_single),
    "knn": Baseline(_trained("knn"), trained=True),
    "logreg": Baseline(_trained("logreg"), trained=True),
    "oracle": Baseline(_oracle),
}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """A report without its curve, per-model table and bootstrap draws: what ``test`` and
    ``baselines.*`` show."""
    return {k: v for k, v in report.items() if k not in ("curve", "models", "draws")}


#: the metrics :func:`paired_differences` compares
PAIRED_KEYS = ("aiq", "best_quality", "apgr")


def paired_differences(router: dict[str, Any], baseline: dict[str, Any],
                       keys: Sequence[str] = PAIRED_KEYS) -> dict[str, Any]:
    """The router's metric minus the baseline's, each with a 95% interval from the *same* bootstrap
    resamples of the prompts (both reports drawn with one seed on the same held-out set): the paired
    interval is much narrower than the two separate ones, since most of a resample's luck (easy or
    hard prompts) moves both alike. An interval wholly below 0 says the router is worse than the
    baseline beyond the noise of the test set.

    >>> paired_differences(router_report, logreg_report)  # doctest: +SKIP
    {'aiq': 0.004, 'best_quality': 0.0, 'ci95': {'aiq': [-0.002, 0.011], 'best_quality': [...]}}
    """
    out: dict[str, Any] = {}
    ci: dict[str, list[float | None]] = {}
    for key in keys:
        a, b = router.get(key), baseline.get(key)
        if a is None or b is None:
            continue
        out[key] = float(a - b)
        da, db = router.get("draws", {}).get(key), baseline.get("draws", {}).get(key)
        if da is not None and db is not None and len(da) == len(db):
            ci[key] = percentile_interval(da - db)
    if ci:
        out["ci95"] = ci
    return out


def evaluate_held_out(pred: np.ndarray, held: HeldOut, *, baselines: Sequence[str]) -> dict[str, Any]:
    """Score a router's predictions ``pred`` (n, m) on ``held`` next to the named baselines.

    Returns ``test`` (the router's summary with ``baselines`` and, for each trained baseline,
    ``vs_baselines``: :func:`paired_differences` on the prompts that baseline was scored on - the
    sample of ``held.baseline_rows`` when there is one - and their count), the router's and the baselines'
    curves, the single models' points (``singles``) for plots, and the router's metrics on each
    bootstrap resample (``router_draws``, numpy arrays) for paired comparisons with other routers.
    """
    unknown = [name for name in baselines if name not in BASELINES]
    if unknown:  # a config is validated on load; this guards direct calls
        raise RouterMLError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
    report = score_predictions(pred, held)
    singles = _best_single(held)
    out: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    on_sample: dict[str, Any] | None = None  # the router on the trained baselines' sample, when they have one
    for name in baselines:
        base = singles if name == "best-single" else BASELINES[name].score(held)
        out[name] = summary(base)
        if "curve" in base:
            curves[name] = base["curve"]
        if BASELINES[name].trained:
            mine = report
            if held.baseline_rows is not None:
                if on_sample is None:
                    on_sample = score_predictions(pred[held.baseline_rows], held.subset(held.baseline_rows))
                mine = on_sample
            paired[name] = {**paired_differences(mine, base), "prompts": base["scored_records"]}
    test = {**summary(report), "baselines": out}
    if paired:
        test["vs_baselines"] = paired
    return {"test": test, "router_curve": report["curve"], "baseline_curves": curves,
            "singles": singles["models"], "router_draws": report.get("draws", {})}
