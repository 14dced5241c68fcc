"""One MLP in place of the auto router's chosen head (``router.distill = true``).

The default router often keeps the average of several heads - the MLP, MF, the logistic regression, kNN
over the stored training prompts, a group estimate - with the lexical regression blended in: about 120
onnxruntime nodes where one MLP head is 11, and inside the proxy its decision costs several times as much
CPU (README, "Load test references"). Distilling fits one MLP head of the MLP candidate's shape
(``router.hidden``, ``router.layers``; no dropout) to the chosen head's own predicted quality on the
training prompts (its targets are those predictions, soft, under the quality loss alone: :data:`STUDENT`),
early-stopped on the validation prompts' predictions (a seeded tenth of the training prompts without a validation
split), and puts it in the auto router's place: the checkpoint, the exported graph and every test figure
are then the student's, and the run reports the head it replaced beside it (``test.distilled_from``,
paired on the same test prompts). The default knob is still chosen on the replaced head's out-of-fold
predictions beside the student's test predictions (``training.pipeline.knob_curve``): the student imitates
that head. A fine-tuned encoder winner is not distilled (it reads token ids; a warning says so).

What it costs (the README's three protocols, seeds 0-4, test AIQ minus the head it replaced, paired on the
same prompts; docs/auto-router-studies.md, "One MLP in the chosen head's place"): demo +0.0001, RouteLLM
-0.0007, MMLU-Pro-29 -0.0028. So it is off by default: a serving choice, made where the decision's CPU
matters more than that.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from training.trainer import Batchable

__all__ = ["distill_head", "with_targets"]

log = logging.getLogger("router_ml.train")

#: how the student fits, over the run's config: no dropout and no cost term (it imitates a fixed function;
#: the quality loss alone), more epochs at a higher rate and more patience than a router fitted to outcomes
#: (the head's predictions are smooth targets with no noise to stop early against)
STUDENT = {"router.dropout": 0.0, "loss.tradeoff_weight": 0.0, "train.epochs": 300, "train.patience": 20,
           "train.lr": 2e-3}


def with_targets(part: Batchable, targets: np.ndarray) -> Batchable:
    """``part`` with ``targets`` (a head's predicted quality, in [0, 1]) as every cell's quality target: no
    missing cell, no per-cell weight, no preference pair or logged propensity - a student fits the head."""
    return dataclasses.replace(part, quality=np.asarray(targets, dtype=np.float32), prefs=None, weights=None,
                               imputed=None, propensity=None)


def distill_head(router, train: Batchable, val: Batchable | None, *, wtp_range: tuple[float, float],
                 on_epoch=None) -> dict[str, Any]:
    """Fit an MLP head to ``train``'s targets (:func:`with_targets`), early-stopped on ``val``'s (or a seeded
    tenth of ``train``), and put it in ``router``'s place (a fitted :class:`~training.routers.auto.AutoRouter`:
    its ``module_`` and ``spec_``). Returns the report: what it replaced, the student's shape, its mean
    absolute difference to the targets on the early-stopping prompts, the fit's seconds."""
    from training.routers.auto import _one_thread, _torch_spec, early_stopping_split, member_config
    from training.routers.neural import MLPRouter

    started = time.perf_counter()
    if val is None or len(val) == 0:
        rest, tenth = early_stopping_split(np.arange(len(train)), router.config.data.seed)
        train, val = train.take(rest), train.take(tenth)
    config = member_config(router.config, "mlp", **{"router.ensemble": 1, **STUDENT})
    with _one_thread(router.config):
        student = MLPRouter(config=config, n_models=router.n_models, input_dim=router.input_dim).fit(
            train, val, wtp_range=wtp_range, on_epoch=on_epoch)
        stop = student.predict(val.input_rows(np.arange(len(val))))
    spec = _torch_spec(student)
    report = {"replaced": router.selection_["chosen"], "replaced_spec": router.spec_.get("type"), "student": spec,
              "fit_records": int(len(train)), "stop_records": int(len(val)),
              "mean_abs_difference_stop": round(float(np.abs(stop - val.quality).mean()), 5),
              "seconds": round(time.perf_counter() - started, 2)}
    router.module_, router.spec_ = student.module_, spec
    router.selection_ = {**router.selection_, "distilled": report}
    log.info("distilled %s into one MLP (mean |difference| %.4f on %d prompts, %.1f s)", report["replaced"],
             report["mean_abs_difference_stop"], len(val), report["seconds"])
    return report
