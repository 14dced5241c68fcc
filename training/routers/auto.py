"""``router.kind = "auto"``: fit every candidate router and keep the one that routes best on held-out data.

Users bring small logs (a few hundred to a few thousand labelled prompts) of data nobody tuned a
router for; no single head wins everywhere there (an MLP overfits 300 prompts, kNN and a logistic
regression hold up). So the candidates - ``mlp``, ``mf``, ``logreg`` (inverse L2 strength from
``router.logreg_c``), ``knn`` (``k`` from ``router.knn_k``), ``groups`` (the MLP blended with a group
estimate, :class:`~training.routers.neural.GroupBlend`, the group field from ``router.auto_groups`` a
hyperparameter; only when a field passes
:func:`~training.routers.auto_groups.group_fields_to_try`), ``encoder`` (the fine-tuned
encoder of ``router.auto_encoder_config``, tried where a CUDA device is present:
:mod:`training.routers.auto_encoder`) and ``ensemble`` (the mean
of the other families' (calibrated) predictions over the static features) - are fitted on the
training part and scored by the evaluation's own AIQ (:func:`~training.routers.auto_choice.held_out_aiq`,
the policy swept over the router's knob grid):

- on the validation split when train + validation hold at least ``router.cv_below`` (20,000) records and the
  validation split at least :data:`MIN_VALIDATION` prompts;
- otherwise by ``router.cv_folds``-fold cross-validation over train + validation (the torch
  candidates early-stop on a tenth of each fold's training part), every record scored once.

The ensemble is kept unless the single candidate with the best held-out AIQ beats it beyond noise: on
at least ``router.ensemble_confidence`` (0.95) of 200 paired bootstrap resamples of the held-out
prompts (``beats_ensemble`` in the report). The best of several noisy scores is biased upward, and
between candidates within noise of each other the average is the safe choice; a fixed AIQ margin would
be a different bar at every data size, a share of paired resamples is the same one
(docs/auto-router-studies.md, "Choosing between candidates": on seven small tables nobody tuned for,
``scripts/auto_selection_study.py``, no rule separates from another; this one keeps a single candidate
where it is clearly better).
Where the held-out records are completed logged ones (fewer than :data:`MIN_VALIDATION` with every
outcome), their imputed cells are scored too. Wherever completed logged records train the candidates
(at least :data:`TUNE_ONLY_IMPUTED_SHARE` of the cells imputed), the scores - on guesses, or on records
with every outcome that the first stage was fitted on - tune each candidate's hyperparameters and decide
two things. First, whether the group estimate adds to the MLP (``groups`` against its own MLP; both carry the same
leak); ``groups`` is kept where it does, else the ensemble. Nothing is Platt-calibrated and no group blend
is kept (``completed_log`` in the report). Second, the lexical blend, decided as everywhere: the regression
over the prompt's words shares less with the first stage (over the static features) than the candidates do,
so the leak favours it less than what it is blended into (never chosen alone there).

Each candidate's held-out predictions are Platt-calibrated per model (``router.calibrate``), kept
where that routes better (Platt scaling fits log loss, not AIQ; the expected calibration error before
and after is reported either way), and its hyperparameters are the grid point
with the best held-out AIQ. After the choice, the winner's held-out predictions are blended with each
group field's estimate at the weights of ``router.group_blend`` (:meth:`_Selection._blend`); the best
blend is kept where it routes better than the winner alone. A group estimate scored on held-out records
is always fitted without them.

The ``lexical`` candidate (a logistic regression over the prompt's TF-IDF, :mod:`training.routers.lexical`;
tried from ``router.lexical_min_records`` train + validation records, on cross-validated data: full-information
records, and completed logged ones with ``router.lexical_on_logs``) reads token ids, not the features, so it
is not averaged into the ensemble: after the choice (and the group blend) the winner is mixed with it,
``(1 - w) * winner + w * lexical`` at ``w = router.lexical_blend``, where that routes at least as well on the
held-out records (:meth:`_Selection._lexical_blend`, ``lexical_blend`` in the report); it can also win alone,
except on a completed log.

The winner is refitted where that helps - logistic regression and kNN
on all of train + validation, the torch candidates on train with early stopping on validation (after
CV) - and kept as one torch head (:mod:`training.routers.heads`), saved and exported like any router.
A winning encoder is handed to the pipeline as :attr:`AutoRouter.winner_` and exported as an encoder.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from router_ml.errors import RouterMLError
from router_ml.policy import knob_grid
from training.evaluation import HeldOut
from training.parallel import in_background, ordered_map
from training.routers.auto_choice import (
    AUTO_CANDIDATES,
    completed_log_choice,
    held_out_aiq,
    keep_candidate,
    paired_wins,
    score_variant,
    without_cost_range,
)
from training.routers.auto_groups import blended, known_groups
from training.routers.auto_parts import (
    MIN_VALIDATION,
    TUNE_ONLY_IMPUTED_SHARE,
    CandidateParts,
    grid_values,
    member_config,
    one_thread,
)
from training.routers.heads import (
    Calibrated,
    KNNHead,
    MeanHead,
    build_head,
    expected_calibration_error,
    fit_logreg,
)
from training.routers.lexical import LexicalMix, fit_lexical, lexical_featurizer, padded_ids
from training.routers.neural import GroupFit, MLPRouter, TorchRouter
from training.trainer import Batchable

__all__ = ["MIN_VALIDATION", "TUNE_ONLY_IMPUTED_SHARE", "AutoRouter", "FirstStages", "torch_spec"]

#: the candidates whose final fit reads the pool's features or token counts alone (no torch training
#: loop, no progress callback): fitted on a worker process beside the torch finals where workers run
_POOL_FINALS = ("logreg", "knn", "lexical")
log = logging.getLogger("router_ml.train")


def torch_spec(router: TorchRouter) -> dict[str, Any]:
    """The :func:`~training.routers.heads.build_head` spec of a fitted MLP/MF router's module."""
    r = router.config.router
    base = ({"type": "mlp", "hidden": r.hidden, "layers": r.layers, "dropout": r.dropout} if router.kind == "mlp"
            else {"type": "mf", "model_dim": r.model_dim, "dropout": r.dropout})
    if r.ensemble > 1:
        base = {"type": "ensemble", "members": [base] * r.ensemble}
    if getattr(router, "groups_", None):
        base = {"type": "groups", "base": base, "groups": len(router.groups_), "weight": r.group_weight,
                "names": router.groups_}
    return base


class FirstStages(TorchRouter):
    """The auto router's first stage for completing logged records' targets (training/offpolicy.py):
    cross-fitting the whole selection five times would cost five selections (measured on MMLU-Pro: four
    times the training time, an out-of-fold Brier score no better). Instead three cheap stages - a
    logistic regression (C = 1, the baseline's), the MLP (the config's, early-stopped on the fold's
    tenth) and their mean - are cross-fitted side by side and the one with the lowest out-of-fold Brier
    score on the records with every outcome completes the log (:meth:`predict_stages`; the MLP fits the
    demo far better, the logistic regression MMLU-Pro). Not a router kind of its own: never saved."""

    kind = "logreg"

    def fit(self, train: Batchable, val: Batchable | None = None, *, wtp_range: tuple[float, float],
            on_epoch=None) -> FirstStages:
        pool = train.concat(val)
        mlp_config = member_config(self.config, "mlp")
        with one_thread(self.config):
            self.module_ = fit_logreg(pool.input_rows(np.arange(len(pool)))[0], pool.quality, 1.0)
            self.mlp_ = MLPRouter(config=mlp_config, n_models=self.n_models, input_dim=self.input_dim).fit(
                train, val, wtp_range=wtp_range)
        return self

    def predict_stages(self, inputs: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
        """Each first stage's predicted quality: ``logreg``, ``mlp`` and their ``mean``."""
        logreg, mlp = self.predict(inputs), self.mlp_.predict(inputs)
        return {"logreg": logreg, "mlp": mlp, "mean": (logreg + mlp) / 2}


class AutoRouter(TorchRouter):
    """Chooses among candidate routers by held-out AIQ (module doc); its module is the winner's head."""

    kind = "auto"
    first_stage = FirstStages

    @property
    def reads_tokens(self) -> bool:
        """Whether the fitted head reads the prompts' token ids beside the features (the lexical blend kept,
        or the ``lexical`` candidate chosen)."""
        return bool(getattr(getattr(self, "module_", None), "reads_tokens", False))

    @property
    def predict_batch(self) -> int:
        """Prompts per forward pass when predicting: a head that reads token ids compares every pair of a
        prompt's ids, ``(batch, T, T)`` floats - 256 MB for 1,024 prompts padded to 256 tokens - so 128."""
        return 128 if self.reads_tokens else TorchRouter.predict_batch

    def inputs(self, texts: list[str], features: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """The features, as for any head, and - once a head that reads token ids is fitted - the
        prompts' padded ``(input_ids, attention_mask)``; the prompts are kept for the ``encoder`` and
        ``lexical`` candidates, which tokenize the training pool's own when they are fitted."""
        self.texts_ = texts
        inputs = super().inputs(texts, features)
        if self.reads_tokens:
            return (*inputs, *padded_ids(lexical_featurizer(self.config), texts))
        return inputs

    def fit(self, train: Batchable, val: Batchable | None = None, *, wtp_range: tuple[float, float],
            on_epoch=None) -> AutoRouter:
        """Select and fit the winner. When it is the fine-tuned encoder, :attr:`winner_` holds that
        :class:`EncoderRouter` (it reads token ids, not these features): the run goes on with it."""
        selection = _Selection(self, train, val, wtp_range, on_epoch)
        with one_thread(self.config):
            self.module_, self.spec_, self.selection_ = selection.run()
        self.winner_ = selection.winner
        self.heldout_ = selection.heldout  # (table rows, predictions): the default knob is chosen on them too
        return self

    def predict_logits(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        if getattr(self, "winner_", None) is not None:
            raise RouterMLError("the auto router chose the fine-tuned encoder: predict with its winner_ "
                                "(EncoderRouter) on winner_.inputs(texts, None), as the training pipeline does")
        return super().predict_logits(inputs)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "spec": self.spec_, "selection": self.selection_}

    def rebuild(self, info: dict[str, Any]) -> torch.nn.Module:
        self.spec_, self.selection_ = info["spec"], info.get("selection")
        return build_head(self.spec_, self.input_dim, self.n_models)


def _final_task(selection: _Selection, family: str, param: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """:meth:`_Selection._final` of a family that reads the pool alone, on the selection's threads."""
    with one_thread(selection.config):
        return selection._final(family, param)


def _score_task(pred: np.ndarray, quality: np.ndarray, held: HeldOut, calibrate: bool, config):
    """:func:`~training.routers.auto_choice.score_variant`, on the threads the selection's own process uses."""
    with one_thread(config):
        return score_variant(pred, quality, held, calibrate=calibrate)


class _Selection(CandidateParts):
    """One run of the selection: the candidates' held-out predictions (:class:`CandidateParts`), their
    scores, the choice, the blends and the final head."""

    def run(self) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
        started = time.perf_counter()
        variants = self._variants()
        preds = {v: np.full(self.pool.quality.shape, np.nan) for v in variants}
        parts = self._parts()
        log.info("auto: %s on %d records: %s", "cross-validating" if self.cv else "validating", self.n,
                 ", ".join(self.families))
        self._fit_parts(parts, preds)
        scored = np.concatenate([s for _, s in parts])
        # logged records score the candidates badly: an imputed cell is no outcome, and a cell left
        # unobserved (loss.logged_targets = "mask") is scored by exposure weights, biased when the logging
        # router looked at the prompt - so the records whose every outcome was observed (the bootstrap
        # set) score them instead, where there are enough
        imputed = self.pool.imputed
        observed = np.isfinite(self.pool.quality[scored])
        if imputed is not None:
            observed &= ~imputed[scored]
        full = observed.all(axis=1)
        if not full.all() and full.sum() >= MIN_VALIDATION:
            scored = scored[full]
        # else imputed cells are scored as outcomes: they are the first stage's guesses (FirstStages),
        # which favour the candidate most like it - measured (README, off-policy protocol on MMLU-Pro, a
        # logistic-regression first stage): the logistic regression "beat" the ensemble on all five seeds
        # and routed worse on test on each. Scores on guesses decide hyperparameters and calibration,
        # never a single candidate over the average. (Scoring the logged outcomes alone by inverse
        # propensity instead was measured far worse: about 45 effective prompts per rarely logged model,
        # and calibration chased them.)
        on_guesses = imputed is not None and bool(imputed[scored].any())
        # and where completed logged records train the candidates, even the records with every outcome
        # score them with a leak: the first stage that completed the log was fitted on all of them (the
        # scored ones included), so a candidate trained on its guesses predicts the scored outcomes too
        # well, the more so the more it resembles the first stage (off-policy protocol, MMLU-Pro seed 0,
        # cross-validated: the logistic regression scored 0.719 on 461 such records against 0.710 for the
        # ensemble, was kept, and routed the test prompts at 0.684 - README, "Training on logged traffic").
        # So the same rule as on guesses: the scores tune each candidate, nothing is Platt-scaled, no group
        # blend is kept and no single candidate replaces the average on them - where the guesses are a real
        # share of the targets (a completed log: about 90% of the cells), not where a benchmark misses a
        # few outcomes (MMLU-Pro-29: 0.5% of the cells imputed, whose selection this rule cost 0.004 AIQ on
        # seed 3). What they decide: whether the group estimate adds to the MLP
        # (auto_choice.completed_log_choice) - then the group-informed candidate, else the ensemble - and
        # whether the lexical blend is kept over that (module doc).
        tune_only = imputed is not None and float(imputed.mean()) >= TUNE_ONLY_IMPUTED_SHARE
        Q = self.pool.quality[scored]
        unseen = np.flatnonzero(~np.isfinite(Q).any(axis=0))
        if unseen.size:
            raise RouterMLError(
                f"router.kind = auto: the {len(scored)} held-out records observe no outcome of model index "
                f"{unseen.tolist()} (the data's model order, as `router-ml data inspect` lists it) and hold fewer "
                f"than {MIN_VALIDATION} records with every outcome, so the candidates cannot be compared on them; "
                "train on logged records with loss.logged_targets = \"impute\" (the default), add records "
                "evaluated on every model, or pick a router kind")
        grid = knob_grid(np.nanmean(self.train.cost, axis=0), self.config.eval.knob_points)
        # logged outcomes left to score them (no records with every outcome, nothing imputed): by their logged
        # propensities where the data has them, not by exposure weights (biased when the logging router looked
        # at the prompt)
        logged_propensity = None if on_guesses or self.pool.propensity is None else self.pool.propensity[scored]
        held = HeldOut(quality=Q, cost=self.pool.cost[scored], cost_est=self.pool.cost_est[scored], wtps=grid,
                       models=tuple(str(j) for j in range(Q.shape[1])), n_boot=0, seed=self.seed,
                       refine=self.config.eval.knob_refine, propensity=logged_propensity)
        calibrated, platt, scores = {}, {}, {}
        calibrate = self.r.calibrate and not tune_only
        # each variant's Platt fit and scores on the parts' worker processes (independent, a second each)
        # - not the encoder's: its exported graph has no calibration stage
        tasks = [(preds[v][scored], Q, held, calibrate and v[0] != "encoder", self.config) for v in variants]
        for v, result in zip(variants, ordered_map(_score_task, tasks, self.workers(len(tasks))), strict=True):
            calibrated[v], platt[v], scores[v] = result
        best = {f: max((v for v in variants if v[0] == f), key=lambda v: scores[v]["val_aiq"]) for f in self.families}
        report: dict[str, dict[str, Any]] = {}
        for family, v in best.items():
            report[family] = {**scores[v], "seconds": round(self.seconds.get(family, 0.0), 2)}
            if v[1] is not None:
                report[family][{"logreg": "C", "lexical": "C", "knn": "k", "groups": "field"}[family]] = v[1]
                report[family]["grid"] = {str(u[1]): round(scores[u]["val_aiq"], 5) for u in variants if u[0] == family}
        # one graph: heads over the same features (the lexical regression is blended in after the choice)
        averaged = [f for f in best if f in self.r.ensemble_members]
        if "ensemble" in self.r.candidates and len(averaged) >= 2:
            mean = np.mean([calibrated[best[f]] for f in averaged], axis=0)
            report["ensemble"] = {"val_aiq": held_out_aiq(mean, held), "ece": expected_calibration_error(mean, Q),
                                  "members": averaged}
        order = [c for c in AUTO_CANDIDATES if c in report]
        leader = max(order, key=lambda c: report[c]["val_aiq"])
        if leader != "ensemble" and "ensemble" in report and not tune_only:  # kept over the average only beyond noise
            report[leader]["beats_ensemble"] = paired_wins(calibrated[best[leader]], mean, held, self.seed)
        fallback = completed_log_choice(report) if tune_only else None
        if tune_only and fallback is None:  # neither groups nor the ensemble fitted: the lexical one blends only
            fallback = keep_candidate({c: s for c, s in report.items() if c != "lexical"} or report,
                                      self.r.ensemble_confidence)
        chosen = fallback or keep_candidate(report, self.r.ensemble_confidence)
        if self.r.auto_pick in report:
            chosen = self.r.auto_pick
        criterion = ("held-out best quality (every model costs the same: no AIQ)" if without_cost_range(held)
                     else "held-out AIQ")
        log.info("auto: chose %s (%s %s)", chosen, criterion,
                 ", ".join(f"{c} {report[c]['val_aiq']:.4f}" for c in order))
        chosen_pred = mean if chosen == "ensemble" else calibrated[best[chosen]]
        members = averaged if chosen == "ensemble" else [chosen]
        blend = None
        if self.group_fields and self.r.group_blend and not tune_only and chosen != "lexical":
            blend, with_groups = self._blend(chosen, chosen_pred, scored, held)
            chosen_pred = chosen_pred if with_groups is None else with_groups
        words = None
        if "lexical" in best and chosen not in ("lexical", "encoder") and self.r.lexical_blend > 0:
            words, with_words = self._lexical_blend(chosen_pred, calibrated[best["lexical"]], held)
            chosen_pred = chosen_pred if with_words is None else with_words
        self.heldout = self._held_out_predictions(scored, chosen_pred)
        kept_words = words is not None and words["kept"]
        final = self._start_pool_finals({f: best[f][1] for f in [*members, *(["lexical"] if kept_words else [])]
                                         if f in _POOL_FINALS})
        heads, specs = {}, {}
        for family in members:
            head, spec = final(family, best[family][1])
            if scores[best[family]]["calibrated"]:
                head, spec = _calibrated(head, spec, *platt[best[family]])
            heads[family], specs[family] = head, spec
        module, spec = (MeanHead(list(heads.values())), {"type": "mean", "members": list(specs.values())}) if (
            chosen == "ensemble") else (heads[chosen], specs[chosen])
        if chosen == "lexical":  # it reads token ids: the graph passes them through the mix, without a base
            module, spec = LexicalMix(None, module, 1.0), {"type": "lexical_mix", "base": None, "lexical": spec,
                                                           "weight": 1.0}
        if blend is not None and blend["field"] is not None:
            module, spec = self._group_blend(module, spec, blend["field"], blend["weight"])
        if kept_words:
            head, lexical_spec = final("lexical", best["lexical"][1])
            if scores[best["lexical"]]["calibrated"]:
                head, lexical_spec = _calibrated(head, lexical_spec, *platt[best["lexical"]])
            module = LexicalMix(module, head, words["weight"])
            spec = {"type": "lexical_mix", "base": spec, "lexical": lexical_spec, "weight": module.weight}
        picked_by = ("router.auto_pick" if self.r.auto_pick in report else
                     "the completed-log default" if fallback else criterion)
        scored_on = ("outcomes and imputed cells (logged records)" if on_guesses else "outcomes" if not held.logged
                     else "logged outcomes, weighted by their propensities" if held.has_propensities
                     else "logged outcomes, by exposure weights")
        selection = {"chosen": chosen, "picked_by": picked_by,
                     "mode": f"{len(parts)}-fold cross-validation" if self.cv else "validation split",
                     "scored_records": int(len(scored)),
                     "scored_on": scored_on,
                     "completed_log": tune_only,
                     "calibrated": calibrate,
                     "seconds": round(time.perf_counter() - started, 2), "candidates": report,
                     **({"group_blend": blend} if blend is not None else {}),
                     **({"lexical_blend": words} if words is not None else {}),
                     **({"skipped": self.skipped} if self.skipped else {})}
        return module.eval(), spec, selection

    def _held_out_predictions(self, scored: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The winner's held-out predictions (out of fold, or on the validation split) on the scored records
        whose every outcome was observed, as ``(table rows, predictions)``: what the pipeline adds to the
        test split to choose the default knob on (``training.pipeline.knob_curve``). None when the
        pool does not know its table rows."""
        rows = self.pool.rows
        if rows is None:
            return None
        observed = np.isfinite(self.pool.quality[scored])
        if self.pool.imputed is not None:
            observed &= ~self.pool.imputed[scored]
        full = observed.all(axis=1)
        return np.asarray(rows)[scored[full]], np.asarray(pred)[full]

    def _start_pool_finals(self, params: dict[str, Any]) -> Callable[[str, Any], tuple[torch.nn.Module, dict]]:
        """The final fits of ``params``' families (each one's chosen parameter) that read the pool alone
        (:data:`_POOL_FINALS`), started on the parts' worker processes, where they ran on some, to fit while
        this process fits the torch finals (MMLU-Pro-29: the lexical regression, 3-4 s, beside the MLP's).
        Returns ``final(family, param)``: :meth:`_final`, a pool final's result read back (waited for)."""
        families = list(params)
        results = in_background(_final_task, [(self, f, params[f]) for f in families], self.workers(len(families) + 1))
        done: dict[str, tuple[torch.nn.Module, dict[str, Any]]] = {}

        def final(family: str, param: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
            if family not in params:
                return self._final(family, param)
            while family not in done:
                done[families[len(done)]] = next(results)
            return done[family]

        return final

    def _final(self, family: str, param: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The chosen candidate fitted for keeps (module doc) and its spec."""
        if family == "logreg":
            return fit_logreg(self.X, self.pool.quality, param, weights=self._weights(None)), {"type": "logreg"}
        if family == "lexical":
            head = fit_lexical(self.counts, self.pool.quality, param, fit_rows=np.arange(self.n),
                               weights=self._weights(None))
            return head, {"type": "lexical", "vocab": int(self.counts.shape[1])}
        if family == "knn":
            keep = np.arange(self.n)
            cap = self.r.knn_records
            if cap and self.n > cap:
                keep = np.sort(np.random.default_rng(self.seed).choice(self.n, cap, replace=False))
            head = KNNHead(self.X[keep], self.pool.quality[keep], param, self._weights(keep), dims=self.r.knn_dims)
            return head, {"type": "knn", "records": int(len(keep)), "k": head.k, "dims": head.dims}
        if family == "encoder":  # after cross-validation: train, early-stopped on validation, as a plain run
            self.winner = self.fitted.get(family) or self._fit_encoder(*self._split_tokens())
            return self.winner.module_, {"type": "encoder"}
        if family == "groups":  # the MLP's head (a copy: the ensemble may hold the MLP too) blended in
            router = self._final_router("mlp" if "mlp" in self.families else "groups")
            return self._group_blend(copy.deepcopy(router.module_), torch_spec(router), param, self.r.group_weight)
        router = self._final_router(family)
        return router.module_, torch_spec(router)

    def _final_router(self, family: str) -> TorchRouter:
        """The torch candidate ``family`` fitted for keeps: the one fitted on the train split (validation
        mode), else trained on train, early-stopped on validation, as a plain run (after cross-validation)."""
        router = self.fitted.get(family) or self._final_torch.get(family)
        if router is None:
            router = self._final_torch[family] = self._timed(family, lambda: self._fit_torch(
                family, self.train, self.val, on_epoch=self.on_epoch if family == "mlp" else None))
        return router

    def _group_blend(self, module: torch.nn.Module, spec: dict[str, Any], field: str,
                     weight: float) -> tuple[torch.nn.Module, dict[str, Any]]:
        """``module`` blended with the group estimate of ``field`` fitted on the whole pool, and its spec."""
        fitted = self._pool_groups.get(field)
        if fitted is None:  # once per field: the groups head and a kept blend over it may both need it
            fitted = self._pool_groups[field] = GroupFit.fit(self.X, self.pool.quality, self.group_fields[field])
        return fitted.blend(module, weight), {"type": "groups", "base": spec, "groups": len(fitted.names),
                                              "weight": weight, "names": fitted.names, "field": field}

    def _blend(self, chosen: str, pred: np.ndarray, scored: np.ndarray,
               held: HeldOut) -> tuple[dict[str, Any] | None, np.ndarray | None]:
        """The group blend stage: ``(1 - w) * pred + w * p(g | x) @ Q`` for each group field and weight of
        ``router.group_blend``, scored on the held-out records like the candidates; the best is kept when
        it routes better than ``pred`` alone on at least ``router.ensemble_confidence`` of the paired
        bootstrap resamples (``beats_unblended``; ``field`` None otherwise) - the bar a single candidate
        clears to replace the ensemble. Returns the report and the kept blend's held-out predictions (None
        when none is kept); no report for an encoder winner (its graph reads token ids, not the features
        the group classifier needs)."""
        if chosen == "encoder":
            return None, None
        base = held_out_aiq(pred, held)
        grid: dict[str, float] = {}
        best: tuple[float, str | None, float | None] = (base, None, None)
        for field in self.group_fields:
            mixture = self.mixtures[field][scored]
            for w in sorted(grid_values(self.r.group_blend, float)):
                aiq = held_out_aiq(blended(pred, mixture, w), held)
                grid[f"{field} x {w:g}"] = aiq
                if aiq > best[0]:
                    best = (aiq, field, w)
        wins, mixed = None, None
        if best[1] is not None:  # kept only beyond noise, as a single candidate over the ensemble
            mixed = blended(pred, self.mixtures[best[1]][scored], best[2])
            wins = paired_wins(mixed, pred, held, self.seed)
        keep = wins is not None and wins >= self.r.ensemble_confidence
        if best[1] is None:
            top = max(grid, key=grid.get) if grid else None
            log.info("auto: group blend: none routes better held out (%s): not kept", "nothing tried" if top is None
                     else f"the best, {top}, {grid[top]:.4f} against {base:.4f} without")
        else:
            log.info("auto: group blend %s x %g: held-out AIQ %.4f, without %.4f, better on %.0f%% of paired "
                     "resamples: %s", best[1], best[2], best[0], base, 100 * wins, "kept" if keep else "not kept")
        report = {"field": best[1] if keep else None, "weight": best[2] if keep else None,
                  "val_aiq": best[0] if keep else base, "val_aiq_without": base,
                  "best": f"{best[1]} x {best[2]:g}" if best[1] else None, "beats_unblended": wins, "grid": grid,
                  "fields": {f: known_groups(v) for f, v in self.group_fields.items()}}
        return report, mixed if keep else None

    def _lexical_blend(self, pred: np.ndarray, words: np.ndarray,
                       held: HeldOut) -> tuple[dict[str, Any], np.ndarray | None]:
        """The lexical blend stage: ``(1 - w) * pred + w * lexical`` at ``w = router.lexical_blend``, kept where
        it routes at least as well as ``pred`` alone on the held-out records. Returns the report and the
        kept blend's held-out predictions (None when it is not kept)."""
        weight = float(self.r.lexical_blend)
        mixed = (1.0 - weight) * pred + weight * words
        with_words, without = held_out_aiq(mixed, held), held_out_aiq(pred, held)
        kept = with_words >= without
        log.info("auto: lexical blend x %g: held-out AIQ %.4f, without %.4f: %s", weight, with_words, without,
                 "kept" if kept else "not kept")
        return ({"weight": weight, "kept": kept, "val_aiq": with_words, "val_aiq_without": without},
                mixed if kept else None)


def _calibrated(head, spec, scale: np.ndarray, shift: np.ndarray):
    wrapped = Calibrated(head, len(scale))
    with torch.no_grad():
        wrapped.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        wrapped.shift.copy_(torch.as_tensor(shift, dtype=torch.float32))
    return wrapped, {"type": "calibrated", "base": spec}
