"""Cascades: call a cheap model, score its answer, escalate when the score is low.

:mod:`training.cascade.scorer` trains the answer scorers (``router-ml train`` with a ``[scorer]``
config; :mod:`~training.cascade.scorer_run`), :mod:`~training.cascade.scorer_export` exports them for
:class:`router_ml.AnswerScorer`. :mod:`~training.cascade.policy` holds the cascade policies (chain,
route-then-cascade, one knob table for every budget) with their acceptance combiner
(:mod:`~training.cascade.combiner`) and answer agreement (:mod:`~training.cascade.agreement`);
:mod:`~training.cascade.evaluate` fits them on validation and scores them on test, and
:mod:`~training.cascade.command` is ``router-ml cascade evaluate``. Importing this package imports
nothing heavy.
"""
