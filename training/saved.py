"""A saved router to score: a training checkpoint or an exported artifact, behind one interface.

``router-ml evaluate --router DIR`` and ``router-ml compare --router DIR ...`` take either kind of
directory. Both give what scoring needs - the models in output order, predicted quality and the
runtime's cost estimate per prompt, the knob grid the router was scored on in training and its
default knob - so :func:`training.evaluate_saved.evaluate_router` scores them the same way. They differ
in one thing a report must say: a checkpoint lists the prompts it was trained and validated on
(``split.json``), so evaluation can drop them; an artifact does not, so nothing is dropped and the
report says that it could not be checked.

The default knob is the willingness to pay the router ships with: an artifact's manifest
(``policy.willingness_to_pay``), for a checkpoint the value ``router-ml export`` would write
(the exporter's default rule, from the checkpoint's held-out curve).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.errors import RouterMLError
from router_ml.policy import CostModel, estimate_input_tokens

__all__ = ["SavedRouter", "load_saved", "wtp_or_default"]


@dataclass
class SavedRouter:
    """A loaded checkpoint or artifact: ``predict`` and ``cost_estimate`` take prompt texts and return
    (n, m) arrays over ``models``; ``seen`` is the set of training-prompt hashes (None for an artifact,
    which has no such list); ``willingness_to_pay`` the default knob (USD per unit of quality)."""

    path: Path
    kind: str  # "checkpoint" or "artifact"
    router: str  # the router's architecture ("mlp", ...)
    models: tuple[str, ...]
    knob_grid: np.ndarray
    willingness_to_pay: float
    willingness_source: str
    config: dict[str, Any]
    two_model: tuple[int, int] | None
    seen: set[str] | None
    _scorer: Any = field(repr=False, default=None)

    @property
    def n_boot(self) -> int:
        return int(self.config.get("eval.n_boot", 200))

    @property
    def knob_refine(self) -> int:
        """``eval.knob_refine`` of the run that trained it (0 for routers trained before it existed)."""
        return int(self.config.get("eval.knob_refine", 0))

    @property
    def seed(self) -> int:
        return int(self.config.get("data.seed", 0))

    def predict(self, texts: list[str], *, cache_dir: str | Path | None = None, progress: bool = False) -> np.ndarray:
        return self._scorer.predict(texts, cache_dir=cache_dir, progress=progress)

    def cost_estimate(self, texts: list[str]) -> np.ndarray:
        return self._scorer.cost_estimate(texts)


class _CheckpointScorer:
    def __init__(self, directory: Path, config: Any, cost_model: CostModel):
        from training.routers import TorchRouter

        self.directory, self.config, self.cost_model = directory, config, cost_model
        self.router = TorchRouter.load(directory)

    def predict(self, texts: list[str], *, cache_dir: str | Path | None, progress: bool) -> np.ndarray:
        from training.checkpoint import portable_identity
        from training.pipeline import featurize_texts, predict_rows
        from training.progress import progress_scope

        X = None
        if not self.router.text_inputs:
            X, identity = featurize_texts(self.config, texts, fingerprint=None, cache_dir=cache_dir, progress=progress)
            saved = json.loads((self.directory / "featurizer.json").read_text())
            if portable_identity(identity) != portable_identity(saved):
                raise RouterMLError(f"{self.directory}: the featurizer here differs from the one the router was "
                                    f"trained with ({identity} vs {saved})")
        with progress_scope(progress):  # the scoring bar: an encoder scores 12,000 prompts in minutes on a CPU
            return predict_rows(self.router, self.router.inputs(texts, X), np.arange(len(texts)))

    def cost_estimate(self, texts: list[str]) -> np.ndarray:
        return self.cost_model.estimate(estimate_input_tokens(texts))


class _ArtifactScorer:
    """The torch-free runtime (:class:`router_ml.Router`): what a deployment would predict."""

    def __init__(self, runtime: Any):
        self.runtime = runtime

    def predict(self, texts: list[str], *, cache_dir: str | Path | None, progress: bool) -> np.ndarray:
        return self.runtime.predict(texts)

    def cost_estimate(self, texts: list[str]) -> np.ndarray:
        return self.runtime.costs(texts)


def _load_checkpoint(directory: Path) -> SavedRouter:
    from training.checkpoint import checked_checkpoint, saved_knob_grid
    from training.config import TrainConfig
    from training.evaluation import read_metrics_file
    from training.export import default_knob  # the exporter's own rule

    manifest = checked_checkpoint(directory)
    flat = json.loads((directory / "config.json").read_text())
    cost_model = CostModel.from_dict(json.loads((directory / "cost_model.json").read_text()))
    seen = set(json.loads((directory / "split.json").read_text())["seen_prompt_hashes"])
    return SavedRouter(
        path=directory, kind="checkpoint", router=manifest["router"], models=tuple(manifest["models"]),
        knob_grid=saved_knob_grid(directory),
        willingness_to_pay=default_knob(read_metrics_file(directory / "metrics.json")),
        willingness_source="checkpoint (the knob 'router-ml export' would ship: its held-out curve)",
        config=flat, two_model=tuple(manifest["two_model"]) if manifest.get("two_model") else None, seen=seen,
        _scorer=_CheckpointScorer(directory, TrainConfig.from_flat(flat), cost_model))


def _load_artifact(directory: Path) -> SavedRouter:
    from router_ml import Router

    runtime = Router.load(directory)
    manifest = runtime.manifest
    grid = runtime.cost_model.knob_grid
    if not grid:
        raise RouterMLError(f"{directory}/manifest.json: the policy's cost model has no knob_grid; re-export the "
                            "router with this router-ml, or evaluate its checkpoint directory")
    training = manifest.get("training") or {}
    return SavedRouter(
        path=directory, kind="artifact", router=manifest.get("router", "?"), models=tuple(runtime.models),
        knob_grid=np.asarray(grid, dtype=float), willingness_to_pay=runtime.willingness_to_pay,
        willingness_source="artifact manifest (policy.willingness_to_pay)", config=training.get("config") or {},
        two_model=None, seen=None, _scorer=_ArtifactScorer(runtime))


def load_saved(path: str | Path) -> SavedRouter:
    """Load ``path``: an exported artifact when its ``manifest.json`` says ``router-ml-artifact``, else a
    checkpoint written by ``router-ml train``.

    >>> load_saved("runs/mlp/artifact").kind   # doctest: +SKIP
    'artifact'
    """
    directory = Path(path)
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        raise RouterMLError(f"{directory}: not a router directory (no manifest.json); give a checkpoint written by "
                            "'router-ml train' or an artifact directory written by 'router-ml export'")
    try:
        fmt = json.loads(manifest.read_text()).get("format")
    except (OSError, ValueError, AttributeError) as exc:
        raise RouterMLError(f"{manifest}: unreadable ({exc}); re-export or retrain the router") from exc
    from router_ml.router import ARTIFACT_FORMAT

    return _load_artifact(directory) if fmt == ARTIFACT_FORMAT else _load_checkpoint(directory)


def wtp_or_default(saved: SavedRouter, override: float | None) -> tuple[float, str]:
    """The knob to report the default point at: ``override`` (``--willingness-to-pay``) or the router's."""
    if override is None:
        return saved.willingness_to_pay, saved.willingness_source
    if not override >= 0:
        raise RouterMLError(f"--willingness-to-pay must be >= 0 USD per unit of quality, got {override}")
    return float(override), "--willingness-to-pay"

