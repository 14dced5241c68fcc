"""RouteLLM's metrics of a router between two models: PGR, APGR and CPT (numpy only).

RouteLLM (Ong et al., 2024) ranks prompts by a score and calls the strong model above a threshold; its
numbers are read off the curve over its quantile thresholds (:func:`routellm_curve`, :func:`pgr`,
:func:`apgr`, :func:`cpt`, :func:`routellm_metrics`), for two-model data only (:func:`weak_and_strong`
names the two). Part of :mod:`router_ml.metrics`, which re-exports every public name here.
"""

from __future__ import annotations

import numpy as np

from .curve import _trapezoid

__all__ = [
    "TWO_MODEL_KEYS",
    "apgr",
    "cpt",
    "pgr",
    "routellm_curve",
    "routellm_metrics",
    "weak_and_strong",
]

#: RouteLLM's numbers, defined for two-model data only (:func:`routellm_metrics`).
TWO_MODEL_KEYS = ("apgr", "cpt_50", "cpt_80")

# RouteLLM's evaluate.py cuts the scores into 10 quantile bins, giving 11 thresholds.
_ROUTELLM_NUM_BINS = 10


def weak_and_strong(mean_quality: np.ndarray) -> tuple[int, int]:
    """Return (weak, strong) model indices of two-model data: the strong one has the higher mean quality
    (the first on a tie), as RouteLLM names them.

    >>> weak_and_strong(np.array([0.8, 0.6]))
    (1, 0)
    """
    mean_quality = np.asarray(mean_quality, dtype=float)
    if mean_quality.shape != (2,):
        raise ValueError(f"weak and strong models are defined for two models, got {mean_quality.shape[0]}")
    if not np.isfinite(mean_quality).all():
        raise ValueError(f"mean qualities must be finite, got {mean_quality.tolist()}")
    strong = int(np.argmax(mean_quality))
    return 1 - strong, strong


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
