"""Torch heads for the routers that ``router.kind = "auto"`` chooses between, beyond the MLP and MF.

Every head maps prompt features to per-model quality *logits*, like :class:`~training.routers.neural.MLPHead`,
so that whichever one wins is saved as safetensors, rebuilt from a JSON spec (:func:`build_head`) and
exported by :mod:`training.export` into the same single ONNX graph as any static router:

- :class:`LinearHead`: a per-model logistic regression (``Linear`` + the graph's sigmoid), fitted
  here with full-batch L-BFGS on the same soft-label objective as scikit-learn's ``LogisticRegression``
  (``training.routers.baselines.LogRegRouter``) - all models at once, in a fraction of the time;
- :class:`KNNHead`: cosine k-nearest neighbours as a ``MatMul`` against the stored normalised
  training embeddings, ``TopK`` and a gather of their observed qualities, shrunk toward each model's
  mean exactly as :class:`~training.routers.baselines.KNNRouter` does;
- :class:`Calibrated`: per-model Platt scaling (``a * logit + b``) fitted on held-out predictions;
- :class:`MeanHead`: the average of its members' (calibrated) probabilities - the ensemble;
- the ``lexical`` candidate's heads read token ids, not the features (:mod:`training.routers.lexical`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from training.routers.neural import EPS, Ensemble, GroupBlend, MFHead, MLPHead, logit, probabilities

__all__ = ["Calibrated", "KNNHead", "LinearHead", "MeanHead", "build_head", "expected_calibration_error",
           "fit_logreg", "fit_platt", "knn_projection", "logit", "probabilities"]

#: the solvers' precision: float32 halves the time of an L-BFGS fit and moves predictions by < 1e-4
DTYPE = torch.float32


class LinearHead(nn.Module):
    """Logistic regression per model: ``logits = x W^T + b``."""

    def __init__(self, in_dim: int, n_models: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, n_models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _soft_bce(logits: torch.Tensor, target: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Sum over observed cells of the binary cross-entropy with graded (soft) targets."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * observed).sum()


def fit_logreg(X: np.ndarray, quality: np.ndarray, C: float, *, max_iter: int = 200,
               start: LinearHead | None = None, weights: np.ndarray | None = None) -> LinearHead:
    """A :class:`LinearHead` minimising, per model, ``0.5 |w|^2 + C * sum(soft BCE)`` over the observed
    cells (scikit-learn's objective; the intercept is not penalised). A model whose observed quality is
    constant (or that is observed fewer than twice) predicts that constant, as ``LogRegRouter`` does.
    ``start`` (the solution at a nearby ``C``) warm-starts the solver: a grid costs little more than one fit."""
    x = torch.as_tensor(np.require(X, np.float32, ["W"]))  # a copy where X is read-only (a worker's memory map)
    observed_np = ~np.isnan(quality)
    q = np.nan_to_num(np.asarray(quality, dtype=np.float32))
    counts = observed_np.sum(axis=0)
    means = np.where(counts > 0, q.sum(axis=0) / np.maximum(counts, 1), 0.0)
    spread = np.array([np.ptp(q[observed_np[:, j], j]) if counts[j] else 0.0 for j in range(q.shape[1])])
    learn = (counts >= 2) & (spread > 0)
    observed = torch.as_tensor(observed_np & learn[None, :], dtype=DTYPE)
    if weights is not None:  # per-cell loss weights (an imputed target weighs less than an outcome)
        observed = observed * torch.as_tensor(np.asarray(weights), dtype=DTYPE)
    penalised = torch.as_tensor(learn, dtype=DTYPE)[:, None]
    target = torch.as_tensor(q)
    n, d = x.shape
    if start is None:
        weight = torch.zeros(q.shape[1], d, dtype=DTYPE, requires_grad=True)
        bias = torch.as_tensor(np.log(np.clip(means, 0.01, 0.99) / (1 - np.clip(means, 0.01, 0.99))), dtype=DTYPE)
    else:
        weight = start.linear.weight.detach().to(DTYPE).clone().requires_grad_(True)
        bias = start.linear.bias.detach().to(DTYPE).clone()
    bias.requires_grad_(True)
    optim = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                              history_size=20, line_search_fn="strong_wolfe")
    scale = 1.0 / max(1, n)  # the objective divided by C * n: same minimum, better conditioned

    def closure() -> torch.Tensor:
        optim.zero_grad()
        loss = (_soft_bce(x @ weight.T + bias, target, observed) + 0.5 / C * (weight * penalised).pow(2).sum())
        loss = loss * scale
        loss.backward()
        return loss

    optim.step(closure)
    head = LinearHead(d, q.shape[1])
    with torch.no_grad():
        w = weight.detach().clone()
        b = bias.detach().clone()
        fixed = torch.as_tensor(~learn)
        w[fixed] = 0.0
        b[fixed] = logit(torch.as_tensor(means, dtype=DTYPE))[fixed]
        head.linear.weight.copy_(w.float())
        head.linear.bias.copy_(b.float())
    return head.eval()


def knn_projection(keys: np.ndarray, dims: int) -> np.ndarray | None:
    """``(D, d)``: the top ``d = min(dims, records)`` right singular vectors of the stored prompts' normalised
    features ``keys`` (records, D), or None where that would not make the search cheaper (``dims`` 0, or
    ``d`` (records + D) >= records x D multiplications). A query's dot products with the stored prompts
    through it are the closest rank-``d`` approximation of the full ones (Eckart-Young) and exact where the
    prompts span no more than ``d`` directions; the search reads ``d / D`` of the bytes - and in a proxy,
    between requests, those come from memory: the kNN member's keys were most of an ensemble's weights
    (docs/serving-measurements.md)."""
    keys = np.asarray(keys, dtype=np.float64)
    n, width = keys.shape
    d = min(int(dims), n)
    if dims <= 0 or d * (n + width) >= n * width:
        return None
    keys = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(np.linalg.svd(keys, full_matrices=False)[2][:d].T, dtype=np.float32)


class KNNHead(nn.Module):
    """Cosine k-nearest neighbours over stored training prompts: the mean observed quality of the ``k``
    most similar ones (weighted per cell by ``weights`` when given), shrunk toward each model's overall
    mean by one pseudo-observation
    (:class:`~training.routers.baselines.KNNRouter`'s rule). ``TopK`` breaks exact ties by the lower index
    (the ONNX rule; torch is asked for the same with a stable sort). A prompt without features (all
    zero: no known token) has no neighbours and gets the prior.

    With ``dims`` (or a given ``project``, ``(D, d)``) the similarities are taken in the stored prompts'
    top ``d`` singular directions (:func:`knn_projection`): the query's normalised features times
    ``project``, times the projected keys."""

    def __init__(self, keys: np.ndarray, quality: np.ndarray, k: int, weights: np.ndarray | None = None, *,
                 dims: int = 0, project: np.ndarray | None = None):
        super().__init__()
        keys = np.asarray(keys, dtype=np.float32)
        keys = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
        if project is None and dims:
            project = knn_projection(keys, dims)
        if project is not None:
            project = np.asarray(project, dtype=np.float32)
            keys = (keys.astype(np.float64) @ project).astype(np.float32)
        observed = (~np.isnan(quality)).astype(np.float64)
        if weights is not None:  # per-cell weights (an imputed target counts for less than an outcome)
            observed = observed * np.asarray(weights, dtype=np.float64)
        values = np.nan_to_num(quality) * observed
        counts = observed.sum(axis=0)
        prior = np.where(counts > 0, values.sum(axis=0) / np.maximum(counts, 1e-12), 0.0)
        self.register_buffer("project", None if project is None else torch.as_tensor(project))
        self.register_buffer("keys", torch.as_tensor(keys))
        self.register_buffer("values", torch.as_tensor(values, dtype=torch.float32))
        self.register_buffer("observed", torch.as_tensor(observed, dtype=torch.float32))
        self.register_buffer("prior", torch.as_tensor(prior, dtype=torch.float32))
        self.k = int(min(k, len(keys)))

    @property
    def dims(self) -> int:
        """The dimensions the search runs in when projected, else 0 (the ``dims`` of its spec)."""
        return 0 if self.project is None else int(self.project.shape[1])

    def neighbours(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indices (B, k) of the most similar stored prompts, whether the prompt has features (B, 1))``."""
        sims, norm = self._similarities(x)
        if torch.onnx.is_in_onnx_export():
            index = torch.topk(sims, k, dim=-1).indices
        else:
            index = torch.sort(sims, dim=-1, descending=True, stable=True).indices[:, :k]
        return index, norm > 0

    def _similarities(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cosine similarities (B, stored), norms (B, 1))`` of ``x`` to the stored prompts (in their top
        singular directions when the head is projected)."""
        norm = x.norm(dim=-1, keepdim=True)
        query = x / norm.clamp_min(1e-12)
        if self.project is not None:
            query = query @ self.project
        return query @ self.keys.T, norm

    def rank_gap(self, x: torch.Tensor) -> float:
        """The smallest gap, over the rows of ``x``, between the k-th and (k+1)-th similarity (``inf``
        when no more than k prompts are stored): within float rounding the two may trade places."""
        if self.keys.shape[0] <= self.k:
            return float("inf")
        top = torch.topk(self._similarities(x)[0], self.k + 1, dim=-1).values
        return float((top[:, self.k - 1] - top[:, self.k]).min())

    def quality(self, index: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        sums = self.values[index].sum(dim=1)
        counts = self.observed[index].sum(dim=1)
        return torch.where(known, (sums + self.prior) / (counts + 1.0), self.prior)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        index, known = self.neighbours(x, self.k)
        return self.quality(index, known).clamp(EPS, 1 - EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logit(self.probabilities(x))

    @torch.no_grad()
    def predict_grid(self, X: np.ndarray, ks: list[int], batch: int = 512) -> dict[int, np.ndarray]:
        """Predicted quality for every ``k`` of ``ks`` from one neighbour search of ``max(ks)``."""
        top = min(max(ks), len(self.keys))
        out: dict[int, list[np.ndarray]] = {k: [] for k in ks}
        for a in range(0, len(X), batch):
            index, known = self.neighbours(torch.as_tensor(np.asarray(X[a:a + batch], dtype=np.float32)), top)
            for k in ks:
                out[k].append(self.quality(index[:, :min(k, top)], known).numpy())
        return {k: np.concatenate(v) for k, v in out.items()}


class Calibrated(nn.Module):
    """Per-model Platt scaling of a head's logits: ``scale * logit + shift``."""

    def __init__(self, base: nn.Module, n_models: int):
        super().__init__()
        self.base = base
        self.register_buffer("scale", torch.ones(n_models))
        self.register_buffer("shift", torch.zeros(n_models))

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.base(*inputs) * self.scale + self.shift


def fit_platt(pred: np.ndarray, quality: np.ndarray, *, ridge: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Per-model ``(scale, shift)`` that map held-out predicted quality ``pred`` to calibrated logits,
    by soft-label logistic regression on the observed cells (a small ridge pulls toward the identity;
    the scale stays >= 0 so that calibration never reverses a model's ranking of prompts)."""
    try:
        return _platt(pred, quality, ridge, DTYPE)
    except RuntimeError:  # the line search overflowed float32 (seen once on a 12-model table): in float64
        scale, shift = _platt(pred, quality, ridge, torch.float64)
        return scale.astype(np.float32), shift.astype(np.float32)


def _platt(pred: np.ndarray, quality: np.ndarray, ridge: float, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    z = logit(torch.as_tensor(np.asarray(pred, dtype=np.float32))).to(dtype)
    observed = torch.as_tensor(~np.isnan(quality), dtype=dtype)
    target = torch.as_tensor(np.nan_to_num(np.asarray(quality, dtype=np.float32))).to(dtype)
    scale = torch.ones(z.shape[1], dtype=dtype, requires_grad=True)
    shift = torch.zeros(z.shape[1], dtype=dtype, requires_grad=True)
    optim = torch.optim.LBFGS([scale, shift], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")
    n = max(1.0, float(observed.sum()))

    def closure() -> torch.Tensor:
        optim.zero_grad()
        penalty = ridge * ((scale - 1).pow(2).sum() + shift.pow(2).sum())
        loss = _soft_bce(z * scale + shift, target, observed) / n + penalty
        loss.backward()
        return loss

    optim.step(closure)
    return scale.detach().clamp_min(0).numpy(), shift.detach().numpy()


def apply_platt(pred: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``pred`` (probabilities) through a :func:`fit_platt` calibration, as :class:`Calibrated` computes it."""
    z = logit(torch.as_tensor(np.asarray(pred, dtype=np.float32))).numpy()
    return 1.0 / (1.0 + np.exp(-(z * scale.astype(np.float32) + shift.astype(np.float32))))


class MeanHead(nn.Module):
    """The mean of the members' predicted probabilities, as a logit (the ensemble of the candidates)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The members' mean probability. The calibrated members' logits are scaled, shifted and squashed
        together, as one ``(members, B, models)`` block: the same numbers as member by member, in three graph
        nodes instead of three per member."""
        calibrated = [m for m in self.members if isinstance(m, Calibrated)]
        rest = [probabilities(m, x) for m in self.members if not isinstance(m, Calibrated)]
        parts = [torch.stack(rest)] if rest else []
        if calibrated:
            z = torch.stack([m.base(x) for m in calibrated])                           # (K, B, models)
            scale = torch.stack([m.scale for m in calibrated]).unsqueeze(1)           # (K, 1, models)
            shift = torch.stack([m.shift for m in calibrated]).unsqueeze(1)
            parts.insert(0, torch.sigmoid(z * scale + shift))
        return torch.cat(parts).mean(dim=0).clamp(EPS, 1 - EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logit(self.probabilities(x))


def expected_calibration_error(pred: np.ndarray, quality: np.ndarray, bins: int = 10) -> float:
    """ECE over the observed cells: the mean |predicted - observed quality| of ``bins`` equal-width bins
    of the prediction, weighted by the cells in each."""
    observed = ~np.isnan(quality)
    p, q = np.asarray(pred)[observed], np.asarray(quality)[observed]
    if not len(p):
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = sum(abs(p[which == b].mean() - q[which == b].mean()) * (which == b).sum()
                for b in range(bins) if (which == b).any())
    return float(total / len(p))


def build_head(spec: dict[str, Any], in_dim: int, n_models: int) -> nn.Module:
    """An untrained head of the structure ``spec`` describes (a saved :class:`AutoRouter`'s ``router.json``),
    with buffers of the right shapes for ``load_state_dict`` to fill."""
    kind = spec["type"]
    if kind == "mlp":
        return MLPHead(in_dim, n_models, spec["hidden"], spec["layers"], spec["dropout"])
    if kind == "mf":
        return MFHead(in_dim, n_models, spec["model_dim"], spec["dropout"])
    if kind == "logreg":
        return LinearHead(in_dim, n_models)
    if kind == "knn":
        dims = int(spec.get("dims", 0))  # a router saved before projected searches: 0
        return KNNHead(np.zeros((spec["records"], in_dim), np.float32), np.zeros((spec["records"], n_models)),
                       spec["k"], project=np.zeros((in_dim, dims), np.float32) if dims else None)
    if kind == "groups":
        return GroupBlend(build_head(spec["base"], in_dim, n_models), in_dim, torch.zeros(spec["groups"], n_models),
                          spec["weight"])
    if kind == "calibrated":
        return Calibrated(build_head(spec["base"], in_dim, n_models), n_models)
    if kind == "ensemble":
        return Ensemble([build_head(s, in_dim, n_models) for s in spec["members"]])
    if kind == "mean":
        return MeanHead([build_head(s, in_dim, n_models) for s in spec["members"]])
    if kind == "lexical":
        from training.routers.lexical import LexicalHead

        return LexicalHead(spec["vocab"], n_models)
    if kind == "lexical_mix":
        from training.routers.lexical import LexicalMix

        base = None if spec["base"] is None else build_head(spec["base"], in_dim, n_models)
        return LexicalMix(base, build_head(spec["lexical"], in_dim, n_models), spec["weight"])
    raise ValueError(f"unknown head type {kind!r} in router.json; retrain the router with this router-ml")
