"""Per-cell weights of logged traffic and the off-policy estimators they feed (numpy only).

Logged traffic rarely has every model's outcome for every prompt. It enters the curves of
:mod:`router_ml.metrics.curve` as one argument, per-cell ``weights`` of shape (n_prompts, n_models):
:func:`exposure_weights` (random exposure) or :func:`propensity_weights` (the logging policy's own
probabilities), with which a chosen cell's observed quality counts ``weights[i, j]`` times and
unobserved cells count 0. ``ESTIMATORS`` names how weighted qualities become a mean and
:func:`effective_sample_size` says how many prompts such an estimate is worth. Part of
:mod:`router_ml.metrics`, which re-exports every public name here.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ESTIMATORS",
    "effective_sample_size",
    "exposure_weights",
    "propensity_weights",
]

#: How weighted (logged-traffic) qualities become a mean: :func:`curve_from_choices`'s ``estimator``.
ESTIMATORS = ("ips", "snips", "dr")


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
    if weights.ndim != 2:
        raise ValueError(f"weights must have shape (n_prompts, n_models), got {weights.shape}")
    _check_weights(weights, weights.shape)
    choices = _check_choices(choices, *weights.shape)
    chosen = weights[np.arange(weights.shape[0])[None, :], choices]
    # scaled by each row's largest weight first: the same ratio, and a propensity of 1e-300 (a weight of
    # 1e300, valid input) no longer squares to inf and turns the size into NaN
    top = chosen.max(axis=1, keepdims=True, initial=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(top > 0, chosen / np.where(top > 0, top, 1.0), 0.0)
    squares = (scaled**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(squares > 0, scaled.sum(axis=1) ** 2 / squares, 0.0)


def _check_choices(choices: np.ndarray, n: int, m: int) -> np.ndarray:
    """``choices`` as a (k, n) array of model indices in [0, m), or ValueError saying what it is instead (a
    negative index once wrapped round to the last model)."""
    choices = np.asarray(choices)
    if choices.ndim != 2 or choices.shape[1] != n:
        raise ValueError(f"choices must have shape (k, {n}) (one row per knob value), got {choices.shape}")
    if not np.issubdtype(choices.dtype, np.integer):
        raise ValueError(f"choices must hold integer model indices, got dtype {choices.dtype}")
    if choices.size and (choices.min() < 0 or choices.max() >= m):
        raise ValueError(f"choices must be model indices in [0, {m}), got values in [{choices.min()}, {choices.max()}]")
    return choices


def _check_weights(weights: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    weights = np.asarray(weights, dtype=float)
    if weights.shape != shape:
        raise ValueError(f"weights must have the outcome matrices' shape {shape}, got {weights.shape}")
    if not (np.isfinite(weights).all() and (weights >= 0).all()):
        raise ValueError("weights must be finite and >= 0 (0 for a cell whose outcome was not observed)")
    return weights
