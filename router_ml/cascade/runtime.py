"""Serving a cascade: a fitted policy and its answer scorer, stepped through one prompt at a time.

:class:`Cascade` pairs a :class:`~router_ml.cascade.policy.CascadePolicy` (``router-ml cascade
evaluate`` writes ``policy.json``) with the :class:`~router_ml.scorer.AnswerScorer` it was fitted
with; :meth:`Cascade.start` opens a :class:`CascadeRun` for one prompt from the router's predicted
quality and expected cost of each model (a :class:`~router_ml.router.Decision`'s ``scores`` and
``costs``) and the request's willingness to pay, which picks the policy's operating point as it picks
the router's model. The caller then loops::

    run = cascade.start(decision.scores, decision.costs, willingness_to_pay)
    model = run.first
    while model is not None:
        answer = call(model)                      # the provider call: the caller's business
        if run.add_answer(model, answer):         # this answer decides something: score it
            run.set_score(cascade.scorer.score(prompt, model, answer))
        model = run.decide()                      # the next model, or None: return this answer

An answer is scored only when the step's threshold is finite (a threshold of ``-inf`` accepts and
``inf`` escalates whatever the score, and the chain's last answer is always returned), so the scorer
runs exactly as often as the evaluation counted (``scorer_calls``). What the run saw - each answer's
score, acceptance score and threshold - is :meth:`CascadeRun.steps`, which the routed client writes
to the decision log. The client (:mod:`router_ml.client`) does the calling, the fallbacks and the
accounting; this module only decides.

Loading checks that the policy and the scorer belong together (the scorer's ``scorer.onnx`` sha256
when the policy records it; every policy model scored) and :meth:`Cascade.check_router` that a router
gives the prior the policy was fitted on (same models in the same order; the same ``router.onnx``
when the policy records it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.cascade.agreement import agreement
from router_ml.cascade.combiner import Signals
from router_ml.cascade.policy import CascadePolicy, Point, Step
from router_ml.errors import RouterMLError
from router_ml.router import ArtifactError
from router_ml.scorer import SCORER_GRAPH, AnswerScorer

__all__ = ["Cascade", "CascadeRun"]


class Cascade:
    """A cascade policy with the answer scorer it was fitted with (module doc). Shared by every request."""

    def __init__(self, policy: CascadePolicy, scorer: AnswerScorer, *, source: str = "cascade policy"):
        sha = scorer.manifest.get("files", {}).get(SCORER_GRAPH)
        if policy.scorer_sha256 and sha != policy.scorer_sha256:
            raise ArtifactError(f"{source}: fitted with the scorer whose {SCORER_GRAPH} has sha256 "
                                f"{policy.scorer_sha256[:12]}..., but {scorer.directory} has {str(sha)[:12]}...; serve "
                                "the scorer the policy was fitted with, or re-run 'router-ml cascade evaluate' with "
                                "this one")
        unscored = [m for m in policy.models if m not in scorer.models]
        if unscored:
            raise RouterMLError(f"{source}: the answer scorer {scorer.directory} scores {list(scorer.models)}, not "
                                f"the policy's models {unscored}")
        self.policy = policy
        self.scorer = scorer
        self.source = source

    @classmethod
    def load(cls, policy: str | Path, scorer: str | Path, *, intra_op_threads: int | None = 1,
             verify: bool = False) -> Cascade:
        """Load ``policy.json`` and the scorer artifact (``verify`` re-scores its parity sample here)."""
        return cls(CascadePolicy.load(policy), AnswerScorer.load(scorer, intra_op_threads=intra_op_threads,
                                                                 verify=verify), source=str(policy))

    def check_router(self, router: Any, *, where: str = "the router") -> None:
        """Refuse a router whose prior is not the one the policy was fitted on (module doc)."""
        if tuple(router.models) != self.policy.models:
            raise RouterMLError(f"{self.source}: fitted on a router of models {list(self.policy.models)}, but "
                                f"{where} chooses between {list(router.models)}; serve the policy with its own "
                                "router artifact")
        if not self.fits(router):
            raise RouterMLError(f"{self.source}: fitted on the router whose router.onnx has sha256 "
                                f"{self.policy.router_sha256[:12]}..., not {where}'s; serve the policy with that "  # type: ignore[index]
                                "router artifact, or re-run 'router-ml cascade evaluate' with this one")

    def fits(self, router: Any) -> bool:
        """Whether ``router`` is the one the policy was fitted on (always, when the policy names none)."""
        if tuple(router.models) != self.policy.models:
            return False
        return not self.policy.router_sha256 or router.manifest["files"]["router.onnx"] == self.policy.router_sha256

    def start(self, scores: Mapping[str, float], costs: Mapping[str, float],
              willingness_to_pay: float) -> CascadeRun:
        """A run for one prompt from the router's predicted quality and expected USD cost per model."""
        return CascadeRun(self, scores, costs, willingness_to_pay)


class CascadeRun:
    """One prompt's way through the cascade (module doc): :attr:`first`, then :meth:`add_answer`,
    :meth:`set_score` when asked, :meth:`decide`, until :meth:`decide` returns None."""

    def __init__(self, cascade: Cascade, scores: Mapping[str, float], costs: Mapping[str, float],
                 willingness_to_pay: float):
        policy = cascade.policy
        self.policy = policy
        self.point: Point = policy.point(willingness_to_pay)
        m = len(policy.models)
        prior = np.array([[scores[name] for name in policy.models]], dtype=float)
        cost_est = np.array([[costs[name] for name in policy.models]], dtype=float)
        self.signals = Signals(prior=prior, score=np.full((1, m), np.nan), cost_est=cost_est,
                               agreement=np.full((1, m, m), np.nan))
        self._index = {name: j for j, name in enumerate(policy.models)}
        self.called: list[int] = []
        self._responses: list[str | None] = []
        self._steps: list[dict[str, Any]] = []
        self.first: str = policy.models[policy.step(self.point, self.signals, []).next]  # type: ignore[index]

    def _threshold(self) -> float | None:
        """The threshold that will judge the answer just added (None: nothing to judge)."""
        point, k = self.point, len(self.called) - 1
        if point.kind == "chain":
            return point.thresholds[k] if k < len(point.models) - 1 else None
        return point.thresholds[0] if k == 0 else None

    def add_answer(self, model: str, response: str | None) -> bool:
        """Record ``model``'s answer; True when the scorer must score it before :meth:`decide`."""
        j = self._index[model]
        self.called.append(j)
        self._responses.append(response)
        agree = self.signals.agreement
        agree[0, j, j] = 1.0
        for k, earlier in zip(self.called[:-1], self._responses[:-1], strict=True):
            agree[0, j, k] = agree[0, k, j] = agreement(response, earlier)
        self._steps.append({"score": None, "accept": None, "threshold": None, "accepted": None})
        threshold = self._threshold()
        return threshold is not None and math.isfinite(threshold) and response is not None

    def set_score(self, score: float) -> None:
        """The scorer's P(quality) of the answer just added."""
        self.signals.score[0, self.called[-1]] = score
        self._steps[-1]["score"] = float(score)

    def decide(self) -> str | None:
        """The model to escalate to, or None to return the answer just added."""
        step: Step = self.policy.step(self.point, self.signals, self.called)
        record = self._steps[-1]
        if step.threshold is not None and math.isfinite(step.threshold):
            record["accept"], record["threshold"] = step.accept, step.threshold
        record["accepted"] = step.next is None
        return None if step.next is None else self.policy.models[step.next]

    def steps(self) -> list[dict[str, Any]]:
        """Per answer, in call order: ``score`` (the scorer's, None when not scored), ``accept`` (the
        acceptance score the threshold saw), ``threshold`` and whether the policy ``accepted`` it."""
        return [dict(s) for s in self._steps]

    def point_json(self) -> dict[str, Any]:
        return self.point.to_json(self.policy.models)
