"""Operating points and curves of routers and RouterBench's numbers on them (numpy only).

Inputs are per-prompt outcome matrices: ``quality[i, j]`` in [0, 1] is how well model ``j`` answered
prompt ``i`` and ``cost[i, j]`` what that call cost in USD. Logged traffic rarely has every model's
outcome for every prompt, so both may hold NaN; metrics that need a cell raise instead of guessing, and
:func:`complete_rows` selects the prompts where every model has an outcome. A router's decision for one
knob value (budget, threshold, ...) is an int array ``choice`` of shape (n,): a model index per prompt.

The points of a router as its knob sweeps (:func:`curve_from_choices`, :func:`choice_outcomes`) and of
the single models (:func:`single_model_points`), their non-decreasing convex hull (:func:`quality_hull`),
RouterBench's Average Improvement in Quality (Hu et al., 2024; :func:`aiq`), :func:`savings_at_iso_quality`,
:func:`best_quality`, the one summary of a curve (:func:`curve_summary`) and :func:`bootstrap_ci`.
Logged traffic's per-cell ``weights`` come from :mod:`router_ml.metrics.weights`. Part of
:mod:`router_ml.metrics`, which re-exports every public name here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .weights import ESTIMATORS, _check_choices, _check_weights

__all__ = [
    "CURVE_KEYS",
    "aiq",
    "best_quality",
    "bootstrap_ci",
    "choice_outcomes",
    "complete_rows",
    "curve_from_choices",
    "curve_summary",
    "quality_hull",
    "savings_at_iso_quality",
    "single_model_points",
]

#: The cost-quality numbers of any router's curve (:func:`curve_summary`), RouterBench's family.
CURVE_KEYS = ("aiq", "savings_at_iso_quality", "best_quality")


def _outcome_matrices(quality: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    quality = np.asarray(quality, dtype=float)
    cost = np.asarray(cost, dtype=float)
    if quality.ndim != 2 or quality.shape != cost.shape:
        raise ValueError(
            f"quality and cost must both have shape (n_prompts, n_models), got {quality.shape} and {cost.shape}"
        )
    if quality.size == 0:
        raise ValueError(f"quality and cost are empty (shape {quality.shape}); need at least one prompt and model")
    return quality, cost


def _points(costs: np.ndarray, qualities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    costs = np.asarray(costs, dtype=float)
    qualities = np.asarray(qualities, dtype=float)
    if costs.ndim != 1 or costs.shape != qualities.shape or costs.size == 0:
        raise ValueError(
            f"costs and qualities must be non-empty 1-D arrays of equal length, got {costs.shape} and "
            f"{qualities.shape}"
        )
    if not (np.isfinite(costs).all() and np.isfinite(qualities).all()):
        raise ValueError("costs and qualities must be finite; drop operating points that have no outcome")
    return costs, qualities


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # np.trapz is deprecated in numpy 2 and np.trapezoid is missing in numpy 1.26: spell it out.
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def complete_rows(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Return a bool mask (n_prompts,) of prompts where every model has a finite quality and cost.

    >>> complete_rows(np.array([[1.0, np.nan], [0.0, 1.0]]), np.array([[0.1, 0.2], [0.1, 0.2]]))
    array([False,  True])
    """
    quality, cost = _outcome_matrices(quality, cost)
    return np.isfinite(quality).all(axis=1) & np.isfinite(cost).all(axis=1)


def curve_from_choices(
    quality: np.ndarray,
    cost: np.ndarray,
    choices: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    estimator: str = "ips",
    reward_model: np.ndarray | None = None,
    cost_model: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean cost in USD, mean quality), each of shape (k,), of a router as its knob sweeps.

    ``choices`` has shape (k, n_prompts): row ``r`` holds the model index chosen for each prompt at the
    r-th knob value. Without ``weights`` every chosen cell must have an outcome: raises ValueError if a
    chosen model has no outcome (NaN) for its prompt; evaluate on the rows :func:`complete_rows` selects.
    With ``weights`` (n_prompts, n_models), e.g. :func:`exposure_weights` or :func:`propensity_weights`,
    a chosen cell's quality counts ``weights[i, j]`` times and a cell of weight 0 counts 0 whatever it
    holds (its quality may be NaN). Costs must be known (observed or imputed) for every chosen cell; the
    mean cost is estimated like the quality with ``"ips"`` and ``"snips"`` (from the logged costs of the
    matching choices: an imputed cost misses what a prompt's answer length did to it, and averaging
    imputed costs was measured 6-14% off on a simulated log) and is the plain mean of the (imputed)
    costs with ``"dr"`` - the direct method, whose error is the cost imputation's. With ``cost_model``
    (n, m), a predicted cost for every cell (the router's own cost estimate from the prompt's length),
    the mean cost is doubly robust: the mean predicted cost of the chosen cells plus the weighted mean
    of the logged residuals ``cost - cost_model`` of the matching choices (self-normalised with
    ``"snips"`` and ``"dr"``, plain with ``"ips"``). The prediction carries what the prompt's length
    does to every choice, the logged residuals correct its bias, and they vary far less than the costs.
    ``estimator`` says how weighted qualities become a mean (the off-policy estimators, Dudik et al. 2011):

    - ``"ips"``: ``sum(w * q) / n`` - unbiased when the weights are the true inverse propensities;
    - ``"snips"``: ``sum(w * q) / sum(w)`` over the chosen cells - self-normalised: a little biased,
      far less variance, and always inside the range of the observed qualities (NaN at a knob value none
      of whose choices matches an observed cell: there is nothing to estimate it from);
    - ``"dr"``: doubly robust, ``reward_model[i, c] + w * (q - reward_model[i, c])`` averaged over every
      prompt, where the correction term counts only for observed chosen cells: unbiased when either the
      propensities or the ``reward_model`` (n, m predicted quality) are right.

    >>> q = np.array([[0.0, 1.0], [1.0, 1.0]]); c = np.array([[1.0, 3.0], [1.0, 3.0]])
    >>> curve_from_choices(q, c, np.array([[0, 0], [1, 0]]))
    (array([1., 2.]), array([0.5, 1. ]))
    """
    quality, cost = _outcome_matrices(quality, cost)
    n, m = quality.shape
    choices = _check_choices(choices, n, m)
    if weights is not None:
        weights = _check_weights(weights, quality.shape)
    for name, model in (("reward_model", reward_model), ("cost_model", cost_model)):
        if model is not None and np.shape(model) == quality.shape and not np.isfinite(model).all():
            raise ValueError(f"{name} must be finite in every cell (a prediction for every prompt and model)")
    # knob values a block at a time: each (knob, prompt) array of a block holds at most _BLOCK_CELLS
    # cells (81 knob values over 3 million prompts would be 1.9 GB per float64 array at once)
    step = max(1, _BLOCK_CELLS // max(n, 1))
    if cost_model is not None and np.shape(cost_model) != quality.shape:
        raise ValueError(f"cost_model must have shape {quality.shape} (predicted cost per cell), got "
                         f"{np.shape(cost_model)}")
    blocks = [_curve_block(quality, cost, choices[a:a + step], weights, estimator, reward_model, cost_model)
              for a in range(0, max(len(choices), 1), step)]
    per_knob = np.concatenate([b[2] for b in blocks])
    if per_knob.any():
        first = int(np.argmax(per_knob > 0))
        lacking = int(np.logical_or.reduce([b[3] for b in blocks]).sum())
        raise ValueError(
            f"{lacking} of {n} prompts lack an outcome (NaN quality or cost) for their "
            f"chosen model ({int(per_knob[first])} at knob value {first}); evaluate on the prompts where "
            "complete_rows(quality, cost) is True"
        )
    return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])


#: the most (knob, prompt) cells :func:`curve_from_choices` gathers into one array at a time
_BLOCK_CELLS = 1 << 23


def _curve_block(quality: np.ndarray, cost: np.ndarray, choices: np.ndarray, weights: np.ndarray | None,
                 estimator: str, reward_model: np.ndarray | None, cost_model: np.ndarray | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`curve_from_choices` for a block of knob values: (mean costs, mean qualities, per knob the
    prompts whose chosen cell lacks an outcome, which prompts those are - both zero when weighted)."""
    n = quality.shape[0]
    none = (np.zeros(len(choices), dtype=np.int64), np.zeros(n, dtype=bool))
    rows = np.arange(n)[None, :]
    chosen_c = cost[rows, choices]
    if weights is not None:
        if not np.isfinite(chosen_c).all():
            raise ValueError("a chosen model has no cost (NaN) for its prompt; impute costs before weighting")
        chosen_w = weights[rows, choices]
        observed_q = np.where(chosen_w > 0, quality[rows, choices], 0.0)
        if not np.isfinite(observed_q).all():
            raise ValueError("a chosen cell with a positive weight has no quality (NaN); give it weight 0")
        total = chosen_w.sum(axis=1)
        logged_c = np.where(chosen_w > 0, chosen_c, 0.0) * chosen_w
        with np.errstate(invalid="ignore", divide="ignore"):
            if cost_model is not None:  # doubly robust: the predicted costs plus the logged residuals
                predicted_c = np.asarray(cost_model, dtype=float)[rows, choices]
                residual = np.where(chosen_w > 0, chosen_c - predicted_c, 0.0) * chosen_w
                # self-normalised but with "ips": stable at few matching choices
                costs = predicted_c.mean(axis=1) + (residual.mean(axis=1) if estimator == "ips" else
                                                    np.where(total > 0, residual.sum(axis=1) / total, 0.0))
            elif estimator == "snips":
                costs = np.where(total > 0, logged_c.sum(axis=1) / total, chosen_c.mean(axis=1))
            elif estimator == "ips":
                costs = logged_c.mean(axis=1)
            else:  # "dr" without a cost model: the direct method on the (imputed) costs
                costs = chosen_c.mean(axis=1)
            if estimator == "ips":
                return costs, (observed_q * chosen_w).mean(axis=1), *none
            if estimator == "snips":
                return costs, np.where(total > 0, (observed_q * chosen_w).sum(axis=1) / total, np.nan), *none
        if estimator == "dr":
            if reward_model is None or np.shape(reward_model) != quality.shape:
                raise ValueError(f"the 'dr' estimator needs reward_model of shape {quality.shape} (predicted quality)")
            predicted = np.asarray(reward_model, dtype=float)[rows, choices]
            means = (predicted + chosen_w * np.where(chosen_w > 0, observed_q - predicted, 0.0)).mean(axis=1)
            return costs, means, *none
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    chosen_q = quality[rows, choices]
    missing = ~(np.isfinite(chosen_q) & np.isfinite(chosen_c))
    return chosen_c.mean(axis=1), chosen_q.mean(axis=1), missing.sum(axis=1), missing.any(axis=0)


def choice_outcomes(quality: np.ndarray, cost: np.ndarray, choice: np.ndarray) -> tuple[float, float]:
    """Return (mean cost in USD, mean quality) of the models ``choice`` (n_prompts,) picks.

    Raises ValueError naming how many prompts lack an outcome (NaN) for their chosen model.

    >>> q = np.array([[0.0, 1.0], [1.0, 1.0]]); c = np.array([[1.0, 3.0], [1.0, 3.0]])
    >>> choice_outcomes(q, c, np.array([1, 0]))
    (2.0, 1.0)
    """
    choice = np.asarray(choice)
    if choice.ndim != 1:
        raise ValueError(f"choice must have shape (n_prompts,), got {choice.shape}")
    costs, qualities = curve_from_choices(quality, cost, choice[None, :])
    return float(costs[0]), float(qualities[0])


def single_model_points(
    quality: np.ndarray, cost: np.ndarray, *, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (mean cost in USD, mean quality), each (n_models,), of always calling each model.

    Without ``weights`` the means are over the prompts with complete rows only (every model has an
    outcome), so the models are compared on the same prompts; prompts with any NaN are ignored.
    Raises ValueError if none is complete. With ``weights`` (logged traffic, see
    :func:`exposure_weights` or :func:`propensity_weights`) a model's quality and cost are the weighted
    means of its cells of positive weight (self-normalised, as :func:`curve_from_choices`' ``snips``
    weighs a router's logged costs; with ``exposure_weights``, the means over the prompts where the
    model was observed): an imputed cost of a prompt the model never saw does not count, so a model
    logged mostly on long prompts is not priced at the average prompt's cost (costs must be complete).

    >>> single_model_points(np.array([[1.0, np.nan], [np.nan, 0.0]]), np.array([[2.0, 9.0], [4.0, 5.0]]),
    ...                     weights=np.array([[1.0, 0.0], [0.0, 1.0]]))
    (array([2., 5.]), array([1., 0.]))

    >>> single_model_points(np.array([[0.0, 1.0], [1.0, np.nan]]), np.array([[1.0, 3.0], [1.0, 3.0]]))
    (array([1., 3.]), array([0., 1.]))
    """
    quality, cost = _outcome_matrices(quality, cost)
    if weights is not None:
        weights = _check_weights(weights, quality.shape)
        if not np.isfinite(cost).all():
            raise ValueError("cost must be known for every cell when weighting; impute it first")
        total = weights.sum(axis=0)
        if (total <= 0).any():
            raise ValueError(f"model index {int(np.argmax(total <= 0))} has no cell of positive weight")
        if np.isnan(quality[weights > 0]).any():
            raise ValueError("a cell with a positive weight has no quality (NaN); give it weight 0")
        weighted = np.where(weights > 0, quality, 0.0) * weights
        return (np.where(weights > 0, cost, 0.0) * weights).sum(axis=0) / total, weighted.sum(axis=0) / total
    keep = complete_rows(quality, cost)
    if not keep.any():
        raise ValueError(f"none of the {quality.shape[0]} prompts has an outcome for every model")
    return cost[keep].mean(axis=0), quality[keep].mean(axis=0)


def quality_hull(costs: np.ndarray, qualities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the non-decreasing upper convex hull (hull_costs, hull_qualities) of operating points.

    As in RouterBench: any point on a segment between two operating points is achievable by calling one
    or the other at random, so a router is worth its upper convex hull; and a point that costs more but
    is not strictly better is dropped, so the hull is sorted by cost with strictly increasing quality.
    It starts at the cheapest point (the best one, where several share that cost) and ends at the
    cheapest point of maximal quality. Points on a hull segment (collinear) are dropped: they change
    neither the curve nor any number computed from it. Costs in USD; the result is a subset of the input.

    >>> quality_hull(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 0.6, 0.8, 0.7]))
    (array([1., 3.]), array([0.5, 0.8]))
    """
    costs, qualities = _points(costs, qualities)
    order = np.lexsort((-qualities, costs))  # by cost, best quality first within a cost
    hull: list[tuple[float, float]] = []
    for x, y in zip(costs[order].tolist(), qualities[order].tolist(), strict=True):
        if hull and x == hull[-1][0]:
            continue  # same cost, no better than the point already kept
        while len(hull) >= 2:
            (x0, y0), (x1, y1) = hull[-2], hull[-1]
            left, right = (x1 - x0) * (y - y0), (y1 - y0) * (x - x0)
            # Pop the middle point if it is on or below the chord (tolerance for float collinearity).
            if left - right >= -1e-12 * (abs(left) + abs(right)):
                hull.pop()
            else:
                break
        hull.append((x, y))
    hull_costs, hull_qualities = (np.array(v, dtype=float) for v in zip(*hull, strict=True))
    # The upper hull is concave: it rises to its maximum and then falls; keep the rising part.
    top = int(np.argmax(hull_qualities))
    return hull_costs[: top + 1], hull_qualities[: top + 1]


def aiq(costs: np.ndarray, qualities: np.ndarray, *, cost_range: tuple[float, float]) -> float:
    """Return RouterBench's Average Improvement in Quality of operating points over ``cost_range`` (USD).

    With ``h`` the non-decreasing convex hull of the points (:func:`quality_hull`) as a function of cost,
    linear between hull points::

        AIQ = (1 / (hi - lo)) * integral from lo to hi of H(c) dc,   (lo, hi) = cost_range
        H(c) = 0                 for c < cheapest hull cost   (the router cannot operate there)
             = h(c)              between the cheapest and the most expensive hull point
             = max hull quality  beyond it (spending more never hurts: pick the best point)

    ``cost_range`` is normally the [min, max] mean cost of the single models, the same for every router
    compared. The zero left of the cheapest point is what RouterBench's code does (``evaluation/AIQ.py``,
    ``calc_AIQ``: it integrates with the trapezoid rule from the hull's cheapest point, extends the hull
    flat to the largest cost of any compared hull and divides by that largest cost), so
    ``cost_range=(0, largest_cost)`` reproduces their number; their paper writes the range as
    [c_min, c_max].

    >>> aiq(np.array([1.0, 2.0, 4.0]), np.array([0.5, 0.8, 0.9]), cost_range=(1.0, 4.0))  # (0.65 + 1.7) / 3
    0.7833333333333333
    """
    lo, hi = (float(v) for v in cost_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"cost_range must be two finite costs (lo, hi) with lo < hi, got {cost_range!r}")
    hull_costs, hull_qualities = quality_hull(costs, qualities)
    start = max(lo, float(hull_costs[0]))
    if start >= hi:
        return 0.0
    inside = hull_costs[(hull_costs > start) & (hull_costs < hi)]
    xs = np.concatenate(([start], inside, [hi]))
    # np.interp holds the last hull quality beyond the most expensive hull point.
    ys = np.interp(xs, hull_costs, hull_qualities)
    return _trapezoid(ys, xs) / (hi - lo)


def best_quality(qualities: np.ndarray) -> float:
    """Return the highest mean quality among operating points (the top of their hull).

    >>> best_quality(np.array([0.5, 0.9, 0.7]))
    0.9
    """
    qualities = np.asarray(qualities, dtype=float)
    if qualities.ndim != 1 or qualities.size == 0 or not np.isfinite(qualities).all():
        raise ValueError(f"qualities must be a non-empty 1-D array of finite values, got shape {qualities.shape}")
    return float(qualities.max())


def savings_at_iso_quality(
    costs: np.ndarray, qualities: np.ndarray, *, reference_cost: float, reference_quality: float
) -> float | None:
    """Return the share of ``reference_cost`` the router needs to match ``reference_quality``.

    The needed cost is the lowest cost (USD) at which the router's non-decreasing convex hull, linear
    between hull points, reaches ``reference_quality``; the result is that cost / ``reference_cost``
    (0.77 means the same quality for 77% of the cost, a 23% saving). None if the hull never reaches it.
    The reference is typically the best single model.

    >>> savings_at_iso_quality(np.array([1.0, 2.0, 4.0]), np.array([0.5, 0.75, 1.0]),
    ...                        reference_cost=4.0, reference_quality=0.875)
    0.75
    """
    if not (np.isfinite(reference_cost) and reference_cost > 0):
        raise ValueError(f"reference_cost must be a positive cost in USD, got {reference_cost!r}")
    if not np.isfinite(reference_quality):
        raise ValueError(f"reference_quality must be a finite quality, got {reference_quality!r}")
    hull_costs, hull_qualities = quality_hull(costs, qualities)
    # float noise is not a miss: the same outcomes summed in another order (a random policy that ends on the
    # best model) differed from the reference by 2e-15, and its savings were None
    if reference_quality > hull_qualities[-1] + 1e-12 * max(1.0, abs(reference_quality)):
        return None
    reference_quality = min(reference_quality, float(hull_qualities[-1]))
    i = int(np.argmax(hull_qualities >= reference_quality))
    if i == 0:
        needed = hull_costs[0]
    else:
        x0, x1, y0, y1 = hull_costs[i - 1], hull_costs[i], hull_qualities[i - 1], hull_qualities[i]
        needed = x0 + (reference_quality - y0) * (x1 - x0) / (y1 - y0)
    return float(needed / reference_cost)


def curve_summary(
    costs: np.ndarray, qualities: np.ndarray, *, single_costs: np.ndarray, single_qualities: np.ndarray
) -> dict[str, float | None]:
    """Return the cost-quality numbers of a curve against the single models of the same prompts.

    ``aiq`` over the single models' cost range (None when they all cost the same), ``savings_at_iso_quality``
    against the best single model (None when it is free or never reached), ``best_quality`` and
    ``max_mean_cost`` (USD). Every router and baseline of one report is summarised by this function.

    >>> curve_summary(np.array([1.0, 2.0]), np.array([0.5, 0.9]), single_costs=np.array([1.0, 4.0]),
    ...               single_qualities=np.array([0.5, 0.9]))["savings_at_iso_quality"]
    0.5
    """
    single_costs, single_qualities = _points(single_costs, single_qualities)  # 1-D, equal length, finite
    best = int(np.argmax(single_qualities))
    cost_range = (float(single_costs.min()), float(single_costs.max()))
    return {
        "aiq": float(aiq(costs, qualities, cost_range=cost_range)) if cost_range[1] > cost_range[0] else None,
        "savings_at_iso_quality": savings_at_iso_quality(
            costs, qualities, reference_cost=float(single_costs[best]),
            reference_quality=float(single_qualities[best])) if single_costs[best] > 0 else None,
        "best_quality": float(best_quality(qualities)),
        "max_mean_cost": float(np.max(costs)),
    }


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None],
    n: int,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Return a percentile bootstrap interval (low, high) at level ``1 - alpha`` of a statistic.

    ``statistic`` receives an int index array, a resample of ``range(n)`` with replacement, and returns
    a float. Resamples for which it returns None or a value that is not finite (say, a metric undefined on
    that resample) are skipped and the interval is taken over the rest; ValueError if none is left. Draws come from
    ``np.random.default_rng(seed)`` only, so the result is fixed by ``seed``.

    >>> data = np.array([1.0, 2.0, 3.0, 4.0])
    >>> low, high = bootstrap_ci(lambda idx: data[idx].mean(), len(data), n_boot=200)
    >>> 1.0 <= low <= 2.5 <= high <= 4.0
    True
    """
    if n < 1 or n_boot < 1:
        raise ValueError(f"n and n_boot must be >= 1, got n={n}, n_boot={n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        value = statistic(rng.integers(0, n, size=n))
        if value is not None and np.isfinite(value):
            values.append(float(value))
    if not values:
        raise ValueError(f"the statistic returned None or a value that is not finite on all {n_boot} bootstrap "
                         "resamples")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
