"""Cascades: call a cheap model, score its answer, escalate to a stronger one when the score is low.

- :mod:`~router_ml.cascade.policy`: the policies (chain, route-then-cascade) and the knob table that
  serves every budget, as numpy over ``(prompts, models)`` matrices;
- :mod:`~router_ml.cascade.combiner`: the acceptance score - the answer scorer's P(quality), the
  router's prior and the answers' agreement, combined by a small logistic regression per step;
- :mod:`~router_ml.cascade.agreement`: do two answers state the same final answer;
- :mod:`~router_ml.cascade.runtime`: :class:`Cascade` (a policy with its
  :class:`~router_ml.scorer.AnswerScorer`) stepped through one prompt at a time by the routed client
  and ``router-ml serve --cascade``.

``router-ml cascade evaluate`` (:mod:`training.cascade`) fits the policies; everything here is numpy,
onnxruntime and tokenizers, like the rest of the runtime.
"""

from router_ml.cascade.policy import CascadePolicy, Point, Step
from router_ml.cascade.runtime import Cascade, CascadeRun

__all__ = ["Cascade", "CascadePolicy", "CascadeRun", "Point", "Step"]
