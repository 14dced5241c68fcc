"""Cascades: call a cheap model, score its answer, escalate when the score is low.

:mod:`training.cascade.scorer` trains the answer scorers (``router-ml train`` with a ``[scorer]``
config; :mod:`~training.cascade.scorer_run`), :mod:`~training.cascade.scorer_export` exports them for
:class:`router_ml.AnswerScorer`. The cascade policies themselves (chain, route-then-cascade, one knob
table for every budget), their acceptance combiner and answer agreement live in the runtime
(:mod:`router_ml.cascade`), which serves them; :mod:`~training.cascade.evaluate` fits them on
validation and scores them on test, and
:mod:`~training.cascade.command` is ``router-ml cascade evaluate``. Importing this package imports
nothing heavy.
"""
