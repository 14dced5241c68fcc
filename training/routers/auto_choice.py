"""How ``router.kind = "auto"`` chooses between candidates on held-out scores, and how the choice is logged.

The candidates' held-out predictions are scored by the evaluation's own AIQ (:func:`held_out_aiq`). The
best of several noisy scores is biased upward, so a single candidate replaces the average of them (the
ensemble) only where it routes better on at least ``router.ensemble_confidence`` of paired bootstrap
resamples of the held-out prompts (:func:`paired_wins`, :func:`keep_candidate`); a completed log, whose
held-out scores leak, decides one thing only (:func:`completed_log_choice`). The selection that fits the
candidates is :mod:`training.routers.auto`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from router_ml import metrics
from training.evaluation import HeldOut, curve_draws, knob_choices, score_choices
from training.routers.heads import apply_platt, expected_calibration_error, fit_platt

__all__ = ["AUTO_CANDIDATES", "completed_log_choice", "held_out_aiq", "keep_candidate", "log_selection",
           "paired_wins", "score_variant", "without_cost_range"]

#: the candidate families ``router.candidates`` may name, in tie-break order (simplest last wins nothing)
AUTO_CANDIDATES = ("mlp", "mf", "groups", "logreg", "knn", "lexical", "encoder", "ensemble")


def held_out_aiq(pred: np.ndarray, held: HeldOut) -> float:
    """The AIQ of routing ``held``'s prompts on ``pred``, to six decimals (-inf where it is undefined).

    Where every model costs the same on those prompts (self-hosted models priced at 0, say) there is no
    cost range to average over, so no AIQ: the score is then the curve's best quality - every knob
    value makes the same choices, and the average over a range shrinking to one cost tends to that
    point's quality - so the candidates, their settings and the blends are still chosen by how well
    they route, not left to the tie-break order."""
    wtps = held.grid(pred)
    return _routing_score(score_choices(knob_choices(pred, held.cost_est, wtps), held, wtps=wtps, n_boot=0))


def without_cost_range(held: HeldOut) -> bool:
    """True where every model's mean cost on ``held``'s prompts is the same: the candidates are then
    scored by the best quality they route to (:func:`held_out_aiq`)."""
    costs = metrics.single_model_points(held.quality, held.cost, weights=held.weights())[0]
    return bool(costs.max() <= costs.min())


def _routing_score(summary: dict[str, Any]) -> float:
    """A curve summary's AIQ, or its best quality where no model costs more than another (module doc)."""
    for key in ("aiq", "best_quality"):
        value = summary.get(key)
        if value is not None and not np.isnan(value):
            return round(float(value), 6)
    return float("-inf")


def score_variant(raw: np.ndarray, quality: np.ndarray, held: HeldOut, *,
                  calibrate: bool) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None, dict[str, Any]]:
    """One candidate variant's held-out predictions ``raw`` scored against the outcomes ``quality``:
    ``(the predictions kept, the Platt scale and shift they carry or None, the report entry)``.

    With ``calibrate``, Platt scaling per model is fitted and kept only where it routes better: it fits
    log loss, not AIQ (MMLU-Pro: worse); the entry reports the AIQ and expected calibration error with
    and without it either way. Not on a completed log's guesses (the caller's rule): fitted to imputed
    cells, the scaling maps each model to the first stage's guesses (off-policy protocol, ten MMLU-Pro
    seeds: skipping it there routed better on eight)."""
    entry: dict[str, Any] = {"val_aiq": held_out_aiq(raw, held), "ece": expected_calibration_error(raw, quality),
                             "calibrated": False}
    if not calibrate:
        return raw, None, entry
    scale, shift = fit_platt(raw, quality)
    version = apply_platt(raw, scale, shift)
    tried = {"val_aiq_calibrated": held_out_aiq(version, held),
             "ece_calibrated": expected_calibration_error(version, quality)}
    entry = {**entry, "val_aiq_uncalibrated": entry["val_aiq"], "ece_uncalibrated": entry["ece"], **tried}
    if tried["val_aiq_calibrated"] > entry["val_aiq_uncalibrated"]:
        entry.update(val_aiq=tried["val_aiq_calibrated"], ece=tried["ece_calibrated"], calibrated=True)
        return version, (scale, shift), entry
    return raw, None, entry


def paired_wins(pred: np.ndarray, other: np.ndarray, held: HeldOut, seed: int, n_boot: int = 200) -> float:
    """The share of ``n_boot`` bootstrap resamples of ``held``'s prompts (the same resample for both)
    on which ``pred`` routes to a higher AIQ than ``other`` (a higher best quality where every model costs
    the same: :func:`held_out_aiq`). A prompt's choice at each knob value is the
    policy's on that prompt alone, so both routers choose once, and each resample's AIQ comes from the
    evaluation's own bootstrap (:func:`training.evaluation.curve_draws`, the same draws for both: with
    every outcome known, a resample's means are its counts times the chosen cells)."""
    draws = [curve_draws(knob_choices(p, held.cost_est, held.grid(p)), held, n_boot, seed) for p in (pred, other)]
    mine, theirs = ([_routing_score({key: d[key][b] for key in ("aiq", "best_quality")}) for b in range(n_boot)]
                    for d in draws)
    return sum(a > b for a, b in zip(mine, theirs, strict=True)) / n_boot


def keep_candidate(report: dict[str, dict[str, Any]], confidence: float) -> str:
    """The candidate a selection ``report`` keeps: the best held-out AIQ (ties: :data:`AUTO_CANDIDATES`
    order), unless that is a single candidate whose ``beats_ensemble`` share is below ``confidence``."""
    leader = max((c for c in AUTO_CANDIDATES if c in report), key=lambda c: report[c]["val_aiq"])
    if leader != "ensemble" and "ensemble" in report and report[leader]["beats_ensemble"] < confidence:
        return "ensemble"
    return leader


def completed_log_choice(report: dict[str, dict[str, Any]]) -> str | None:
    """What a completed log keeps: ``groups`` where its held-out AIQ beats its own MLP's, else the
    ensemble (None: neither was fitted; ``beats_its_mlp`` in the report).

    The two share the MLP fitted in the same part, so the comparison asks one question - does the
    group estimate add to it - and the leak of these scores (the first stage saw the scored records)
    favours the MLP, which fits each record's guesses, over a group estimate, which averages a group's
    completed targets over every logged record of the group. Measured (README, "The whole protocol on
    the default config", seeds 0-4): ``groups`` kept on all five MMLU-Pro-29 seeds, three of five of
    MMLU-Pro-7 and RouteLLM, none of the demo's (whose task templates the text gives away, and where
    ``groups`` routed worse on every seed); the share of the learning gap closed, against always
    keeping the ensemble, 0.14 -> 0.34, 0.25 -> 0.35, 0.56 -> 0.71 and 0.37 -> 0.37."""
    adds = "groups" in report and "mlp" in report and report["groups"]["val_aiq"] > report["mlp"]["val_aiq"]
    if "groups" in report:
        report["groups"]["beats_its_mlp"] = adds
    return "groups" if adds else ("ensemble" if "ensemble" in report else None)


def log_selection(tracker, router) -> dict[str, Any] | None:
    """Log an auto router's choice (params) and every candidate's held-out scores (metrics); return the
    selection report for the run summary, or None for any other router."""
    selection = getattr(router, "selection_", None)
    if not selection:
        return None
    tracker.log_params({"selection.chosen": selection["chosen"], "selection.mode": selection["mode"]})
    blend = selection.get("group_blend")
    if blend is not None:
        kept = f"{blend['field']} x {blend['weight']:g}" if blend["field"] else "none"
        tracker.log_params({"selection.group_blend": kept})
        tracker.log_metrics({f"selection.group_blend.{k}": blend[k] for k in ("val_aiq", "val_aiq_without",
                                                                             "beats_unblended")
                             if isinstance(blend.get(k), int | float)})
    distilled = selection.get("distilled")
    if distilled is not None:  # router.distill: one MLP fitted to the chosen head's predictions in its place
        under = distilled.get("kept_lexical_blend")
        tracker.log_params({"selection.distilled": f"{distilled['replaced']} -> mlp"
                            + ("" if under is None else f" under the lexical blend x {under:g}")})
        tracker.log_metrics({f"selection.distilled.{k}": distilled[k]
                             for k in ("mean_abs_difference_stop", "seconds", "mixed_prompts") if k in distilled})
    words = selection.get("lexical_blend")
    if words is not None:
        tracker.log_params({"selection.lexical_blend": f"x {words['weight']:g}" if words["kept"] else "none"})
        tracker.log_metrics({f"selection.lexical_blend.{k}": words[k] for k in ("val_aiq", "val_aiq_without")})
    tracker.log_metrics({f"selection.{name}.{key}": value for name, entry in selection["candidates"].items()
                         for key, value in entry.items()
                         if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)})
    return selection

