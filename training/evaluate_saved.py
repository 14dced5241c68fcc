"""``evaluate_router`` and ``evaluate_many``: a saved router (checkpoint or artifact) scored on new data.

The router is loaded through :mod:`training.saved`, the data through the data layer, and the scoring
is :mod:`training.evaluation`'s one path, so a router is scored here exactly as in training's test
report. What this module adds is the checking that makes a number on someone else's data mean
something: prompts the router was trained on are dropped; on logged traffic (one model's outcome
per prompt) the log's and the router's models must match and the outcomes must carry the logging
policy's propensities, or the estimate is refused unless the caller forces a (flagged) biased one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_ml import metrics
from router_ml.errors import DataError, RouterMLError
from router_ml.pricing import PriceCatalog
from training.baselines import BASELINES, evaluate_held_out
from training.costs import observed_costs
from training.data import LoadReport, TrafficTable, load_traffic
from training.data.loader import quarantine_line
from training.evaluation import HeldOut, default_knob, scoreable_rows
from training.saved import SavedRouter, load_saved, wtp_or_default

__all__ = ["evaluate_many", "evaluate_router"]

log = logging.getLogger("router_ml.train")


def _artifact_report(path: str | Path, texts: list[str], models: tuple[str, ...], held: HeldOut,
                     reference: np.ndarray) -> dict[str, Any]:
    """An exported artifact scored through the runtime on the same prompts, costs and knob grid as the
    checkpoint's ``reference`` predictions, with the share of prompts routed differently at its knob."""
    from router_ml import Router
    from router_ml.policy import choose

    artifact = Router.load(path)
    absent = [m for m in models if m not in artifact.models]
    if absent:
        raise RouterMLError(f"{path}: the artifact has no output for {absent}; export it from this checkpoint")
    pred = artifact.predict(texts)[:, [artifact.models.index(m) for m in models]]
    result = evaluate_held_out(pred, held, baselines=())
    knob = artifact.willingness_to_pay
    changed = choose(pred, held.cost_est, knob) != choose(reference, held.cost_est, knob)
    return {"artifact": str(path), "quantization": artifact.manifest.get("quantization"),
            "max_abs_diff": float(np.max(np.abs(pred - reference))), "changed_routes": float(changed.mean()),
            "willingness_to_pay": None if np.isinf(knob) else knob, "test": result["test"]}


def _check_exports(saved: SavedRouter, artifacts: Sequence[str | Path]) -> None:
    """Before any work: each ``--artifact`` is an export of the checkpoint ``saved`` (the training config its
    manifest carries is the checkpoint's) - another router's artifact was scored beside it as its export."""
    if saved.kind != "checkpoint":
        return
    for path in artifacts:
        try:
            theirs = (json.loads((Path(path) / "manifest.json").read_text()).get("training") or {}).get("config")
        except (OSError, ValueError, AttributeError):
            continue  # Router.load names what is wrong with it
        if isinstance(theirs, dict) and theirs != saved.config:
            differ = sorted(k for k in set(theirs) | set(saved.config) if theirs.get(k) != saved.config.get(k))
            raise RouterMLError(f"{path}: not an export of the checkpoint {saved.path} (its training config "
                                f"differs, e.g. {differ[0]} = {theirs.get(differ[0])!r} against "
                                f"{saved.config.get(differ[0])!r}); give the artifact 'router-ml export --checkpoint "
                                f"{saved.path}' writes")


_NO_PROPENSITY_FIX = ("log the probability of every logged choice as the outcome's `propensity` (router-ml route/serve "
                      "with exploration write it to the decision log), or pass --estimator ips (or snips, dr) to "
                      "accept an estimate from exposure weights that is biased whenever the logging policy looked at "
                      "the prompt")


def _quarantine_unknown(table: TrafficTable, data: str | Path, report: LoadReport, known: tuple[str, ...],
                        extra: list[str], on_error: str) -> TrafficTable:
    """Logged records whose every outcome is of a model the router does not know say nothing about its
    choices: refused, or with ``--on-error quarantine`` set aside in the load's quarantine file."""
    unknown = [i for i, r in enumerate(table.records) if r.outcomes and not set(r.outcomes) & set(known)]
    if not unknown:
        return table
    if on_error != "quarantine":
        raise DataError(f"{data}: {len(unknown)} logged records have outcomes only of models the router does not "
                        f"know ({extra}; the router's models: {list(known)}); evaluate a router trained on those "
                        "models, drop the records, or rerun with --on-error quarantine to set them aside")
    assert report.quarantine is not None
    with open(report.quarantine, "a", encoding="utf-8") as f:
        for i in unknown:
            record = table.records[i]
            f.write(quarantine_line(f"{data} record {i + 1}", "outcomes",
                                    f"only models the router does not know ({sorted(record.outcomes)})",
                                    record.to_dict()))
    report.rejected += len(unknown)
    dropped = set(unknown)
    log.warning("%s: %d logged records of models the router does not know (%s) set aside in %s",
                data, len(unknown), extra, report.quarantine)
    return TrafficTable([r for i, r in enumerate(table.records) if i not in dropped], models=table.models)


def _never_explored(held: HeldOut) -> bool:
    """Whether every logged outcome of ``held`` (a cell observed in a record that misses some model's) carries
    propensity 1: a log written without exploration."""
    logged_rows = np.isnan(held.quality).any(axis=1)
    observed = ~np.isnan(held.quality[logged_rows]) & np.isfinite(held.propensity[logged_rows])
    return bool(observed.any()) and bool((held.propensity[logged_rows][observed] >= 1.0).all())


def _check_log_models(data: str | Path, router_dir: Path, models: Sequence[str], quality: np.ndarray,
                      missing: Sequence[str] = ()) -> None:
    """On logged traffic every model the router can choose must have been logged somewhere (``quality``
    (n, len(models)), NaN where not): its choices of a model that never was cannot be scored - they
    would silently count as misses (IPS) or drop out (SNIPS)."""
    observed = (~np.isnan(quality)).any(axis=0)
    never = [*missing, *(m for m, seen in zip(models, observed, strict=True) if not seen)]
    if never:
        raise DataError(f"{data}: the log has no outcome of {never}, which the router {router_dir} can choose, so its "
                        "choices of them cannot be scored off-policy; evaluate on a log whose exploration covered "
                        "every model of the router (of its unseen prompts), or on data with every model's outcome")


def evaluate_router(router_dir: str | Path | SavedRouter, data: str | Path, *, prices: str | Path | None = None,
                    include_seen: bool = False, cache_dir: str | Path | None = None, progress: bool = True,
                    n_boot: int | None = None, artifacts: Sequence[str | Path] = (), estimator: str = "auto",
                    willingness_to_pay: float | None = None, bootstrap_seed: int | None = None,
                    keep_draws: bool = False, knob_refine: int | None = None, **load_options: Any) -> dict[str, Any]:
    """Score a saved router - a checkpoint written by ``train`` or an exported artifact directory
    (:mod:`training.saved`) - on ``data`` in the same JSON shape as training's ``test``, on the knob
    grid it was trained with, plus its point at its default knob (``default_knob``;
    ``willingness_to_pay`` overrides the knob).

    Prompts a checkpoint was trained or validated on are dropped (and counted) unless
    ``include_seen`` - so evaluation on any data set stays held out; an artifact has no such list
    (``seen_prompts`` says so). Each of ``artifacts`` (exported ONNX directories of this
    checkpoint, fp32 or int8) is scored the same way through the torch-free runtime and reported
    under ``artifacts``.

    Logged traffic (some model's outcome missing) is scored off-policy by ``estimator``
    (:class:`training.evaluation.HeldOut`). ``auto`` is SNIPS when every logged outcome carries its
    ``propensity``: the lowest-variance of the three and, being self-normalised, never outside the
    range of the observed qualities. Without propensities ``auto`` refuses (DataError): an
    estimate from exposure weights is biased whenever the logging policy looked at the prompt; an
    explicit ``ips``/``snips``/``dr`` computes it anyway and marks the result ``biased`` with a
    ``warning``. ``dr`` uses the router's own predictions as its reward model. On logged traffic the
    router's and the log's models must match (DataError otherwise); records of models the router
    does not know are quarantined with ``on_error="quarantine"``.

    The bootstrap resamples are drawn with the router's training seed, or ``bootstrap_seed``; with
    ``keep_draws`` the result also holds ``draws``: the AIQ and the default knob's quality and cost on
    each resample, and the scored rows of ``data`` (numpy arrays, for :func:`training.compare.compare_routers`'s
    paired differences; not JSON). ``knob_refine`` replaces the ``eval.knob_refine`` the router was trained
    with (how many knob values refine its sweep: routers compared side by side are swept alike).
    """
    from training.checkpoint import prompt_hash
    from training.pipeline import _two_model  # the training side's own rule (imports this module)

    if n_boot is not None and n_boot < 0:
        raise ValueError(f"n_boot must be a whole number >= 0 (0: no intervals), got {n_boot!r}")
    saved = router_dir if isinstance(router_dir, SavedRouter) else load_saved(router_dir)
    _check_exports(saved, artifacts)
    wtp, wtp_source = wtp_or_default(saved, willingness_to_pay)
    catalog = PriceCatalog.load(prices) if prices else None
    table, report = load_traffic(data, prices=catalog, **load_options)
    router_models = saved.models
    logged = bool(np.isnan(table.quality).any())
    missing = [m for m in router_models if m not in table.models]
    extra = [m for m in table.models if m not in router_models]
    quarantined = 0
    models = tuple(m for m in router_models if m in table.models)
    if logged:
        if extra:
            before, on_error = len(table), load_options.get("on_error", "raise")
            table = _quarantine_unknown(table, data, report, router_models, extra, on_error)
            quarantined = before - len(table)
    unknown = [j for j, m in enumerate(table.models) if m not in router_models]
    beside = int((~np.isnan(table.quality[:, unknown])).sum()) if unknown else 0
    if beside:  # beside the router's own models in the same records: not scored, and said so
        log.warning("%s: %d outcomes of models the router does not know (%s) are not scored (`models_ignored`)",
                    data, beside, [table.models[j] for j in unknown])
    if len(models) < 2:
        raise DataError(f"{data}: outcomes for at least two of the router's models are needed to score its choices; "
                        f"found {list(models)} of {list(router_models)} (the data's models: {list(table.models)})")
    if missing and not logged:  # on logged traffic _check_log_models refuses it below
        log.warning("%s has no outcomes for %d of the router's models; choosing among the other %d",
                    data, len(missing), len(models))
    keep_cols = [router_models.index(m) for m in models]
    cols = [table.models.index(m) for m in models]
    if saved.seen is None or include_seen:
        keep = np.ones(len(table), dtype=bool)
    else:
        keep = np.array([prompt_hash(t) not in saved.seen for t in table.texts])
    rows = np.flatnonzero(keep)
    quality = table.quality[:, cols]
    cost = observed_costs(TrafficTable(table.records, models=models), np.arange(len(table)), catalog)
    scored = scoreable_rows(quality, rows, table.propensity[:, cols])
    if len(scored) == 0:
        raise DataError(f"{data}: no unseen record has an outcome for any of {list(models)}")
    with_any = int((~np.isnan(quality[rows])).any(axis=1).sum())
    set_aside = with_any - len(scored)
    if set_aside:  # the complete records are scored exactly; the partial ones were left out without a word
        logged_log = bool(np.isfinite(table.propensity[rows][:, cols]).any())
        log.warning("%s: %d records hold only some of the models' outcomes and are set aside: the %d with every "
                    "outcome are scored exactly%s", data, set_aside, len(scored),
                    "; evaluate the logged records in a file of their own to score them off-policy" if logged_log else
                    " (scattered gaps without propensities: an estimate from them would be biased)")
    if logged:
        _check_log_models(data, saved.path, models, quality[scored], missing)
    texts = [table.texts[int(i)] for i in scored]
    if missing or saved.two_model is None:  # weak/strong by mean quality on this data
        two_model = _two_model(TrafficTable(table.records, models=models), scored)
    else:
        two_model = saved.two_model
    held = HeldOut(quality=quality[scored], cost=cost[scored], cost_est=saved.cost_estimate(texts)[:, keep_cols],
                   wtps=saved.knob_grid, models=models, two_model=two_model,
                   n_boot=saved.n_boot if n_boot is None else n_boot,
                   seed=saved.seed if bootstrap_seed is None else bootstrap_seed,
                   propensity=table.propensity[scored][:, cols], estimator=estimator,
                   refine=saved.knob_refine if knob_refine is None else knob_refine)
    warning = None
    if not held.logged and estimator != "auto":  # said, not ignored: the user asked for an estimator
        log.warning("%s: every scored record holds every outcome, so the router is scored exactly; --estimator %s "
                    "applies to logged traffic only", data, estimator)
    if held.logged and not held.has_propensities:
        gaps = ~np.isnan(held.quality) & ~np.isfinite(held.propensity)
        lacking = int(gaps.sum())
        if estimator == "auto":
            first = [table[int(i)] for i in scored[np.flatnonzero(gaps.any(axis=1))[:3]]]  # three records built
            named = ", ".join(repr(r.sample_id) if r.sample_id is not None else repr(r.text[:40]) for r in first)
            raise DataError(f"{data}: logged traffic (one model's outcome per prompt), but {lacking} logged outcomes "
                            f"lack `propensity` (first records: {named}), so it cannot be scored without bias; "
                            f"{_NO_PROPENSITY_FIX}")
        warning = (f"{data}: {lacking} logged outcomes lack `propensity`; --estimator {estimator} used exposure "
                   "weights (share of prompts each model was logged on), which is biased when the logging policy "
                   "looked at the prompt")
    elif held.logged and _never_explored(held):
        # only the logging router's own choices are observed: another router's other choices have no support,
        # and self-normalising over its matching choices scored a router above the oracle
        if estimator == "auto":
            raise DataError(f"{data}: logged traffic in which every logged outcome has propensity 1 - the logging "
                            "router never explored - so only its own choices are observed and no other router can "
                            "be scored on it without bias; log with exploration (router-ml serve/route "
                            "--explore-rate R) or pass --estimator snips (ips, dr) to accept a biased estimate")
        warning = (f"{data}: every logged outcome has propensity 1 (the logging router never explored); --estimator "
                   f"{estimator} scored the router on the prompts where it chose as the logging router did, which is "
                   "biased")
    pred = saved.predict(texts, cache_dir=cache_dir, progress=progress)[:, keep_cols]
    if estimator == "dr":
        held = dataclasses.replace(held, reward_model=pred)
    untrained = [name for name, baseline in BASELINES.items() if not baseline.trained]
    result = evaluate_held_out(pred, held, baselines=untrained)
    seen_note = ("not checked: an artifact has no training-prompt list; evaluate its checkpoint directory to drop "
                 "the prompts it was trained on") if saved.seen is None else (
                 "kept (--include-seen)" if include_seen else "dropped")
    out = {"router": saved.router, "router_dir": str(saved.path), "router_kind": saved.kind, "data": str(data),
           "records": len(table) + quarantined, "scored": int(len(scored)), "dropped_seen": int((~keep).sum()),
           "seen_prompts": seen_note, "set_aside_partial": set_aside, "rejected": report.rejected,
           "missing_propensity": report.missing_propensity,
           "quarantined_unknown_model": quarantined,
           "models_used": list(models), "models_missing": missing,
           "models_ignored": extra, "biased": warning is not None, "unlogged_outcomes": held.unlogged_outcomes,
           "test": result["test"]}
    knob = default_knob(pred, held, wtp)
    knob_draws = knob.pop("draws", {})
    out["default_knob"] = {**knob, "source": wtp_source}
    if keep_draws:
        out["draws"] = {"aiq": result["router_draws"].get("aiq"), **knob_draws, "rows": scored}
    if warning:
        out["warning"] = warning
    if artifacts:
        out["artifacts"] = [_artifact_report(path, texts, models, held, pred) for path in artifacts]
    return out


def _macro(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean over data sets of each metric present in every set (``None`` otherwise)."""
    def mean(values):
        return float(np.mean(values)) if values and all(v is not None for v in values) else None

    keys = metrics.HEADLINE_KEYS
    macro: dict[str, Any] = {k: mean([r["test"].get(k) for r in results]) for k in keys}
    macro["baselines"] = {name: {k: mean([r["test"]["baselines"][name].get(k) for r in results]) for k in keys}
                          for name in results[0]["test"]["baselines"]}
    return macro


def evaluate_many(router_dir: str | Path, datasets: list[str | Path], **options: Any) -> dict[str, Any]:
    """Score a saved router on several data sets: each set's result (as :func:`evaluate_router`)
    under ``sets`` and the unweighted mean over the sets under ``macro`` - the same router tested
    in and out of the distribution it was trained on."""
    if not datasets:
        raise RouterMLError("give at least one --data set")
    results = [evaluate_router(router_dir, data, **options) for data in datasets]
    return {"router": results[0]["router"], "sets": results,
            "macro": {"sets": len(results), "scored": sum(r["scored"] for r in results), "test": _macro(results)}}
