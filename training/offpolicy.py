"""Training on logged traffic: completing the outcomes a log did not observe.

A logged record holds the outcome of the one model the deployed router chose (sometimes by
exploration). Masked training - every unobserved (record, model) cell left out of the loss - fits
each model's head only on the records where that model was logged: for the models the router rarely
chose, that is the bootstrap set plus a few explored records, and the thousands of records the log
adds teach those heads nothing (measured in the README: no better than the bootstrap alone).

What a logged outcome does say about the other models is how *hard* the prompt was: when the strong
model failed, the cheap ones probably failed too. Completion (``loss.logged_targets = "impute"``, the
default) uses exactly that, with a one-factor model of the models' surprises:

1. **first stage** - the configured router fitted on the records with every outcome (the bootstrap
   set), cross-fitted in ``loss.impute_folds`` folds: each such record gets an out-of-fold prediction,
   every other record the mean of the fold routers' predictions (a bagged, lower-variance prior);
2. **one factor** - the out-of-fold residuals ``r_m = q_m - prior_m`` of those records are fitted with
   factor analysis (scikit-learn) as ``r_m = lambda_m z + e_m``: ``z`` is how much harder (or easier)
   the prompt is than its text suggested, ``lambda_m`` how much model ``m`` feels it, ``psi_m`` the
   variance of its own noise ``e_m``;
3. **targets** - a logged record that observed the models ``O`` estimates its ``z`` by ridge-regularised
   generalised least squares, ``z = sum_O (lambda r / psi) / (sum_O lambda^2 / psi + loss.impute_ridge)``,
   and each unobserved model gets the target ``clip(prior_m + lambda_m z, 0, 1)``;
4. the router is trained on the completed table; an imputed cell weighs ``loss.imputed_weight``
   (observed cells 1, or their clipped inverse propensity with ``loss.propensity_clip``).

Why least squares and not the posterior mean of ``z`` (the mean-squared-error-optimal imputation,
which is ``impute_ridge = 1`` here): the targets feed a regression, which averages them over similar
prompts. An unbiased estimate of ``z`` makes ``E[target | prompt]`` the model's true expected quality
under the factor model; the posterior mean shrinks every transfer by the observation's reliability
(about 0.4 on MMLU-Pro) and the router learns a third of the difficulty signal the log holds. Measured
(README), less shrinkage trained better on MMLU-Pro, while a small ridge keeps a model whose outcome
says almost nothing about the others (a near-perfect model: ``lambda ~ 0``) from amplifying its
noise. The ridge is in units of the factor's variance (1).

Why the propensities do not enter the targets: a logged choice depended on the prompt (and the
exploration coin) only, so each model's outcomes are missing at random *given the prompt*, and a
regression on the prompt needs no reweighting to be unbiased. What the propensities buy is support:
exploration puts each model's outcomes on prompts the router would not send it, which is what the
first stage and the factor model cannot invent. Reweighting by ``1/p`` (up to 145 with 20% exploration
over 29 models) was measured and hurt (README); the off-policy *estimators* of ``router-ml evaluate``
are where propensities are essential.

Full-information data has nothing to complete and trains exactly as with ``"mask"``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Completion", "complete_targets", "factor_targets", "fit_factor", "min_full_records"]

log = logging.getLogger("router_ml.train")

#: ``fit_predict(train_rows, val_rows, predict_rows) -> (len(predict_rows), n_models)`` predicted quality,
#: or a dict of such predictions by first-stage name (the one with the best out-of-fold Brier score is used)
FitPredict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray | dict[str, np.ndarray]]
#: ``map_folds(tasks)``: ``fit_predict(*task)`` of each ``(train_rows, val_rows, predict_rows)`` task, in
#: order (e.g. the folds fitted side by side in worker processes, ``training.pipeline``)
MapFolds = Callable[[list[tuple[np.ndarray, np.ndarray, np.ndarray]]], Iterable[np.ndarray | dict[str, np.ndarray]]]


@dataclass
class Completion:
    """The completed quality matrix (NaN only where a record observed nothing), which cells were
    imputed, and a JSON-able report of what was done (or why nothing was)."""

    quality: np.ndarray
    imputed: np.ndarray
    report: dict[str, Any]


def fit_factor(residuals: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One-factor model of ``residuals`` (records, models): loadings ``lambda`` (signed so that they
    sum to >= 0: a harder prompt lowers quality) and noise variances ``psi`` (floored at 1e-6)."""
    from sklearn.decomposition import FactorAnalysis

    fa = FactorAnalysis(n_components=1, random_state=seed).fit(residuals)
    loadings = fa.components_[0]
    if loadings.sum() < 0:
        loadings = -loadings
    return loadings, np.maximum(fa.noise_variance_, 1e-6)


def factor_targets(quality: np.ndarray, prior: np.ndarray, loadings: np.ndarray, noise: np.ndarray, *,
                   ridge: float) -> np.ndarray:
    """Fill every unobserved cell of a record that observed something with
    ``clip(prior + loadings * z, 0, 1)``, ``z`` the ridge-regularised GLS estimate of the record's
    factor from its observed residuals (module doc); observed cells are kept."""
    observed = np.isfinite(quality)
    resid = np.where(observed, quality - prior, 0.0)
    z = (resid @ (loadings / noise)) / (observed @ (loadings ** 2 / noise) + ridge)
    filled = np.clip(prior + z[:, None] * loadings[None, :], 0.0, 1.0)
    return np.where(observed, quality, np.where(observed.any(axis=1, keepdims=True), filled, np.nan))


def _range(values: np.ndarray) -> dict[str, float]:
    return {"min": round(float(values.min()), 4), "max": round(float(values.max()), 4)}


def min_full_records(n_models: int) -> int:
    """The fewest full-information records the first stage and a covariance of ``n_models`` need."""
    return max(50, 2 * n_models)


def complete_targets(quality: np.ndarray, rows: np.ndarray, *, fit_predict: FitPredict, folds: int,
                     seed: int, ridge: float, map_folds: MapFolds | None = None) -> Completion:
    """Complete the unobserved cells of ``quality[rows]`` (module doc). ``rows`` are the records
    training may read (train + validation); other rows are returned untouched. The folds' first
    stages are ``fit_predict`` one after another, or ``map_folds`` of them."""
    started = time.perf_counter()
    quality = np.asarray(quality, dtype=np.float64)
    observed = np.isfinite(quality)
    rows = np.asarray(rows)
    partial = rows[observed[rows].any(axis=1) & ~observed[rows].all(axis=1)]
    full = rows[observed[rows].all(axis=1)]
    report: dict[str, Any] = {"method": "impute", "full_records": int(len(full)),
                              "partial_records": int(len(partial))}
    untouched = Completion(quality, np.zeros_like(observed), report)
    if len(partial) == 0:
        report["note"] = "every record has every outcome: nothing to complete"
        return untouched
    needed = min_full_records(quality.shape[1])
    if len(full) < needed:
        report.update(method="mask", note=f"{len(full)} records with every outcome; completing a log needs "
                      f"{needed} (a bootstrap set evaluated on every model) - trained masked instead")
        log.warning("loss.logged_targets=impute: %s", report["note"])
        return untouched
    rng = np.random.default_rng(seed)
    order = rng.permutation(full)
    out_of_fold: dict[str, np.ndarray] = {}
    bagged: dict[str, np.ndarray] = {}
    helds, tasks = [], []
    for k in range(folds):
        held = np.sort(order[k::folds])
        rest = rng.permutation(np.setdiff1d(order, held))
        n_val = max(1, len(rest) // 10)  # the fold router's own early-stopping split
        helds.append(held)
        tasks.append((np.sort(rest[n_val:]), np.sort(rest[:n_val]), np.concatenate([held, partial])))
    fold_preds = map_folds(tasks) if map_folds is not None else (fit_predict(*task) for task in tasks)
    for held, preds in zip(helds, fold_preds, strict=True):
        for name, pred in (preds.items() if isinstance(preds, dict) else [("", preds)]):
            out_of_fold.setdefault(name, np.full((len(quality), quality.shape[1]), np.nan))[held] = pred[:len(held)]
            bagged[name] = bagged.get(name, 0.0) + pred[len(held):] / folds
    # several first stages (a dict per fold): the one with the lowest out-of-fold Brier score on the
    # records with every outcome - outcomes, never imputations, decide
    brier = {name: float(np.mean((quality[full] - oof[full]) ** 2)) for name, oof in out_of_fold.items()}
    stage = min(brier, key=brier.get)
    out_of_fold, bagged = out_of_fold[stage], bagged[stage]
    if stage:
        report.update(first_stage=stage, first_stage_candidates={n: round(b, 5) for n, b in brier.items()})
    loadings, noise = fit_factor(quality[full] - out_of_fold[full], seed)
    completed = quality.copy()
    completed[partial] = factor_targets(quality[partial], bagged, loadings, noise, ridge=ridge)
    imputed = np.isfinite(completed) & ~observed
    reliability = loadings ** 2 / noise  # how much one observed residual says about the prompt's factor
    report.update(folds=folds, ridge=ridge, imputed_cells=int(imputed.sum()),
                  first_stage_brier=round(float(np.mean((quality[full] - out_of_fold[full]) ** 2)), 5),
                  factor_loadings=_range(loadings), signal_to_noise=_range(reliability),
                  seconds=round(time.perf_counter() - started, 2))
    return Completion(completed, imputed, report)
