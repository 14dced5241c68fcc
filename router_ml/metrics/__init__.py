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

This package is the one implementation of curves and single-model points: training's evaluation, the
``evaluate`` command, the bounds scripts and ``compare`` all go through it. Logged traffic, where only
some cells are observed, enters as one argument: per-cell ``weights`` (:func:`exposure_weights`), with
which a chosen cell's observed quality counts ``weights[i, j]`` times and unobserved cells count 0.

Every public name is imported from here; the code lives in three submodules:

* :mod:`router_ml.metrics.curve`: outcomes and curves of choices (:func:`curve_from_choices`,
  :func:`choice_outcomes`, :func:`single_model_points`, :func:`complete_rows`), the hull and
  RouterBench's numbers (:func:`quality_hull`, :func:`aiq`, :func:`savings_at_iso_quality`,
  :func:`best_quality`, :func:`curve_summary`, ``CURVE_KEYS``) and :func:`bootstrap_ci`;
* :mod:`router_ml.metrics.two_model`: RouteLLM's numbers (:func:`weak_and_strong`, :func:`pgr`,
  :func:`routellm_curve`, :func:`apgr`, :func:`cpt`, :func:`routellm_metrics`, ``TWO_MODEL_KEYS``);
* :mod:`router_ml.metrics.weights`: per-cell weights of logged traffic (:func:`exposure_weights`,
  :func:`propensity_weights`), :func:`effective_sample_size` and the off-policy ``ESTIMATORS``.

``HEADLINE_KEYS``, both families' keys, is defined here.
"""

from .curve import (
    CURVE_KEYS,
    aiq,
    best_quality,
    bootstrap_ci,
    choice_outcomes,
    complete_rows,
    curve_from_choices,
    curve_summary,
    quality_hull,
    savings_at_iso_quality,
    single_model_points,
)
from .two_model import TWO_MODEL_KEYS, apgr, cpt, pgr, routellm_curve, routellm_metrics, weak_and_strong
from .weights import ESTIMATORS, effective_sample_size, exposure_weights, propensity_weights

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

#: The headline metrics every report, table and comparison shows, in this order.
HEADLINE_KEYS = CURVE_KEYS + TWO_MODEL_KEYS
