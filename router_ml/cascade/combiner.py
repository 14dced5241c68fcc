"""The acceptance score of a cascade step: P(this answer is good) from every signal the cascade holds.

After calling the models of ``prefix`` (model indices, in call order) a cascade knows, for the last
model ``j`` of the prefix: the answer scorer's P(quality) of ``j``'s response, the router's predicted
quality of ``j`` for the prompt (its prior, known before any call) and - from the second call on -
how far ``j``'s answer agrees with each earlier answer (:mod:`router_ml.cascade.agreement`). A small
logistic regression per prefix turns them into one calibrated probability, the acceptance score a
threshold compares against. Inputs enter as logits (score, prior) and as the agreement in [0, 1];
a missing signal (no response: NaN) enters as the uninformative value (logit 0, agreement 0.5).

It is fitted on the validation split only - the router and the scorer were fitted on the training
split, so their outputs there are overconfident. Thresholds are chosen on the same validation rows,
so the fit is *cross-fitted*: :func:`fit_combiner` also returns each validation row's out-of-fold
acceptance score (5 folds), which threshold selection reads, while the stored weights are fitted on
every validation row. Plain numpy (IRLS with a small L2 penalty), no scikit-learn: a combiner is a
handful of weights in the policy JSON and applies at serve time with numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FEATURE_SETS", "Combiner", "Signals", "fit_combiner", "fit_logistic", "step_features"]

#: name -> the signals a combiner reads; ``full`` is the default, the others are ablations
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "full": ("score", "prior", "agreement"),
    "scorer": ("score",),
    "scorer_prior": ("score", "prior"),
    "agreement_prior": ("prior", "agreement"),
}


@dataclass(frozen=True)
class Signals:
    """What a cascade policy reads for ``n`` prompts and ``m`` models (model order of the router).

    ``prior`` (n, m): the router's predicted quality before any call; ``score`` (n, m): the answer
    scorer's P(quality) of each model's response (NaN where there is none); ``agreement`` (n, m, m):
    pairwise answer agreement in [0, 1] (NaN where a response is missing; None when not measured);
    ``cost_est`` (n, m): the runtime's expected USD cost of each call, which the router's choices use.
    """

    prior: np.ndarray
    score: np.ndarray
    cost_est: np.ndarray
    agreement: np.ndarray | None = None

    def subset(self, rows: np.ndarray) -> Signals:
        return Signals(self.prior[rows], self.score[rows], self.cost_est[rows],
                       None if self.agreement is None else self.agreement[rows])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.nan_to_num(np.asarray(p, dtype=float), nan=0.5), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def step_features(signals: Signals, prefix: tuple[int, ...], features: tuple[str, ...]) -> np.ndarray:
    """``(n, d)`` inputs of the acceptance score of ``prefix[-1]``'s answer after calling ``prefix``."""
    j = prefix[-1]
    cols = []
    if "score" in features:
        cols.append(_logit(signals.score[:, j]))
    if "prior" in features:
        cols.append(_logit(signals.prior[:, j]))
    if "agreement" in features and signals.agreement is not None:
        cols.extend(np.nan_to_num(signals.agreement[:, j, k], nan=0.5) for k in prefix[:-1])
        if "score" in features:  # an earlier answer the scorer trusted, agreeing or not, says something too
            cols.extend(_logit(signals.score[:, k]) for k in prefix[:-1])
    return np.column_stack(cols) if cols else np.zeros((signals.prior.shape[0], 0))


def fit_logistic(X: np.ndarray, y: np.ndarray, *, l2: float = 1.0, iterations: int = 25) -> np.ndarray:
    """Weights ``(d + 1,)`` (intercept last) of an L2-penalised logistic regression by Newton's method;
    ``y`` in [0, 1] (soft labels allowed). The intercept is not penalised.

    >>> w = fit_logistic(np.array([[-2.0], [-1.0], [1.0], [2.0]]), np.array([0.0, 0.0, 1.0, 1.0]))
    >>> bool(w[0] > 0)
    True
    """
    X1 = np.column_stack([X, np.ones(len(X))])
    w = np.zeros(X1.shape[1])
    penalty = np.full(X1.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-X1 @ w))
        grad = X1.T @ (p - y) + penalty * w
        hess = (X1 * (p * (1 - p))[:, None]).T @ X1 + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def _predict(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(X @ w[:-1] + w[-1])))


@dataclass(frozen=True)
class Combiner:
    """Per-prefix logistic weights over the signals ``features`` names (:data:`FEATURE_SETS`).

    ``weights`` maps a prefix (model indices in call order) to its weights, intercept last. A prefix
    with no weights (never fitted: its model had no labelled validation row) scores its answers with
    the raw scorer output, or 0.5 when there is none.
    """

    features: tuple[str, ...]
    weights: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict)

    def accept_scores(self, signals: Signals, prefix: tuple[int, ...]) -> np.ndarray:
        """``(n,)`` acceptance score of ``prefix[-1]``'s answer after calling the models of ``prefix``."""
        w = self.weights.get(tuple(prefix))
        if w is None:
            return np.nan_to_num(signals.score[:, prefix[-1]], nan=0.5)
        return _predict(step_features(signals, prefix, self.features), w)

    def to_json(self, models: tuple[str, ...]) -> dict:
        return {"features": list(self.features),
                "weights": [{"prefix": [models[j] for j in prefix], "weights": [float(v) for v in w]}
                            for prefix, w in self.weights.items()]}

    @classmethod
    def from_json(cls, data: dict, models: tuple[str, ...]) -> Combiner:
        index = {m: j for j, m in enumerate(models)}
        return cls(tuple(data["features"]), {tuple(index[m] for m in item["prefix"]): np.asarray(item["weights"], float)
                                            for item in data["weights"]})


def fit_combiner(signals: Signals, quality: np.ndarray, prefixes: list[tuple[int, ...]], *,
                 features: tuple[str, ...], folds: int = 5, seed: int = 0,
                 ) -> tuple[Combiner, dict[tuple[int, ...], np.ndarray]]:
    """Fit one logistic combiner per prefix on these (validation) rows; return it and each prefix's
    out-of-fold acceptance scores ``(n,)`` for threshold selection (module doc). Rows where the last
    model of a prefix has no outcome are left out of its fit (their out-of-fold score is predicted
    by the fold's model all the same)."""
    n = quality.shape[0]
    fold = np.random.default_rng(seed).permutation(n) % folds
    weights: dict[tuple[int, ...], np.ndarray] = {}
    oof: dict[tuple[int, ...], np.ndarray] = {}
    for prefix in dict.fromkeys(tuple(p) for p in prefixes):
        X = step_features(signals, prefix, features)
        y = quality[:, prefix[-1]]
        labelled = ~np.isnan(y)
        if labelled.sum() < 2 * folds:
            continue
        weights[prefix] = fit_logistic(X[labelled], y[labelled])
        out = np.empty(n)
        for f in range(folds):
            train = labelled & (fold != f)
            out[fold == f] = _predict(X[fold == f], fit_logistic(X[train], y[train]))
        oof[prefix] = out
    return Combiner(features, weights), oof
