"""Cost-quality metrics of routers on a held-out set, shared by training and evaluation (numpy only).

Inputs are per-prompt outcome matrices: ``quality[i, j]`` in [0, 1] is how well model ``j`` answered
prompt ``i`` and ``cost[i, j]`` what that call cost in USD. Logged traffic rarely has every model's
outcome for every prompt, so both may hold NaN; metrics that need a cell raise instead of guessing, and
:func:`complete_rows` selects the prompts where every model has an outcome. A router's decision for one
knob value (budget, threshold, ...) is an int array ``choice`` of shape (n,): a model index per prompt.

Two families of summary numbers:

* RouterBench (Hu et al., 2024): the non-decreasing convex hull of a router's (mean cost, mean quality)
  operating points (:func:`quality_hull`) and the Average Improvement in Quality (:func:`aiq`).
* RouteLLM (Ong et al., 2024), two models only: PGR, APGR and CPT over RouteLLM's quantile thresholds
  (:func:`routellm_curve`, :func:`apgr`, :func:`cpt`, :func:`routellm_metrics`).

This module is the one implementation of curves and single-model points: training's evaluation, the
``evaluate`` command, the bounds scripts and ``compare`` all go through it. Logged traffic, where only
some cells are observed, enters as one argument: per-cell ``weights`` (:func:`exposure_weights`), with
which a chosen cell's observed quality counts ``weights[i, j]`` times and unobserved cells count 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "CURVE_KEYS",
    "ESTIMATORS",
    "HEADLINE_KEYS",
    "TWO_MODEL_KEYS",
    "aiq",
    "apgr",
    "best_quality",
    "bootstrap_ci",
    "choice_outcomes",
    "complete_rows",
    "cpt",
    "curve_from_choices",
    "curve_summary",
    "effective_sample_size",
    "exposure_weights",
    "pgr",
    "propensity_weights",
    "quality_hull",
    "routellm_curve",
    "routellm_metrics",
    "savings_at_iso_quality",
    "single_model_points",
    "weak_and_strong",
]

#: The cost-quality numbers of any router's curve (:func:`curve_summary`), RouterBench's family.
CURVE_KEYS = ("aiq", "savings_at_iso_quality", "best_quality")
#: RouteLLM's numbers, defined for two-model data only (:func:`routellm_metrics`).
TWO_MODEL_KEYS = ("apgr", "cpt_50", "cpt_80")
#: The headline metrics every report, table and comparison shows, in this order.
HEADLINE_KEYS = CURVE_KEYS + TWO_MODEL_KEYS
#: How weighted (logged-traffic) qualities become a mean: :func:`curve_from_choices`'s ``estimator``.
ESTIMATORS = ("ips", "snips", "dr")

# RouteLLM's evaluate.py cuts the scores into 10 quantile bins, giving 11 thresholds.
_ROUTELLM_NUM_BINS = 10


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


def exposure_weights(quality: np.ndarray) -> np.ndarray:
    """Return ``(n, m)`` per-cell weights ``1 / p_m`` for observed cells and 0 for unobserved (NaN) ones.

    ``p_m`` is the share of prompts on which model ``m`` was observed. With these weights a router's
    mean quality (:func:`curve_from_choices`) is the inverse-propensity estimate that is unbiased when
    *which* models were observed does not depend on the prompt (uniform exploration, random masking); it
    is biased when the logging policy looked at the prompt. With every cell observed every weight is 1.

    >>> exposure_weights(np.array([[1.0, np.nan], [0.0, 1.0]])).tolist()
    [[1.0, 0.0], [1.0, 2.0]]
    """
    observed = ~np.isnan(np.asarray(quality, dtype=float))
    share = observed.mean(axis=0)
    with np.errstate(divide="ignore"):
        return np.where(observed, 1.0 / np.where(share > 0, share, np.inf), 0.0)


def propensity_weights(quality: np.ndarray, propensity: np.ndarray) -> np.ndarray:
    """Return ``(n, m)`` inverse-propensity weights of logged traffic: ``1 / propensity`` for each observed
    cell (the model the logging policy chose, with the probability it chose it), 0 elsewhere.

    >>> propensity_weights(np.array([[1.0, np.nan]]), np.array([[0.8, np.nan]])).tolist()
    [[1.25, 0.0]]
    """
    quality = np.asarray(quality, dtype=float)
    propensity = np.asarray(propensity, dtype=float)
    if propensity.shape != quality.shape:
        raise ValueError(f"propensity must have quality's shape {quality.shape}, got {propensity.shape}")
    observed = ~np.isnan(quality)
    known = observed & np.isfinite(propensity)
    if (observed & ~known).any():
        raise ValueError(f"{int((observed & ~known).sum())} observed cells have no propensity; log the probability "
                         "of every logged choice, or evaluate with exposure_weights (assumes random exposure)")
    if (propensity[known] <= 0).any() or (propensity[known] > 1).any():
        raise ValueError("propensities must be in (0, 1]")
    with np.errstate(divide="ignore"):
        return np.where(known, 1.0 / np.where(known, propensity, 1.0), 0.0)


def effective_sample_size(weights: np.ndarray, choices: np.ndarray) -> np.ndarray:
    """Return Kish's effective sample size ``(sum w)^2 / sum w^2`` of the weighted cells each knob value's
    ``choices`` (k, n) picks: how many prompts an off-policy estimate is really worth (0 when none match).

    >>> effective_sample_size(np.array([[2.0, 0.0], [2.0, 0.0]]), np.array([[0, 0], [1, 1]])).tolist()
    [2.0, 0.0]
    """
    weights = np.asarray(weights, dtype=float)
    choices = np.asarray(choices)
    chosen = weights[np.arange(weights.shape[0])[None, :], choices]
    squares = (chosen**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(squares > 0, chosen.sum(axis=1) ** 2 / squares, 0.0)


def _check_weights(weights: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    weights = np.asarray(weights, dtype=float)
    if weights.shape != shape:
        raise ValueError(f"weights must have the outcome matrices' shape {shape}, got {weights.shape}")
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError("weights must be finite and >= 0 (0 for a cell whose outcome was not observed)")
    return weights


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
      far less variance, and always inside the range of the observed qualities;
    - ``"dr"``: doubly robust, ``reward_model[i, c] + w * (q - reward_model[i, c])`` averaged over every
      prompt, where the correction term counts only for observed chosen cells: unbiased when either the
      propensities or the ``reward_model`` (n, m predicted quality) are right.

    >>> q = np.array([[0.0, 1.0], [1.0, 1.0]]); c = np.array([[1.0, 3.0], [1.0, 3.0]])
    >>> curve_from_choices(q, c, np.array([[0, 0], [1, 0]]))
    (array([1., 2.]), array([0.5, 1. ]))
    """
    quality, cost = _outcome_matrices(quality, cost)
    n, m = quality.shape
    choices = np.asarray(choices)
    if choices.ndim != 2 or choices.shape[1] != n:
        raise ValueError(f"choices must have shape (k, {n}) (one row per knob value), got {choices.shape}")
    if not np.issubdtype(choices.dtype, np.integer):
        raise ValueError(f"choices must hold integer model indices, got dtype {choices.dtype}")
    if choices.size and (choices.min() < 0 or choices.max() >= m):
        raise ValueError(f"choices must be model indices in [0, {m}), got values in [{choices.min()}, {choices.max()}]")
    if weights is not None:
        weights = _check_weights(weights, quality.shape)
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
    hull_costs, hull_qualities = quality_hull(costs, qualities)
    if reference_quality > hull_qualities[-1]:
        return None
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
    single_costs = np.asarray(single_costs, dtype=float)
    single_qualities = np.asarray(single_qualities, dtype=float)
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


def weak_and_strong(mean_quality: np.ndarray) -> tuple[int, int]:
    """Return (weak, strong) model indices of two-model data: the strong one has the higher mean quality
    (the first on a tie), as RouteLLM names them.

    >>> weak_and_strong(np.array([0.8, 0.6]))
    (1, 0)
    """
    mean_quality = np.asarray(mean_quality, dtype=float)
    if mean_quality.shape != (2,):
        raise ValueError(f"weak and strong models are defined for two models, got {mean_quality.shape[0]}")
    strong = int(np.argmax(mean_quality))
    return 1 - strong, strong


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
    a float. Resamples for which it returns None or NaN (say, a metric undefined on that resample) are
    skipped and the interval is taken over the rest; ValueError if none is left. Draws come from
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
        if value is not None and not np.isnan(value):
            values.append(float(value))
    if not values:
        raise ValueError(f"the statistic returned None or NaN on all {n_boot} bootstrap resamples")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _two_model_inputs(
    scores: np.ndarray, weak_quality: np.ndarray, strong_quality: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [np.asarray(a, dtype=float) for a in (scores, weak_quality, strong_quality)]
    if arrays[0].ndim != 1 or arrays[0].size == 0 or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(
            "scores, weak_quality and strong_quality must be non-empty 1-D arrays of equal length, got "
            f"{[a.shape for a in arrays]}"
        )
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("scores, weak_quality and strong_quality must be finite (select complete rows first)")
    return arrays[0], arrays[1], arrays[2]


def pgr(quality: float | np.ndarray, *, weak: float, strong: float) -> float | np.ndarray:
    """Return RouteLLM's performance gap recovered, ``(quality - weak) / (strong - weak)``.

    0 is the weak model's mean quality, 1 the strong model's. ValueError if ``strong == weak``.

    >>> pgr(0.625, weak=0.5, strong=0.75)
    0.5
    """
    if strong == weak:
        raise ValueError(f"PGR is undefined when the strong and weak models have equal quality ({strong})")
    result = (np.asarray(quality, dtype=float) - weak) / (strong - weak)
    return float(result) if result.ndim == 0 else result


def routellm_curve(
    scores: np.ndarray, weak_quality: np.ndarray, strong_quality: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (strong-call share in [0, 1], mean quality), each of shape (11,), at RouteLLM's thresholds.

    ``scores`` (n,) rank prompts (higher = more reason to call the strong model); the qualities (n,) are
    each model's outcome per prompt. The thresholds are RouteLLM's (``routellm/evals/benchmarks.py``,
    ``evaluate``): ``pd.qcut(scores, 10, retbins=True)`` bin edges, i.e. the linear-interpolation
    quantiles of the scores at 0, 0.1, ..., 1. At edge ``t_i`` a prompt goes to the strong model if its
    score is ``>= t_i``, except at the last edge (the maximum) where it must be ``> t_i``; so the curve
    always runs from share 1 (first edge, the minimum) to share 0. Points are sorted by share, as
    ``evaluate.py`` does before integrating. Tied edges are kept as repeated points (pandas would raise
    "Bin edges must be unique" there); they add no area.

    >>> routellm_curve(np.arange(10.0), np.zeros(10), np.ones(10))[0]
    array([0. , 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1. ])
    """
    scores, weak_quality, strong_quality = _two_model_inputs(scores, weak_quality, strong_quality)
    thresholds = np.quantile(scores, np.linspace(0.0, 1.0, _ROUTELLM_NUM_BINS + 1))
    strong = scores[None, :] >= thresholds[:-1, None]
    strong = np.vstack([strong, scores[None, :] > thresholds[-1]])
    shares = strong.mean(axis=1)
    qualities = np.where(strong, strong_quality[None, :], weak_quality[None, :]).mean(axis=1)
    order = np.argsort(shares, kind="stable")
    return shares[order], qualities[order]


def apgr(scores: np.ndarray, weak_quality: np.ndarray, strong_quality: np.ndarray) -> float:
    """Return RouteLLM's average performance gap recovered (area under the PGR-vs-share curve).

    As ``routellm/evals/evaluate.py`` (``auc_metric``, ``apgr_metric``): with the 11 points of
    :func:`routellm_curve`, ``AUC`` = trapezoid of quality over share, and the weak and strong areas are
    the trapezoids of their constant mean qualities over the same shares, so
    ``APGR = (AUC - weak_auc) / (strong_auc - weak_auc)``. The shares span [0, 1], so this is the
    trapezoid area under PGR. Random scores give 0.5 in expectation.

    >>> apgr(np.arange(4.0), np.array([0.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.0, 1.0, 1.0]))  # oracle
    0.75
    """
    shares, qualities = routellm_curve(scores, weak_quality, strong_quality)
    weak, strong = float(np.mean(weak_quality)), float(np.mean(strong_quality))
    width = shares[-1] - shares[0]
    weak_auc, strong_auc = weak * width, strong * width
    if strong_auc == weak_auc:
        raise ValueError(f"APGR is undefined when the strong and weak models have equal quality ({strong})")
    return float((_trapezoid(qualities, shares) - weak_auc) / (strong_auc - weak_auc))


def cpt(
    scores: np.ndarray, weak_quality: np.ndarray, strong_quality: np.ndarray, *, pgr_target: float = 0.5
) -> float:
    """Return RouteLLM's call-performance threshold: the smallest strong-call share reaching ``pgr_target``.

    The share is a fraction in [0, 1] (RouteLLM prints it as %). It is read off the piecewise-linear
    :func:`routellm_curve` in PGR terms: the first point whose PGR is >= the target, interpolated
    linearly from the point before. RouteLLM (``evaluate.py``, ``pct_call_metric``) computes
    ``np.interp(target_quality, qualities, shares)``, which is the same number whenever the curve's
    quality rises strictly with the share; where it dips or is flat, np.interp's answer is undefined
    (it needs increasing x) and this function keeps the smallest share. The 100%-strong point has PGR 1,
    so every target in [0, 1] is reached.

    >>> cpt(np.arange(10.0), np.zeros(10), np.ones(10), pgr_target=0.25)
    0.25
    """
    if not 0.0 <= pgr_target <= 1.0:
        raise ValueError(f"pgr_target must be in [0, 1], got {pgr_target}")
    shares, qualities = routellm_curve(scores, weak_quality, strong_quality)
    gaps = pgr(qualities, weak=float(np.mean(weak_quality)), strong=float(np.mean(strong_quality)))
    reached = gaps >= pgr_target
    if not reached.any():
        return float(shares[-1])  # only by rounding, for a target of 1: the all-strong point has PGR 1
    i = int(np.argmax(reached))
    if i == 0:
        return float(shares[0])
    x0, x1, y0, y1 = shares[i - 1], shares[i], gaps[i - 1], gaps[i]
    return float(x0 + (pgr_target - y0) * (x1 - x0) / (y1 - y0))


def routellm_metrics(scores: np.ndarray, weak_quality: np.ndarray,
                     strong_quality: np.ndarray) -> dict[str, float | None]:
    """Return RouteLLM's headline numbers: ``apgr``, ``cpt_50`` and ``cpt_80`` (shares in [0, 1]).

    All three measure the gap between the two models recovered, so where the two have the same mean
    quality on these prompts (a small test split can) there is no gap and each is ``None``; the
    functions above raise ``ValueError`` there.

    >>> routellm_metrics(np.arange(10.0), np.zeros(10), np.ones(10))
    {'apgr': 0.5, 'cpt_50': 0.5, 'cpt_80': 0.8}
    >>> routellm_metrics(np.arange(4.0), np.array([1.0, 0, 1, 0]), np.array([0.0, 1, 0, 1]))
    {'apgr': None, 'cpt_50': None, 'cpt_80': None}
    """
    if float(np.mean(strong_quality)) == float(np.mean(weak_quality)):
        return dict.fromkeys(TWO_MODEL_KEYS)
    return {
        "apgr": apgr(scores, weak_quality, strong_quality),
        "cpt_50": cpt(scores, weak_quality, strong_quality, pgr_target=0.5),
        "cpt_80": cpt(scores, weak_quality, strong_quality, pgr_target=0.8),
    }
