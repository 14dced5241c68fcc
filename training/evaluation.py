"""Scoring routers on held-out prompts, next to the baselines every report shows.

One path scores everything - a freshly trained router, a saved checkpoint on new data, an exported
(fp32 or int8) artifact, the routing-bounds script's oracles: a router's predicted quality and the
runtime's cost estimate go through the policy (:func:`router_ml.policy.choose`) at every
willingness-to-pay value of the knob grid saved with the router; the chosen models' *observed*
quality and cost on the held-out prompts give its cost-quality curve, from which
:mod:`router_ml.metrics` (the one implementation of curves and single-model points) computes AIQ,
savings at iso-quality, best quality and - for two models - RouteLLM's APGR and CPT.

The baselines (looked up by name in :data:`training.baselines.BASELINES`: ``best-single``, ``random``,
``oracle``, ``knn``, ``logreg``) and the router scored next to them (:func:`training.baselines.evaluate_held_out`)
are in :mod:`training.baselines`; they are scored here like any router.

**Logged traffic** (test records with outcomes for only some models) is scored with the per-cell
weights of :func:`router_ml.metrics.exposure_weights`: a chosen model's observed quality counts
``1 / p_m`` times, where ``p_m`` is the share of test records that observed model ``m``, and a
choice whose outcome was not observed counts 0. This is unbiased when which models were observed
does not depend on the prompt (random exploration, like the uniformly masked copies in the tests);
with every outcome observed it is the plain mean. The oracle needs every outcome and is left out
then. Costs of unobserved cells are the imputed ones (:mod:`training.costs`); off-policy, a policy's mean
cost is estimated from the logged costs of its matching choices like the quality, or with ``dr`` as the
mean of its choices' costs as the router estimates them from the prompt (``cost_est``) corrected by the
weighted mean of the logged residuals - doubly robust. With the logging
policy's propensities the estimators of :class:`HeldOut` apply; without them a report's
``off_policy.biased`` is true, and ``router-ml evaluate`` refuses such a log unless an estimator is
forced (:mod:`training.evaluate_saved`). :func:`default_knob` gives the router's single operating
point at the knob it ships with, estimated the same way, with bootstrap intervals.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_ml import metrics
from router_ml.errors import RouterMLError
from router_ml.formats import VERSION_FIELD, read_versioned
from router_ml.policy import choose, choose_each, wtp_to_json

__all__ = [
    "METRICS_FORMAT",
    "HeldOut",
    "curve_draws",
    "default_knob",
    "percentile_interval",
    "read_metrics_file",
    "router_wtps",
    "score_choices",
    "score_predictions",
    "scoreable_rows",
    "write_metrics_file",
]

#: ``metrics.json`` in a router directory: the held-out report, its curves and the single models.
METRICS_FORMAT = "router-ml-metrics"
METRICS_VERSION = 1


@dataclass(frozen=True)
class HeldOut:
    """The prompts a router is scored on, with everything the scoring needs besides the router.

    ``quality`` (n, m) is the observed quality (NaN where not observed), ``cost`` (n, m) the
    observed or imputed cost in USD, ``cost_est`` (n, m) the runtime's cost estimate the policy sees,
    ``wtps`` the knob grid (USD per unit of quality) saved with the router. ``two_model`` is
    (weak, strong) on two-model data. The trained baselines (``knn``, ``logreg``) need
    ``features`` (n, d) and the training split's ``train_features`` / ``train_quality``.

    Logged traffic (some outcome missing) is scored off-policy: with ``propensity`` (n, m; the
    logging policy's probability of each logged choice, NaN elsewhere) by ``estimator`` - ``"auto"``
    is self-normalised IPS (``"snips"``: never outside the range of the observed qualities, far less
    variance than ``"ips"``, consistent), ``"dr"`` needs a ``reward_model`` (n, m predicted quality);
    without propensities by exposure weights (``metrics.exposure_weights``: unbiased only when which
    model was logged did not depend on the prompt). An outcome observed *without* a propensity in a row
    whose logged choice has one - a cascade's escalation, decided after seeing the first answer - is no
    draw of the logging policy: it is dropped from the scored quality (``unlogged_outcomes`` counts them)
    so the estimators see the logged draw alone. A record with every outcome and no propensity in data
    whose other records carry one (a bootstrap set in the same file as the log) is full information:
    each of its outcomes counts with propensity 1.
    """

    quality: np.ndarray
    cost: np.ndarray
    cost_est: np.ndarray
    wtps: np.ndarray
    models: tuple[str, ...]
    two_model: tuple[int, int] | None = None
    n_boot: int = 200
    seed: int = 0
    features: np.ndarray | None = None
    train_features: np.ndarray | None = None
    train_quality: np.ndarray | None = None
    propensity: np.ndarray | None = None
    estimator: str = "auto"
    reward_model: np.ndarray | None = None
    #: positions of the prompts the trained baselines are scored on when ``features`` holds only those
    #: (a seeded sample of a large test split, ``eval.baseline_records``); None: every prompt
    baseline_rows: np.ndarray | None = None
    #: outcomes observed beside a logged choice but not drawn by it, dropped from ``quality`` (class doc)
    unlogged_outcomes: int = 0
    #: knob values added per router where its own choices change (:func:`router_wtps`, ``eval.knob_refine``)
    refine: int = 0

    def __post_init__(self) -> None:
        if self.propensity is None:
            return
        observed = ~np.isnan(self.quality)
        known = np.isfinite(self.propensity)
        # a record with every outcome and no propensity, beside logged ones that carry theirs (a bootstrap
        # set evaluated on every model, in the same file as the log): each outcome was observed for sure
        full = observed.all(axis=1) & ~known.any(axis=1)
        if full.any() and known.any():
            propensity = np.where(full[:, None], 1.0, self.propensity)
            object.__setattr__(self, "propensity", propensity)
            known = np.isfinite(propensity)
        extra = observed & ~known & (observed & known).any(axis=1, keepdims=True)
        if extra.any():
            object.__setattr__(self, "quality", np.where(extra, np.nan, self.quality))
            object.__setattr__(self, "unlogged_outcomes", self.unlogged_outcomes + int(extra.sum()))

    def grid(self, pred: np.ndarray, cost: np.ndarray | None = None) -> np.ndarray:
        """The knob values a router predicting ``pred`` is swept over: :attr:`wtps`, refined for it by
        :func:`router_wtps` (``cost``: the costs its policy sees, ``cost_est`` by default)."""
        return router_wtps(pred, self.cost_est if cost is None else cost, self.wtps, self.refine)

    def subset(self, rows: np.ndarray) -> HeldOut:
        """These prompts' ``rows`` only (the trained baselines' features and training data kept)."""
        def part(a):
            return None if a is None else a[rows]
        return dataclasses.replace(self, quality=self.quality[rows], cost=self.cost[rows],
                                   cost_est=self.cost_est[rows], propensity=part(self.propensity),
                                   reward_model=part(self.reward_model), baseline_rows=None)

    @property
    def logged(self) -> bool:
        """True when some outcome is missing: scored off-policy (class doc)."""
        return bool(np.isnan(self.quality).any())

    @property
    def has_propensities(self) -> bool:
        """Every observed cell carries the logging policy's propensity."""
        if self.propensity is None:
            return False
        return bool(np.isfinite(self.propensity[~np.isnan(self.quality)]).all())

    def resolved_estimator(self) -> str:
        """``exact`` with every outcome; else the off-policy estimator (class doc)."""
        if not self.logged:
            return "exact"
        if self.estimator == "auto":
            return "snips" if self.has_propensities else "ips"
        if self.estimator not in metrics.ESTIMATORS:
            raise RouterMLError(f"estimator {self.estimator!r}: choose auto or one of {', '.join(metrics.ESTIMATORS)}")
        return self.estimator

    def dr_cost_model(self) -> np.ndarray | None:
        """The cost model of the doubly robust cost (``cost_est``) when the estimator is ``dr``, else None:
        the other estimators weigh the logged costs alone."""
        return self.cost_est if self.resolved_estimator() == "dr" else None

    def weights(self) -> np.ndarray | None:
        if not self.logged:
            return None
        if self.has_propensities:
            return metrics.propensity_weights(self.quality, self.propensity)
        return metrics.exposure_weights(self.quality)


#: below this median effective sample size per knob point, an off-policy curve's AIQ and best quality (maxima
#: over noisy points) read high: ``off_policy.thin_curve``, said on stderr by ``train`` and ``evaluate``
THIN_CURVE_ESS = 100

#: without a logged propensity, the rows with every outcome are scored exactly when at least this many
#: are held out, whatever share of the rows they are (:func:`scoreable_rows`)
MIN_EXACT_ROWS = 30


def scoreable_rows(quality: np.ndarray, rows: np.ndarray, propensity: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``rows`` to score: those with every outcome (exact evaluation, the usual offline case)
    when they are at least half of the rows with any outcome - or, where no outcome of ``rows`` carries a
    ``propensity`` (None: the data has none), when there are at least :data:`MIN_EXACT_ROWS` of them: a
    benchmark table with scattered gaps (26 models, 3% of the cells missing, leaves 45% of the rows
    complete) is scored exactly on its complete rows rather than by exposure weights, which are biased
    whenever which outcome is missing depended on the prompt. Otherwise - logged traffic - every row
    with an outcome, scored off-policy (module doc)."""
    observed = ~np.isnan(quality[rows])
    complete = rows[observed.all(axis=1)]
    anything = rows[observed.any(axis=1)]
    if len(complete) and len(complete) >= 0.5 * len(anything):
        return complete
    unweighted = propensity is None or not np.isfinite(propensity[rows][observed]).any()
    return complete if unweighted and len(complete) >= MIN_EXACT_ROWS else anything


def _draws(statistic: Callable[[np.ndarray], dict[str, float | None]], n: int, n_boot: int,
           seed: int) -> dict[str, np.ndarray]:
    """Each key's value on every bootstrap resample of ``range(n)`` (the draws of
    :func:`router_ml.metrics.bootstrap_ci`: same seed, same resamples), NaN where it is undefined -
    aligned by resample, so two reports drawn with one seed give paired differences."""
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {}
    for b in range(n_boot):
        try:
            result = statistic(rng.integers(0, n, size=n))
        except ValueError:
            continue
        for key, value in result.items():
            column = values.setdefault(key, np.full(n_boot, np.nan))
            column[b] = np.nan if value is None else value
    return values


def percentile_interval(draws: np.ndarray, *, undefined_is_inf: bool = False) -> list[float | None]:
    """The percentile 95% interval of the defined draws; [None, None] when none is. ``undefined_is_inf``: an
    undefined draw is a value past every other (savings at iso-quality: the reference quality never reached,
    no cost enough), so a bound that lands on one is None - unbounded - rather than taken over the resamples
    that happened to reach it."""
    if undefined_is_inf:  # a finite stand-in for infinity: the percentile's interpolation stays finite
        far = np.finfo(float).max / 4
        bounds = np.quantile(np.where(np.isnan(draws), far, draws), [0.025, 0.975]) if len(draws) else []
        return [float(v) if v < far / 2 else None for v in bounds] or [None, None]
    defined = draws[~np.isnan(draws)]
    if not len(defined):
        return [None, None]
    return [float(v) for v in np.quantile(defined, [0.025, 0.975])]


#: metrics whose undefined value means "never reached" (infinitely far), not "unknown"
_UNBOUNDED_WHEN_UNDEFINED = ("savings_at_iso_quality",)


def _estimate(quality: np.ndarray, cost: np.ndarray, choices: np.ndarray, weights: np.ndarray | None,
              estimator: str, reward_model: np.ndarray | None, *, fill: bool = True,
              cost_model: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean cost, mean quality) per knob value of ``choices``: exact without ``weights``, else the off-policy
    estimate kept inside the range of the observed qualities (IPS and DR can leave it; SNIPS never does);
    with a ``cost_model`` (:meth:`HeldOut.dr_cost_model`) the mean cost is doubly robust too:
    :func:`router_ml.metrics.curve_from_choices`.
    A knob value where no logged choice matched (SNIPS: undefined) is NaN, or with ``fill`` the worst
    observed quality - curves need a number there, a bootstrap resample is better skipped."""
    if weights is None:
        return metrics.curve_from_choices(quality, cost, choices)
    c, q = metrics.curve_from_choices(quality, cost, choices, weights=weights, estimator=estimator,
                                      reward_model=reward_model, cost_model=cost_model)
    q = np.clip(q, np.nanmin(quality), np.nanmax(quality))
    return c, np.where(np.isnan(q), np.nanmin(quality), q) if fill else q


_CHUNK = 65536  # prompts per matrix product in _curve_draws


def _curve_draws(quality: np.ndarray, cost: np.ndarray, choices: np.ndarray, weights: np.ndarray | None,
                 estimator: str, reward_model: np.ndarray | None, n_boot: int, seed: int,
                 cost_model: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every curve metric on each bootstrap resample of the prompts (NaN where undefined): the
    resamples of :func:`router_ml.metrics.bootstrap_ci` (same seed, same draws), each summarised once
    for all metrics. With every outcome known a resample's means are its counts times the chosen cells
    (``(k, n) @ (n,)``), not a copy of the resampled matrices: cheap at a million prompts."""
    n = quality.shape[0]
    rng = np.random.default_rng(seed)
    values = {name: np.full(n_boot, np.nan) for name in metrics.CURVE_KEYS}
    exact = weights is None and bool(np.isfinite(quality).all() and np.isfinite(cost).all())
    k, m = choices.shape[0], quality.shape[1]
    block = max(1, min(n_boot, 2**24 // max(1, n)))  # resamples at a time: 64 MiB of counts

    def resampled_means(draws: list[np.ndarray]) -> np.ndarray:
        """(2k + 2m, len(draws)): the resamples' mean chosen cost and quality per knob value and the
        single models' mean cost and quality, accumulated over chunks of prompts."""
        counts = np.stack([np.bincount(idx, minlength=n).astype(np.int32) for idx in draws])
        out = np.zeros((2 * k + 2 * m, len(draws)))
        for a in range(0, n, _CHUNK):
            rows = np.arange(a, min(a + _CHUNK, n))
            part = choices[:, rows]
            chosen = np.concatenate([cost[rows, part], quality[rows, part], cost[rows].T, quality[rows].T])
            out += chosen @ counts[:, rows].T.astype(np.float64)
        return out / n

    for first in range(0, n_boot, block):
        draws = [rng.integers(0, n, size=n) for _ in range(min(block, n_boot - first))]
        if exact:
            means = resampled_means(draws)
        for b, idx in enumerate(draws):
            try:
                if exact:
                    c, q, sc, sq = np.split(means[:, b], [k, 2 * k, 2 * k + m])
                    summary_ = metrics.curve_summary(c, q, single_costs=sc, single_qualities=sq)
                else:
                    w = None if weights is None else weights[idx]
                    rm = None if reward_model is None else reward_model[idx]
                    cm = None if cost_model is None else cost_model[idx]
                    summary_ = _curve_summary(quality[idx], cost[idx], choices[:, idx], w, estimator, rm, cm)[0]
            except ValueError:
                continue
            for name, column in values.items():
                value = summary_.get(name)
                column[first + b] = np.nan if value is None else value
    return values


def curve_draws(choices: np.ndarray, held: HeldOut, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Every curve metric of a router given as its ``choices`` (k, n) on each of ``n_boot`` bootstrap
    resamples of ``held``'s prompts drawn from ``seed`` (NaN where undefined), estimated as
    :func:`score_choices` estimates them: two routers' draws for the same seed are paired."""
    return _curve_draws(held.quality, held.cost, choices, held.weights(), held.resolved_estimator(),
                        held.reward_model, n_boot, seed, held.dr_cost_model())


def _curve_summary(quality: np.ndarray, cost: np.ndarray, choices: np.ndarray, weights: np.ndarray | None,
                   estimator: str = "ips", reward_model: np.ndarray | None = None,
                   cost_model: np.ndarray | None = None) -> tuple[dict[str, float | None], np.ndarray, np.ndarray]:
    c, q = _estimate(quality, cost, choices, weights, estimator, reward_model, cost_model=cost_model)
    sc, sq = metrics.single_model_points(quality, cost, weights=weights)
    return metrics.curve_summary(c, q, single_costs=sc, single_qualities=sq), c, q


def score_choices(choices: np.ndarray, held: HeldOut, *, wtps: np.ndarray, n_boot: int | None = None,
                  scores: np.ndarray | None = None) -> dict[str, Any]:
    """The report of a router given as its choices ``(k, n)`` at ``k`` knob values ``wtps``: curve
    metrics (with bootstrap intervals over prompts), RouteLLM's metrics from ``scores`` (n,) on
    two-model data with every outcome, the estimator, and the curve itself."""
    n_boot = held.n_boot if n_boot is None else n_boot
    quality, cost = held.quality, held.cost
    weights = held.weights()
    estimator = held.resolved_estimator()
    model, cost_model = held.reward_model, held.dr_cost_model()
    report: dict[str, Any]
    report, c, q = _curve_summary(quality, cost, choices, weights, estimator, model, cost_model)
    draws: dict[str, np.ndarray] = {}
    if n_boot:
        draws = _curve_draws(quality, cost, choices, weights, estimator, model, n_boot, held.seed, cost_model)
    report["estimator"] = estimator
    if weights is not None:
        ess = metrics.effective_sample_size(weights, choices)
        # support: the share of the candidate's choices that the log almost never made (< 1% of prompts)
        rare = np.flatnonzero((~np.isnan(quality)).mean(axis=0) < 0.01)
        report["off_policy"] = {
            "propensities": "logged" if held.has_propensities else "exposure (assumes prompt-independent logging)",
            "biased": not held.has_propensities,
            "effective_sample_size": {"min": float(ess.min()), "median": float(np.median(ess))},
            "unsupported_choice_share": float(np.isin(choices, rare).mean(axis=1).max()),
            # the curve's summaries take maxima over noisy points (AIQ: the area under their upper hull;
            # best quality): with few effective prompts per point the noise only pushes them up
            "thin_curve": bool(np.median(ess) < THIN_CURVE_ESS),
        }
    if scores is not None and held.two_model is not None and not held.logged:
        weak, strong = held.two_model
        report.update(metrics.routellm_metrics(scores, quality[:, weak], quality[:, strong]))
        if n_boot:
            two = _draws(lambda idx: metrics.routellm_metrics(scores[idx], quality[idx, weak], quality[idx, strong]),
                         len(scores), n_boot, held.seed)
            draws.update({key: two.get(key, np.full(n_boot, np.nan)) for key in metrics.TWO_MODEL_KEYS})
    if n_boot:
        report["ci95"] = {key: percentile_interval(values, undefined_is_inf=key in _UNBOUNDED_WHEN_UNDEFINED)
                          for key, values in draws.items()}
        report["draws"] = draws
    report["curve"] = {"willingness_to_pay": [wtp_to_json(w) for w in wtps], "cost": c.tolist(), "quality": q.tolist()}
    return report


def knob_choices(quality: np.ndarray, cost: np.ndarray, wtps: np.ndarray) -> np.ndarray:
    """``(k, n)``: the policy's choice for every prompt at each knob value, as the smallest integer type
    that holds a model index (81 knob values over 3 million prompts: 243 MB as int8, 1.9 GB as int64)."""
    return choose_each(quality, cost, wtps, dtype=np.int8 if quality.shape[1] <= 127 else np.int32)


#: prompts whose tie points :func:`router_wtps` reads (evenly spaced over the scored ones)
REFINE_PROMPTS = 4096


def router_wtps(pred: np.ndarray, cost: np.ndarray, wtps: np.ndarray, refine: int) -> np.ndarray:
    """``wtps`` plus ``refine`` knob values placed where this router's choices change: the quantiles of
    the willingness to pay at which two models tie on a prompt, ``(c_a - c_b) / (q_a - q_b)`` for the
    predicted quality ``q`` and the cost ``c`` its policy sees (over at most :data:`REFINE_PROMPTS`
    prompts). With two models these are exactly the points where one prompt switches, so each step of
    the refined sweep moves about ``n / refine`` prompts; the fixed grid's geometric steps (a factor of
    1.2 per step at 81 points) can leave a router whose predicted differences lie close together with a
    handful of operating points, and the area under its hull short of its curve. Adding points never
    lowers the hull. ``refine`` 0: ``wtps`` unchanged."""
    wtps = np.asarray(wtps, dtype=np.float64)
    if refine <= 0 or pred.shape[1] < 2 or not len(pred):
        return wtps
    rows = np.unique(np.linspace(0, len(pred) - 1, min(len(pred), REFINE_PROMPTS)).astype(np.int64))
    q, c = np.asarray(pred, dtype=np.float64)[rows], np.asarray(cost, dtype=np.float64)[rows]
    a, b = np.triu_indices(pred.shape[1], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ties = (c[:, a] - c[:, b]) / (q[:, a] - q[:, b])
    ties = ties[np.isfinite(ties) & (ties > 0)]
    if not ties.size:
        return wtps
    extra = np.quantile(ties, (np.arange(refine) + 0.5) / refine)
    return np.unique(np.concatenate([wtps, extra]))


def _two_model_scores(pred: np.ndarray, held: HeldOut) -> np.ndarray | None:
    if held.two_model is None:
        return None
    weak, strong = held.two_model
    return pred[:, strong] - pred[:, weak]


def score_predictions(pred: np.ndarray, held: HeldOut, *, n_boot: int | None = None) -> dict[str, Any]:
    """The report of a router given as its predicted quality ``pred`` (n, m): the policy turns it and
    ``held.cost_est`` into a choice per knob value of ``held.grid(pred)`` (the saved grid, refined for
    this router when ``held.refine`` is set); then :func:`score_choices`."""
    wtps = held.grid(pred)
    choices = knob_choices(pred, held.cost_est, wtps)
    return score_choices(choices, held, wtps=wtps, n_boot=n_boot, scores=_two_model_scores(pred, held))


def default_knob(pred: np.ndarray, held: HeldOut, willingness_to_pay: float, *,
                 n_boot: int | None = None) -> dict[str, Any]:
    """The router's operating point at one knob value - the one it ships with - estimated like its curve.

    ``quality`` and ``cost`` are the means over ``held``'s prompts of the chosen models' outcomes (exact
    with every outcome, else ``held``'s off-policy estimator), ``ci95`` their percentile bootstrap
    intervals over prompts (each resample re-estimates, so SNIPS is re-normalised on it; resamples
    where no logged choice matches the router's are skipped), ``models`` the share of prompts routed to
    each model and, off-policy, the Kish effective sample size of the matching logged choices.

    >>> default_knob(pred, held, 0.01)["quality"]   # doctest: +SKIP
    0.71
    """
    n_boot = held.n_boot if n_boot is None else n_boot
    choice = choose(pred, held.cost_est, willingness_to_pay)[None, :]
    weights, estimator, model = held.weights(), held.resolved_estimator(), held.reward_model
    cost_model = held.dr_cost_model()

    def point(idx: np.ndarray | slice) -> tuple[float, float]:
        w = None if weights is None else weights[idx]
        rm = None if model is None else model[idx]
        cm = None if cost_model is None else cost_model[idx]
        c, q = _estimate(held.quality[idx], held.cost[idx], choice[:, idx], w, estimator, rm, fill=False,
                         cost_model=cm)
        return float(c[0]), float(q[0])

    cost, quality = point(slice(None))
    n = held.quality.shape[0]
    out: dict[str, Any] = {"willingness_to_pay": wtp_to_json(willingness_to_pay),
                           "quality": None if np.isnan(quality) else quality, "cost": cost, "estimator": estimator}
    if n_boot:
        draws = _draws(lambda idx: dict(zip(("cost", "quality"), point(idx), strict=True)), n, n_boot, held.seed)
        draws = {key: draws.get(key, np.full(n_boot, np.nan)) for key in ("quality", "cost")}
        out["ci95"] = {key: percentile_interval(values) for key, values in draws.items()}
        out["draws"] = draws  # per resample, for paired comparisons (numpy arrays: not for JSON)
    shares = np.bincount(choice[0], minlength=len(held.models)) / n
    out["models"] = {held.models[j]: float(shares[j]) for j in np.argsort(-shares, kind="stable") if shares[j] > 0}
    if weights is not None:
        out["effective_sample_size"] = float(metrics.effective_sample_size(weights, choice)[0])
    return out


def write_metrics_file(path: str | Path, result: dict[str, Any]) -> None:
    """Write ``metrics.json`` (versioned) from :func:`training.baselines.evaluate_held_out`'s result."""
    payload = {"format": METRICS_FORMAT, VERSION_FIELD: METRICS_VERSION, "test": result["test"],
               "curve": result["router_curve"], "baseline_curves": result["baseline_curves"],
               "singles": result["singles"]}
    if result.get("knob_curve"):  # the curve the default knob is chosen on, where it is not the test split's
        payload["knob_curve"] = result["knob_curve"]
    Path(path).write_text(json.dumps(payload, indent=1))


def read_metrics_file(path: str | Path) -> dict[str, Any]:
    """Read a router directory's ``metrics.json``, checking its format version (files written before
    versions existed are read as version 1)."""
    data = read_versioned(path, what="metrics file", fmt=METRICS_FORMAT, version=METRICS_VERSION, legacy=True,
                          fix="retrain the router")
    if "test" not in data:
        raise RouterMLError(f"{path}: not a router-ml metrics file (no 'test' report)")
    return data
