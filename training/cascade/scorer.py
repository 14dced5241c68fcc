"""Answer scorers: (prompt, model, response) -> P(the answer is good), for cascades.

A router decides before the call; a cascade calls a cheap model, scores its answer and escalates
only when the score is low. The scorer is what reads the answer. Two kinds, one interface
(scikit-learn style: ``fit`` returns self, learned state ends in ``_``):

- ``static`` (:class:`~training.cascade.static_scorer.StaticScorer`): static token embeddings of the
  prompt and of the response plus cheap answer features (:mod:`router_ml._answer_inputs`), and a
  logistic regression per model - microseconds of graph, trained in about a minute;
- ``encoder`` (:class:`~training.cascade.encoder_scorer.EncoderScorer`): a fine-tuned BERT-class
  cross-encoder over ``[CLS] prompt [SEP] response [SEP]`` (the response's end kept), one output
  per model.

Both output, for each (prompt, response) pair, one probability per model column; the answering
model's column is its score. Training data are the table's cells with an observed quality and a
recorded response (:func:`scorer_data`); each cell is one training triple.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from router_ml.errors import DataError
from router_ml.formats import read_versioned

__all__ = ["SCORERS", "SCORER_JSON_VERSION", "SavedScorer", "ScorerData", "auc_report", "cell_texts", "cells",
           "get_scorer", "read_scorer_json", "scorer_data"]


@dataclass(frozen=True)
class ScorerData:
    """What a scorer trains on: ``prompts`` (n,), ``responses`` (n, models) object array of answer
    text or None, ``quality`` (n, models) with NaN where unobserved, and the model names."""

    prompts: list[str]
    responses: np.ndarray
    quality: np.ndarray
    models: tuple[str, ...]

    def __post_init__(self) -> None:
        n, m = len(self.prompts), len(self.models)
        for name, shape in (("responses", self.responses.shape), ("quality", self.quality.shape)):
            if shape != (n, m):
                raise DataError(f"ScorerData.{name} has shape {shape}; expected (prompts, models) = {(n, m)}")


def scorer_data(table: Any) -> ScorerData:
    """The :class:`ScorerData` of a :class:`~training.data.TrafficTable` whose outcomes carry responses.

    Raises :class:`DataError` naming each model that has outcomes but not one recorded response
    (the ``<model>|response`` column of a wide table, ``outcomes.<model>.response`` in canonical files).
    """
    models = tuple(table.models)
    responses = np.empty((len(table), len(models)), dtype=object)
    quality = np.asarray(table.quality, dtype=np.float64)
    missing = []
    for j, model in enumerate(models):
        column = np.asarray(table.responses(model), dtype=object)
        responses[:, j] = column
        has_outcome = ~np.isnan(quality[:, j])
        if has_outcome.any() and not any(r is not None for r in column[has_outcome]):
            missing.append(model)
    if len(missing) == len(models):
        raise DataError(f"no outcome carries a response: the answer scorer trains on (prompt, model, response) -> "
                        f"quality; give each model's answer text (field outcomes.<model>.response, or a "
                        f"'<model>|response' column in a wide table) for: {', '.join(missing)}")
    if missing:
        raise DataError(f"models with outcomes but no recorded response (field outcomes.<model>.response / column "
                        f"'<model>|response'): {', '.join(missing)}; add their responses or drop their outcomes")
    return ScorerData(prompts=list(table.texts), responses=responses, quality=quality, models=models)


def cells(data: ScorerData, rows: np.ndarray, *, cap: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(row, model)`` index pairs of the training triples among ``rows``: cells with an observed
    quality and a response; at most ``cap`` of them (a seeded sample, 0 = all), in row order."""
    rows = np.asarray(rows, dtype=np.int64)
    observed = ~np.isnan(data.quality[rows]) & np.not_equal(data.responses[rows], None)
    local, model = np.nonzero(observed)
    row = rows[local]
    if cap and len(row) > cap:
        keep = np.sort(np.random.default_rng(seed).choice(len(row), cap, replace=False))
        row, model = row[keep], model[keep]
    return row, model


class Scorer(Protocol):
    """What the pipeline and the exporter need of a scorer."""

    kind: str
    models: tuple[str, ...]

    def fit(self, data: ScorerData, train_rows: np.ndarray, val_rows: np.ndarray) -> Scorer: ...

    def predict(self, prompts: list[str], model_index: np.ndarray, responses: list[str]) -> np.ndarray: ...

    def save(self, directory: Any) -> None: ...


def cell_texts(data: ScorerData, row: np.ndarray, model: np.ndarray) -> tuple[list[str], list[str]]:
    """The (prompts, responses) of the cells ``(row[k], model[k])``: model ``k``'s answer to prompt ``k``."""
    return [data.prompts[i] for i in row], [data.responses[i, j] for i, j in zip(row, model, strict=True)]


def auc_report(data: ScorerData, row: np.ndarray, model: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """ROC AUC of ``scores`` against the cells' quality (>= 0.5 counts as good), per model
    (``scorer_auc.<model>``; None where a model's cells hold one class only) and pooled over every cell
    (``scorer_auc``, which also rewards knowing that one model is better than another), with the
    Brier score and cell counts."""
    from sklearn.metrics import roc_auc_score

    y = data.quality[row, model] >= 0.5
    out: dict[str, Any] = {"scorer_auc": _auc(roc_auc_score, y, scores), "brier": _brier(data, row, model, scores),
                           "cells": int(len(row))}
    for j, name in enumerate(data.models):
        hit = model == j
        out[f"scorer_auc.{name}"] = _auc(roc_auc_score, y[hit], scores[hit])
        out[f"cells.{name}"] = int(hit.sum())
    return out


def _auc(fn: Any, y: np.ndarray, s: np.ndarray) -> float | None:
    return float(fn(y, s)) if len(np.unique(y)) == 2 else None


def _brier(data: ScorerData, row: np.ndarray, model: np.ndarray, scores: np.ndarray) -> float | None:
    return float(np.mean((data.quality[row, model] - scores) ** 2)) if len(row) else None


#: the version of ``scorer.json`` (what rebuilds a saved scorer) that both kinds write and read
SCORER_JSON_VERSION = 1
WEIGHTS_FILE = "scorer.safetensors"


def read_scorer_json(directory: str | Path) -> dict[str, Any]:
    """A saved scorer's ``scorer.json``, its version checked."""
    return read_versioned(Path(directory) / "scorer.json", what="scorer checkpoint", version=SCORER_JSON_VERSION,
                          fix="retrain the scorer")


class SavedScorer:
    """Saving and rebuilding shared by the scorer kinds: ``scorer.json`` (``describe()``) beside one
    safetensors file of learned weights, written by the kind's ``write_weights``."""

    def write(self, directory: str | Path, write_weights: Callable[[Path], None]) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_weights(directory / WEIGHTS_FILE)
        (directory / "scorer.json").write_text(json.dumps(self.describe(), indent=1))  # type: ignore[attr-defined]

    @classmethod
    def unfitted(cls, directory: str | Path, info: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
        """A scorer of the saved config and models, before its weights are read, and its ``scorer.json``."""
        from training.config import TrainConfig

        info = info or read_scorer_json(directory)
        return cls(config=TrainConfig.from_flat(info["config"]), models=info["models"]), info  # type: ignore[call-arg]


def _registry() -> dict[str, type]:
    from training.cascade.encoder_scorer import EncoderScorer
    from training.cascade.static_scorer import StaticScorer

    return {"static": StaticScorer, "encoder": EncoderScorer}


#: the scorer kinds ``scorer.kind`` may name (the classes import torch/scikit-learn when built)
SCORERS = ("static", "encoder")


def get_scorer(kind: str) -> type:
    """The scorer class of ``kind`` (one of :data:`SCORERS`)."""
    registry = _registry()
    if kind not in registry:
        raise DataError(f"unknown scorer kind {kind!r}; choose one of {', '.join(SCORERS)}")
    return registry[kind]
