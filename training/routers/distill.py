"""One MLP in place of the auto router's chosen head (``router.distill = true``).

The default router often keeps the average of several heads - the MLP, MF, the logistic regression, kNN
over the stored training prompts, a group estimate - with the lexical regression blended in: about 90
onnxruntime nodes where one MLP head is 11, and inside the proxy its decision costs several times as much
CPU (README, "Load test references"). Distilling fits one MLP head of the MLP candidate's shape
(``router.hidden``, ``router.layers``; no dropout) to the chosen head's own predicted quality (its targets
are those predictions, soft, under the quality loss alone: :data:`STUDENT`), early-stopped on the validation
prompts' predictions (a seeded tenth of the training prompts without a validation split), and puts it in
the auto router's place: the checkpoint, the exported graph and every test figure are then the student's,
and the run reports the head it replaced beside it (``test.distilled_from``, paired on the same test
prompts). The default knob is still chosen on the replaced head's out-of-fold predictions beside the
student's test predictions (``training.pipeline.knob_curve``): the student imitates that head. A fine-tuned
encoder winner is not distilled (it reads token ids; a warning says so).

Two things keep the student close to the head:

- with ``router.distill_lexical`` (on by default) a kept lexical blend stays as chosen over the student
  (:func:`under_lexical_blend`): the MLP imitates the head under it, which reads the same pooled features,
  instead of a function of the prompt's words that those features hold only in part (about 40 onnxruntime
  nodes then instead of 11);
- a teacher that reads the features alone (every head but one that reads token ids) is also imitated on
  :func:`mixed_prompts` - points between training prompts, :data:`MIXED` per prompt - so that the student
  follows it between the prompts it was fitted on.

The student starts from the head's own MLP of its shape where it has one (:class:`_Student`) and stops after
five epochs without progress (:data:`STUDENT`). What it costs (the README's three protocols, seeds 0-4, test AIQ
minus the head it replaced, paired on the same prompts; docs/auto-router-studies.md, "One MLP in the chosen
head's place"): demo -0.0001, RouteLLM -0.0003, MMLU-Pro-29 -0.0008, and 2-70 s of ``train`` (40 s of MMLU-Pro-29's
3 minutes). So it is off by default: a serving choice, made where the decision's CPU matters more than that.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from training.routers.neural import MLPHead, MLPRouter
from training.trainer import Batchable

__all__ = ["MIXED", "STUDENT", "distill_head", "mixed_prompts", "under_lexical_blend", "with_targets"]

log = logging.getLogger("router_ml.train")

#: how the student fits, over the run's config: no dropout and no cost term (it imitates a fixed function;
#: the quality loss alone), up to more epochs at a higher rate than a router fitted to outcomes, stopped after 5
#: without progress on the early-stopping prompts (20 fitted 2-6x longer for 0.002-0.007 more of the head's
#: routes matched: docs/auto-router-studies.md)
STUDENT = {"router.dropout": 0.0, "loss.tradeoff_weight": 0.0, "train.epochs": 300, "train.patience": 5,
           "train.lr": 2e-3}
#: mixed prompts per training prompt the student also fits (:func:`mixed_prompts`), and the most it mixes:
#: past MIXED_CAP / MIXED = 50,000 training prompts it fits those alone
MIXED = 4
MIXED_CAP = 200_000


def with_targets(part: Batchable, targets: np.ndarray) -> Batchable:
    """``part`` with ``targets`` (a head's predicted quality, in [0, 1]) as every cell's quality target: no
    missing cell, no per-cell weight, no preference pair or logged propensity - a student fits the head."""
    return dataclasses.replace(part, quality=np.asarray(targets, dtype=np.float32), prefs=None, weights=None,
                               imputed=None, propensity=None)


def under_lexical_blend(router) -> tuple[Any, dict[str, Any]] | None:
    """Where ``router``'s head is a kept lexical blend over a base (``LexicalMix`` with one), make the base its
    head - the teacher a student imitates - and return ``(the blend, its spec)`` for :func:`distill_head` to put
    back around the student; else None, the head left as it is."""
    from training.routers.lexical import LexicalMix

    module = router.module_
    if not isinstance(module, LexicalMix) or module.base is None:
        return None
    blend = (module, router.spec_)
    router.module_, router.spec_ = module.base, router.spec_["base"]
    return blend


def distill_head(router, train: Batchable, val: Batchable | None, *, wtp_range: tuple[float, float],
                 on_epoch=None, lexical: tuple[Any, dict[str, Any]] | None = None,
                 teacher: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Fit an MLP head to ``train``'s targets (:func:`with_targets`), early-stopped on ``val``'s (or a seeded
    tenth of ``train``), and put it in ``router``'s place (a fitted :class:`~training.routers.auto.AutoRouter`:
    its ``module_`` and ``spec_``). Returns the report: what it replaced, the student's shape, its mean
    absolute difference to the targets on the early-stopping prompts, the fit's seconds. ``lexical`` (from
    :func:`under_lexical_blend`: ``train``'s targets are then the base's predictions) puts the student back
    under that lexical blend, its words' regression and weight unchanged. ``teacher`` (features -> the head's
    predicted quality; None for a head that reads token ids) adds :func:`mixed_prompts` to ``train``."""
    from training.routers.auto import torch_spec
    from training.routers.auto_parts import early_stopping_split, member_config, one_thread

    started = time.perf_counter()
    if val is None or len(val) == 0:
        rest, tenth = early_stopping_split(np.arange(len(train)), router.config.data.seed)
        train, val = train.take(rest), train.take(tenth)
    mixed = 0
    if teacher is not None:
        train, mixed = mixed_prompts(train, teacher, router.config.data.seed)
    config = member_config(router.config, "mlp", **{"router.ensemble": 1, **STUDENT})
    with one_thread(router.config):
        student = _Student(config=config, n_models=router.n_models, input_dim=router.input_dim,
                           start=router.module_).fit(train, val, wtp_range=wtp_range, on_epoch=on_epoch)
        stop = student.predict(val.input_rows(np.arange(len(val))))
    spec = torch_spec(student)
    module = student.module_
    if lexical is not None:
        from training.routers.lexical import LexicalMix

        blend, blend_spec = lexical
        module, spec = LexicalMix(module, blend.lexical, blend.weight), {**blend_spec, "base": spec}
    report = {"replaced": router.selection_["chosen"],
              "replaced_spec": (lexical[1] if lexical is not None else router.spec_).get("type"), "student": spec,
              "kept_lexical_blend": None if lexical is None else lexical[0].weight,
              "fit_records": int(len(train)) - mixed, "mixed_prompts": mixed, "stop_records": int(len(val)),
              "mean_abs_difference_stop": round(float(np.abs(stop - val.quality).mean()), 5),
              "seconds": round(time.perf_counter() - started, 2)}
    router.module_, router.spec_ = module, spec
    router.selection_ = {**router.selection_, "distilled": report}
    log.info("distilled %s into one MLP%s (%d prompts and %d mixed; mean |difference| %.4f on %d prompts, %.1f s)",
             report["replaced"], "" if lexical is None else " under the lexical blend", report["fit_records"], mixed,
             report["mean_abs_difference_stop"], len(val), report["seconds"])
    return report


class _Student(MLPRouter):
    """The MLP a head is distilled into, started from the head's own first MLP of its shape where it has one (the
    MLP member of an ensemble, the MLP under a group blend): it starts near the function it imitates and stops in
    fewer epochs (README, "Router variants")."""

    def __init__(self, *, start: torch.nn.Module, **kwargs: Any):
        super().__init__(**kwargs)
        self.start = start

    def build_module(self, *, pretrained: bool = True) -> torch.nn.Module:
        module = super().build_module(pretrained=pretrained)
        shapes = {k: v.shape for k, v in module.state_dict().items()}
        for head in self.start.modules():
            if isinstance(head, MLPHead) and {k: v.shape for k, v in head.state_dict().items()} == shapes:
                module.load_state_dict(head.state_dict())
                break
        return module


def mixed_prompts(train: Batchable, teacher: Callable[[np.ndarray], np.ndarray], seed: int) -> tuple[Batchable, int]:
    """``train`` with :data:`MIXED` times as many prompts the head never saw: each a seeded random point on the
    segment from a training prompt's features toward another's, scaled back to the first one's norm, its
    targets ``teacher``'s predictions there. On the training prompts alone the student matches the head where
    it was fitted and drifts between them; the mixed prompts show it the head's function in between (the idea
    of model compression's synthetic points, Bucila et al., 2006). Only up to :data:`MIXED_CAP` mixed prompts
    (50,000 training prompts): the mix holds the training prompts' features in memory, and a larger set is
    fitted on its own prompts, read window by window like any training set, with ``(train, 0)`` returned."""
    n = len(train) * MIXED
    if not n or n > MIXED_CAP:
        return train, 0
    rng = np.random.default_rng(seed + 7919)
    X = np.asarray(train.input_rows(np.arange(len(train)))[0], dtype=np.float32)
    i, j = rng.integers(len(X), size=(2, n))
    lam = rng.uniform(0.0, 1.0, size=(n, 1)).astype(np.float32)
    mixed = (1 - lam) * X[i] + lam * X[j]
    mixed *= np.linalg.norm(X[i], axis=1, keepdims=True) / np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True),
                                                                        1e-12)
    part = Batchable(inputs=(mixed,), quality=np.asarray(teacher(mixed), dtype=np.float32), cost=train.cost[i],
                     cost_est=train.cost_est[i])
    return train.concat(part), int(n)
