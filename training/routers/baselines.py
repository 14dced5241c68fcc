"""Trainable baselines over prompt embeddings (scikit-learn): k-nearest neighbours and per-model
logistic regression. Both predict per-model quality like the learned routers, so the same policy
and the same knob sweep apply to them."""

from __future__ import annotations

import numpy as np

__all__ = ["KNNRouter", "LogRegRouter"]

#: MiB of query-to-index distances kNN computes at a time
WORKING_MB = 128


class KNNRouter:
    """Predicted quality = mean observed quality of the ``k`` most similar training prompts (cosine)."""

    def __init__(self, *, k: int = 25):
        self.k = k

    def fit(self, X: np.ndarray, quality: np.ndarray) -> KNNRouter:
        from sklearn.neighbors import NearestNeighbors

        self.index_ = NearestNeighbors(n_neighbors=min(self.k, len(X)), metric="cosine").fit(X)
        self.quality_ = quality
        self.prior_ = np.nan_to_num(np.nanmean(quality, axis=0), nan=0.0)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        import sklearn

        with sklearn.config_context(working_memory=WORKING_MB):  # its distance blocks: 1 GiB by default
            _, neighbours = self.index_.kneighbors(X)
        values = self.quality_[neighbours]                      # (n, k, m)
        observed = ~np.isnan(values)
        sums = np.where(observed, values, 0.0).sum(axis=1)
        counts = observed.sum(axis=1)
        # shrink toward the model's overall mean when few neighbours observed it
        return (sums + self.prior_ * 1.0) / (counts + 1.0)


def _stack(a, b):
    """Rows of ``a`` then ``b``: dense arrays or scipy sparse matrices (a TF-IDF's)."""
    if hasattr(a, "tocsr"):
        from scipy import sparse

        return sparse.vstack([a, b]).tocsr()
    return np.concatenate([a, b])


class LogRegRouter:
    """One logistic regression per model on the prompt embedding (a dense array, or a scipy sparse
    matrix such as ``scripts/lexical_study.py``'s TF-IDF); graded quality q in [0, 1] is
    fitted exactly as soft labels (each row twice, as 1 with weight q and as 0 with weight 1-q).

    Each fit runs BLAS on one thread: a threaded matrix-vector product sums in another order, so the
    coefficients depended on the machine's cores (MMLU-Pro-29 seed 0: test AIQ 0.69149 on two threads,
    0.69157 on one), and on these sizes the threads cost more than they gave (the 29 fits: 12 s on two
    threads, 4 s on one)."""

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000):
        self.C = C
        self.max_iter = max_iter

    def fit(self, X: np.ndarray, quality: np.ndarray, weights: np.ndarray | None = None) -> LogRegRouter:
        """``weights`` (optional, per cell of ``quality``) multiply each cell's soft-label weights."""
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        self.models_ = []
        for j in range(quality.shape[1]):
            seen = ~np.isnan(quality[:, j])
            q = quality[seen, j]
            if seen.sum() < 2 or np.all(q == q[0]):
                self.models_.append(float(q.mean()) if seen.any() else 0.0)
                continue
            rows, pos, neg = X[seen], q > 0, q < 1  # a row as 1 where q > 0, as 0 where q < 1
            cell = np.ones(len(q)) if weights is None else np.asarray(weights[seen, j], dtype=np.float64)
            Xj = _stack(rows[pos], rows[neg])
            y = np.concatenate([np.ones(pos.sum()), np.zeros(neg.sum())])
            w = np.concatenate([q[pos] * cell[pos], (1.0 - q[neg]) * cell[neg]])
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter)
            with threadpool_limits(limits=1, user_api="blas"):
                self.models_.append(clf.fit(Xj, y, sample_weight=w))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        cols = [np.full(X.shape[0], m) if isinstance(m, float) else m.predict_proba(X)[:, 1] for m in self.models_]
        return np.stack(cols, axis=1)
