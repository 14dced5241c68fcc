"""The static answer scorer: static embeddings of prompt and response + answer features -> a logistic
regression per model.

Features of a (prompt, response) pair: the static featurizer's mean token embedding of the prompt
(head + tail of ``featurizer.max_tokens`` tokens), the same of the response keeping its END
(``scorer.response_head`` tokens from the start, the rest from the end: a chain of thought states its
answer last), and the answer features of :mod:`router_ml._answer_inputs`. One L2-regularised
logistic regression per model (scikit-learn, deterministic), its inverse strength picked per model
from ``scorer.c_grid`` by validation AUC. On the MMLU-Pro responses (seed 0, validation) strong
regularisation wins: C = 0.0003-0.001 beat 0.003 by 0.005-0.015 AUC and 0.1 by 0.01-0.03 (543 standardised
features, ~7,500 answers per model); a one-hidden-layer MLP head lost 0.01-0.02 to the logistic one,
and a cross-model difficulty prior (ridge from the prompt to every model's quality) added nothing.

The learned state is four arrays (``mean_``, ``scale_``, ``coef_``, ``intercept_``): the export
folds the standardisation into one ``(models, features)`` matrix after the pooling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from router_ml._answer_inputs import ANSWER_FEATURES, ANSWER_FEATURES_VERSION, answer_feature_matrix
from router_ml.errors import RouterMLError
from router_ml.formats import VERSION_FIELD
from training.cascade.scorer import (
    SCORER_JSON_VERSION,
    WEIGHTS_FILE,
    SavedScorer,
    ScorerData,
    cell_texts,
    cells,
)
from training.config import TrainConfig

__all__ = ["StaticScorer"]



class StaticScorer(SavedScorer):
    """Static embeddings + answer features -> one logistic regression per model (module docstring)."""

    kind = "static"

    def __init__(self, *, config: TrainConfig, models: tuple[str, ...] | list[str]):
        self.config = config
        self.models = tuple(models)
        self._featurizers: tuple[Any, Any] | None = None

    # --- features ----------------------------------------------------------------------------

    def featurizers(self) -> tuple[Any, Any]:
        """The (prompt, response) static featurizers: one distilled table, two truncation rules."""
        if self._featurizers is None:
            from training.featurizers import StaticFeaturizer

            tokens = self.config.featurizer.max_tokens
            prompt = StaticFeaturizer(max_tokens=tokens)
            response = StaticFeaturizer(model_dir=prompt.model_dir, max_tokens=tokens,
                                        head=self.config.scorer.response_head)
            self._featurizers = (prompt, response)
        return self._featurizers

    def features(self, prompts: list[str], responses: list[str], *, prompt_features: np.ndarray | None = None
                 ) -> np.ndarray:
        """``(n, 2 * dim [+ answer features])`` float32 inputs of the heads; ``prompt_features`` may
        give the prompts' embeddings computed once for many responses."""
        prompt_f, response_f = self.featurizers()
        parts = [prompt_f.transform(prompts) if prompt_features is None else prompt_features,
                 response_f.transform(responses)]
        if self.config.scorer.answer_features:
            parts.append(answer_feature_matrix(prompts, responses))
        return np.hstack(parts).astype(np.float32)

    def _cell_features(self, data: ScorerData, row: np.ndarray, model: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(row, return_inverse=True)
        pooled = self.featurizers()[0].transform([data.prompts[i] for i in unique])
        prompts, responses = cell_texts(data, row, model)
        return self.features(prompts, responses, prompt_features=pooled[inverse])

    # --- fitting -----------------------------------------------------------------------------

    def fit(self, data: ScorerData, train_rows: np.ndarray, val_rows: np.ndarray) -> StaticScorer:
        """Fit one head per model on the training triples of ``train_rows``; pick each head's C by the
        AUC on ``val_rows``' triples (the first grid value where validation has one class only)."""
        from sklearn.linear_model import LogisticRegression

        s = self.config.scorer
        seed = self.config.data.seed
        row, model = cells(data, train_rows, cap=s.train_triples, seed=seed)
        if not len(row):
            raise RouterMLError("no training triple: the training records carry no (quality, response) pair")
        v_row, v_model = cells(data, val_rows)
        X, V = self._cell_features(data, row, model), self._cell_features(data, v_row, v_model)
        y, vy = data.quality[row, model] >= 0.5, data.quality[v_row, v_model] >= 0.5
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0) + 1e-6
        Z, VZ = (X - self.mean_) / self.scale_, (V - self.mean_) / self.scale_
        dim = X.shape[1]
        self.coef_ = np.zeros((len(self.models), dim), dtype=np.float64)
        self.intercept_ = np.zeros(len(self.models), dtype=np.float64)
        self.selection_: dict[str, Any] = {}
        for j, name in enumerate(self.models):
            mine, vmine = model == j, v_model == j
            labels = y[mine]
            if labels.size == 0 or labels.all() or not labels.any():  # nothing to separate: the base rate
                rate = float(np.clip(labels.mean() if labels.size else 0.5, 1e-3, 1 - 1e-3))
                self.intercept_[j] = np.log(rate / (1 - rate))
                self.selection_[name] = {"c": None, "val_auc": None, "triples": int(labels.size), "constant": True}
                continue
            best = None
            for text in s.c_grid:
                clf = LogisticRegression(C=float(text), max_iter=3000).fit(Z[mine], labels)
                report = _val_auc(vy[vmine], clf.decision_function(VZ[vmine])) if vmine.any() else None
                if best is None or (report is not None and (best[1] is None or report > best[1])):
                    best = (float(text), report, clf)
            c, auc, clf = best
            self.coef_[j], self.intercept_[j] = clf.coef_[0], clf.intercept_[0]
            self.selection_[name] = {"c": c, "val_auc": auc, "triples": int(labels.size)}
        self.dim_ = dim
        return self

    # --- scoring -----------------------------------------------------------------------------

    def logits(self, X: np.ndarray) -> np.ndarray:
        """``(n, models)`` logits of feature rows ``X``."""
        return ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_

    def predict(self, prompts: list[str], model_index: np.ndarray, responses: list[str]) -> np.ndarray:
        """P(quality) of each response, in its answering model's column ``model_index``."""
        if not len(prompts):
            return np.zeros(0)
        z = self.logits(self.features(list(prompts), list(responses)))
        picked = z[np.arange(len(z)), np.asarray(model_index, dtype=np.int64)]
        return 1.0 / (1.0 + np.exp(-picked))

    def predict_cells(self, data: ScorerData, row: np.ndarray, model: np.ndarray) -> np.ndarray:
        z = self.logits(self._cell_features(data, row, model))
        return 1.0 / (1.0 + np.exp(-z[np.arange(len(z)), model]))

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, b)`` float32 with ``logits = X @ W.T + b`` (standardisation folded in), for the graph."""
        weight = self.coef_ / self.scale_
        bias = self.intercept_ - weight @ self.mean_
        return weight.astype(np.float32), bias.astype(np.float32)

    # --- saving ------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        prompt_f, _ = self.featurizers()
        return {VERSION_FIELD: SCORER_JSON_VERSION, "kind": self.kind, "models": list(self.models),
                "config": self.config.to_flat(), "dim": int(self.dim_), "selection": self.selection_,
                "featurizer_files": prompt_f.identity()["files"],
                "answer_features": {"version": ANSWER_FEATURES_VERSION, "names": list(ANSWER_FEATURES)}
                if self.config.scorer.answer_features else None}

    def save(self, directory: str | Path) -> None:
        """The four arrays as safetensors and ``scorer.json`` (no pickle)."""
        from safetensors.numpy import save_file

        arrays = {"mean": self.mean_, "scale": self.scale_, "coef": self.coef_, "intercept": self.intercept_}
        self.write(directory, lambda path: save_file(arrays, str(path)))

    @classmethod
    def load(cls, directory: str | Path, info: dict[str, Any] | None = None) -> StaticScorer:
        from safetensors.numpy import load_file

        directory = Path(directory)
        scorer, info = cls.unfitted(directory, info)
        saved = info.get("featurizer_files")
        if saved and saved != scorer.featurizers()[0].identity()["files"]:
            raise RouterMLError(f"{directory}: trained on other static embeddings than this machine distils; retrain")
        arrays = load_file(str(directory / WEIGHTS_FILE))
        scorer.mean_, scorer.scale_ = arrays["mean"], arrays["scale"]
        scorer.coef_, scorer.intercept_ = arrays["coef"], arrays["intercept"]
        scorer.dim_, scorer.selection_ = int(info["dim"]), info.get("selection") or {}
        return scorer


def _val_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None

