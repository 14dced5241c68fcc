"""Cascades: call a cheap model, score its answer, escalate when the score is low.

:mod:`training.cascade.scorer` trains the answer scorers (``router-ml train`` with a ``[scorer]``
config; :mod:`~training.cascade.scorer_run`), :mod:`~training.cascade.scorer_export` exports them for
:class:`router_ml.AnswerScorer`. Importing this package imports nothing heavy.
"""
