"""Cascade policies: which model to call first, when to accept its answer, where to escalate.

Two kinds of operating point, both evaluated as pure numpy over ``(n, m)`` matrices
(:class:`~router_ml.cascade.combiner.Signals` in, per-prompt outcomes out):

- **chain** ``models = (a, b, c)``, ``thresholds = (t1, t2)``: call ``a``; accept its answer when
  its acceptance score is ``>= t1``, else call ``b`` and accept when ``>= t2``, else call ``c``,
  whose answer is always accepted. Models are ordered by cost.
- **route_then_cascade** ``(first_wtp, threshold, escalate_wtp)``: the router picks the first model
  at willingness to pay ``first_wtp``; when that answer's acceptance score is below ``threshold``,
  the router picks again among the models that cost more for that prompt, at ``escalate_wtp``.

Cost counts every call made (a chain that called ``a`` then ``b`` pays both). The acceptance score is
a :class:`~router_ml.cascade.combiner.Combiner`'s calibrated probability; with ``margin`` the score a
threshold sees is that probability less the router's predicted quality of the model escalation would
reach (the chain's last model, or route-then-cascade's target), so escalation goes where the expected
gain is largest rather than where the answer merely looks weakest.

**One policy serves every budget, as the router does.** :func:`fit_policy` evaluates many operating
points on the validation rows and keeps the non-decreasing convex hull of their (mean cost, mean
quality); :class:`CascadePolicy` stores those points in cost order, each with the smallest
willingness to pay (USD per unit of quality, the router's knob) at which it maximises
``quality - cost / willingness_to_pay`` on validation. At run time the knob selects a point the way
:func:`router_ml.policy.choose` selects a model: 0 gives the cheapest point, ``inf`` the best, and the
path between rises in both cost and quality. Within one chain, thresholds along the path are
non-decreasing for two-step chains (raising the knob can only escalate more); for longer chains the
hull may trade one step's threshold against another's, and the path is monotone in cost and quality.

The module needs numpy, the runtime's policy helpers and the numpy-only combiner, nothing of the
training stack: ``router-ml cascade evaluate`` fits policies with it, and the serving path
(:mod:`router_ml.cascade.runtime`) loads a saved one (:meth:`CascadePolicy.load`) and steps through it
prompt by prompt (:meth:`CascadePolicy.step`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.cascade.combiner import Combiner, Signals
from router_ml.errors import RouterMLError
from router_ml.metrics import quality_hull
from router_ml.policy import choose, wtp_from_json, wtp_to_json

__all__ = ["POLICY_FORMAT", "CascadePolicy", "Outcome", "Point", "Step", "candidate_chains", "fit_policy", "run_point"]

POLICY_FORMAT = "router-ml-cascade-policy"
POLICY_VERSION = 1
KINDS = ("chain", "route_then_cascade")


@dataclass(frozen=True)
class Point:
    """One operating point (module doc). ``models`` (chain) are model indices; ``min_wtp`` is the
    smallest knob value that selects this point in its policy (0 for the cheapest)."""

    kind: str
    models: tuple[int, ...] = ()
    thresholds: tuple[float, ...] = ()
    first_wtp: float = 0.0
    escalate_wtp: float = float("inf")
    min_wtp: float = 0.0
    margin: bool = False

    def to_json(self, models: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "min_willingness_to_pay": wtp_to_json(self.min_wtp),
                               "margin": self.margin}
        if self.kind == "chain":
            out.update(models=[models[j] for j in self.models], thresholds=list(map(_threshold_json, self.thresholds)))
        else:
            out.update(first_willingness_to_pay=wtp_to_json(self.first_wtp),
                       threshold=_threshold_json(self.thresholds[0]),
                       escalate_willingness_to_pay=wtp_to_json(self.escalate_wtp))
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], models: tuple[str, ...]) -> Point:
        kind = data.get("kind")
        if kind not in KINDS:
            raise RouterMLError(f"cascade policy point kind {kind!r}: expected one of {', '.join(KINDS)}")
        base = {"kind": kind, "min_wtp": wtp_from_json(data["min_willingness_to_pay"]),
                "margin": bool(data.get("margin", False))}
        if kind == "chain":
            unknown = [m for m in data["models"] if m not in models]
            if unknown:
                raise RouterMLError(f"cascade policy chain names models {unknown} that the policy's models "
                                    f"{list(models)} do not include")
            return cls(models=tuple(models.index(m) for m in data["models"]),
                       thresholds=tuple(map(_threshold_from_json, data["thresholds"])), **base)
        return cls(thresholds=(_threshold_from_json(data["threshold"]),),
                   first_wtp=wtp_from_json(data["first_willingness_to_pay"]),
                   escalate_wtp=wtp_from_json(data["escalate_willingness_to_pay"]), **base)


def _threshold_json(t: float) -> float | str:
    """JSON has no infinities: ``-inf`` (always accept) and ``inf`` (never accept) become strings."""
    return t if np.isfinite(t) else ("inf" if t > 0 else "-inf")


def _threshold_from_json(t: float | str) -> float:
    return float(t)


@dataclass(frozen=True)
class Step:
    """One serving step (:meth:`CascadePolicy.step`): the model index to call ``next`` (None: return the
    last answer) and, when an answer was judged, its acceptance score and the threshold it met or missed."""

    next: int | None
    accept: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Outcome:
    """Per prompt: the model whose answer is returned, the USD paid for every call made, the number of
    model calls and of answer-scorer calls (one per accept-or-escalate decision)."""

    answered: np.ndarray
    cost: np.ndarray
    calls: np.ndarray
    scored: np.ndarray

    def quality(self, quality: np.ndarray) -> np.ndarray:
        return quality[np.arange(len(self.answered)), self.answered]


def _chain_outcome(accept: np.ndarray, models: tuple[int, ...], thresholds: tuple[float, ...],
                   cost: np.ndarray) -> Outcome:
    """``accept`` (n, len(models) - 1): the acceptance score of each non-final step's answer."""
    n = accept.shape[0]
    stop = np.column_stack([accept >= np.asarray(thresholds)[None, :], np.ones((n, 1), dtype=bool)]).argmax(axis=1)
    paid = np.cumsum(cost[:, list(models)], axis=1)[np.arange(n), stop]
    answered = np.asarray(models)[stop]
    # the scorer runs at each non-final step reached, unless its threshold accepts (-inf) or escalates
    # (inf) whatever the answer
    decided = np.cumsum(np.isfinite(np.asarray(thresholds, dtype=float)))
    return Outcome(answered, paid, stop + 1, decided[np.minimum(stop, len(models) - 2)])


def _escalation(signals: Signals, first: np.ndarray, wtp: float) -> np.ndarray:
    """The router's pick among the models that cost more than ``first`` for each prompt; -1 if none."""
    rows = np.arange(len(first))
    pricier = signals.cost_est > signals.cost_est[rows, first][:, None]
    target = choose(np.where(pricier, signals.prior, -np.inf), np.where(pricier, signals.cost_est, 0.0), wtp)
    return np.where(pricier.any(axis=1), target, -1)


def _rtc_outcome(accept_first: np.ndarray, first: np.ndarray, target: np.ndarray, threshold: float,
                 cost: np.ndarray) -> Outcome:
    rows = np.arange(len(first))
    escalate = (accept_first < threshold) & (target >= 0)
    answered = np.where(escalate, target, first)
    paid = cost[rows, first] + np.where(escalate, cost[rows, np.maximum(target, 0)], 0.0)
    scored = ((target >= 0) & bool(np.isfinite(threshold))).astype(np.int64)
    return Outcome(answered, paid, 1 + escalate.astype(np.int64), scored)


def _margin(accept: np.ndarray, prior: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The acceptance score less the router's predicted quality of the escalation target, per prompt:
    escalate where the expected gain is largest, not merely where the answer looks weakest."""
    rows = np.arange(prior.shape[0])
    return accept - np.where(target >= 0, prior[rows, np.maximum(target, 0)], 0.0)


def _chain_accept(scores: list[np.ndarray], chain: tuple[int, ...], prior: np.ndarray, margin: bool) -> np.ndarray:
    if margin:
        last = np.full(prior.shape[0], chain[-1])
        scores = [_margin(a, prior, last) for a in scores]
    return np.column_stack(scores)


def run_point(point: Point, signals: Signals, combiner: Combiner, cost: np.ndarray) -> Outcome:
    """Apply one operating point to every prompt; ``cost`` (n, m) is what each call costs (USD)."""
    if point.kind == "chain":
        scores = [combiner.accept_scores(signals, point.models[:k + 1]) for k in range(len(point.models) - 1)]
        accept = _chain_accept(scores, point.models, signals.prior, point.margin)
        return _chain_outcome(accept, point.models, point.thresholds, cost)
    first = choose(signals.prior, signals.cost_est, point.first_wtp)
    m = signals.prior.shape[1]
    per_model = np.column_stack([combiner.accept_scores(signals, (j,)) for j in range(m)])
    accept = per_model[np.arange(len(first)), first]
    target = _escalation(signals, first, point.escalate_wtp)
    if point.margin:
        accept = _margin(accept, signals.prior, target)
    return _rtc_outcome(accept, first, target, point.thresholds[0], cost)


def candidate_chains(mean_cost: np.ndarray, mean_quality: np.ndarray, *, lengths: tuple[int, ...] = (2, 3),
                     margin: float = 0.05) -> list[tuple[int, ...]]:
    """Chains worth trying: cost-ordered sequences of the models whose mean quality is within
    ``margin`` of the best cheaper model's (on or near the single-model cost/quality frontier), ending
    at a model at least as good as every earlier one."""
    order = np.argsort(mean_cost, kind="stable")
    near = [j for r, j in enumerate(order) if mean_quality[j] >= max(mean_quality[order[:r]], default=-np.inf) - margin]
    return [chain for length in lengths for chain in itertools.combinations(near, length)
            if mean_quality[chain[-1]] >= max(mean_quality[list(chain[:-1])]) - 1e-12]


def _grid(scores: np.ndarray, points: int) -> np.ndarray:
    """Thresholds to try for one step: ``-inf`` (always accept), quantiles of its scores, ``inf``."""
    finite = scores[np.isfinite(scores)]
    inner = np.unique(np.quantile(finite, np.linspace(0, 1, points))) if finite.size else np.zeros(0)
    return np.concatenate([[-np.inf], inner, [np.inf]])


def chain_points(chain: tuple[int, ...], oof: dict[tuple[int, ...], np.ndarray], quality: np.ndarray,
                 cost: np.ndarray, *, grid: int = 21, prior: np.ndarray | None = None,
                 ) -> list[tuple[float, float, Point]]:
    """(mean cost, mean quality, point) of ``chain`` at every threshold combination of the grid, on the
    validation rows whose out-of-fold acceptance scores ``oof`` holds; with the router's ``prior``, on
    the margin over the last model's prior instead (:func:`_margin`)."""
    margin = prior is not None
    accept = _chain_accept([oof[chain[:k + 1]] for k in range(len(chain) - 1)], chain,
                           prior if margin else np.zeros_like(quality), margin)
    size = {2: 2 * grid, 3: grid}.get(len(chain), max(3, grid // 2))  # combinations grow as size ** (steps - 1)
    out = []
    for thresholds in itertools.product(*(_grid(accept[:, k], size) for k in range(len(chain) - 1))):
        outcome = _chain_outcome(accept, chain, thresholds, cost)
        out.append((float(outcome.cost.mean()), float(outcome.quality(quality).mean()),
                    Point("chain", chain, tuple(float(t) for t in thresholds), margin=margin)))
    return out


def rtc_points(signals: Signals, oof: dict[tuple[int, ...], np.ndarray], quality: np.ndarray, cost: np.ndarray,
               wtps: np.ndarray, *, grid: int = 21, margin: bool = False) -> list[tuple[float, float, Point]]:
    """(mean cost, mean quality, point) of route-then-cascade over first knob x escalation knob x threshold."""
    n, m = quality.shape
    rows = np.arange(n)
    per_model = np.column_stack([oof.get((j,), np.full(n, 0.5)) for j in range(m)])
    escalate_wtps = np.concatenate([wtps[len(wtps) // 2::max(1, len(wtps) // 8)], [np.inf]])
    out = []
    for first_wtp in wtps:
        first = choose(signals.prior, signals.cost_est, first_wtp)
        for escalate_wtp in np.unique(escalate_wtps[escalate_wtps >= first_wtp]):
            target = _escalation(signals, first, escalate_wtp)
            accept = per_model[rows, first]
            if margin:
                accept = _margin(accept, signals.prior, target)
            for t in _grid(accept, grid):
                outcome = _rtc_outcome(accept, first, target, t, cost)
                out.append((float(outcome.cost.mean()), float(outcome.quality(quality).mean()),
                            Point("route_then_cascade", thresholds=(float(t),), first_wtp=float(first_wtp),
                                  escalate_wtp=float(escalate_wtp), margin=margin)))
    return out


@dataclass(frozen=True)
class CascadePolicy:
    """A cascade for every budget: ``points`` in cost order with their knob ranges (module doc),
    the ``combiner`` that scores answers, the ``models`` in the router's order, and each point's
    validation (cost, quality) for the record."""

    models: tuple[str, ...]
    combiner: Combiner
    points: tuple[Point, ...]
    validation: tuple[tuple[float, float], ...] = ()
    name: str = "cascade"
    #: the sha256 of the router's ``router.onnx`` and the scorer's ``scorer.onnx`` the policy was fitted
    #: with (the combiner's weights are calibrated on their outputs); serving checks them when present
    router_sha256: str | None = None
    scorer_sha256: str | None = None

    def point(self, willingness_to_pay: float) -> Point:
        """The operating point the knob selects: the last one whose ``min_wtp`` is at most the knob."""
        if not willingness_to_pay >= 0:
            raise ValueError(f"willingness_to_pay must be >= 0 USD per unit of quality, got {willingness_to_pay}")
        starts = np.array([p.min_wtp for p in self.points])
        return self.points[int(np.searchsorted(starts, willingness_to_pay, side="right")) - 1]

    def next_call(self, point: Point, signals: Signals, called: list[int]) -> int | None:
        """The model to call next for one prompt, or None to return the last answer: :meth:`step`'s ``next``."""
        return self.step(point, signals, called).next

    def step(self, point: Point, signals: Signals, called: list[int]) -> Step:
        """The serving loop's step for one prompt: the model to call next (None: return the answer of
        the last model in ``called``, model indices in call order), with the acceptance score and the
        threshold that decided it. ``signals`` has one row: the router's prior and cost estimate, and
        the scorer's scores (and agreement) of the answers received so far - cells of models not
        called yet are never read. Calling models as this says reproduces :func:`run_point`'s
        outcome for the prompt.

        >>> point = policy.point(0.01); called = []                              # doctest: +SKIP
        >>> while (j := policy.step(point, signals, called).next) is not None:  # doctest: +SKIP
        ...     called.append(j)  # call model j, score its answer into signals
        """
        if not called:
            if point.kind == "chain":
                return Step(point.models[0])
            return Step(int(choose(signals.prior, signals.cost_est, point.first_wtp)[0]))
        if point.kind == "chain":
            k = len(called) - 1
            if k >= len(point.models) - 1:
                return Step(None)  # the chain's last answer is always returned
            accept = float(_chain_accept([self.combiner.accept_scores(signals, point.models[:k + 1])],
                                         point.models, signals.prior, point.margin)[0, 0])
            threshold = point.thresholds[k]
            return Step(None if accept >= threshold else point.models[k + 1], accept, threshold)
        if len(called) > 1:
            return Step(None)
        first = np.array(called[:1])
        target = _escalation(signals, first, point.escalate_wtp)
        if target[0] < 0:
            return Step(None)  # no pricier model to escalate to: nothing to decide
        accept_all = self.combiner.accept_scores(signals, (called[0],))
        if point.margin:
            accept_all = _margin(accept_all, signals.prior, target)
        accept, threshold = float(accept_all[0]), point.thresholds[0]
        return Step(int(target[0]) if accept < threshold else None, accept, threshold)

    def to_json(self) -> dict[str, Any]:
        return {"format": POLICY_FORMAT, "version": POLICY_VERSION, "name": self.name, "models": list(self.models),
                "router_sha256": self.router_sha256, "scorer_sha256": self.scorer_sha256,
                "combiner": self.combiner.to_json(self.models),
                "points": [{**p.to_json(self.models), **({"validation": {"cost": v[0], "quality": v[1]}}
                                                         if v else {})}
                           for p, v in itertools.zip_longest(self.points, self.validation)]}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, where: str = "cascade policy") -> CascadePolicy:
        if data.get("format") != POLICY_FORMAT or data.get("version") != POLICY_VERSION:
            raise RouterMLError(f"{where}: not a {POLICY_FORMAT} version {POLICY_VERSION} file (format "
                                f"{data.get('format')!r}, version {data.get('version')!r}); re-run "
                                "'router-ml cascade evaluate' to write one")
        models = tuple(data["models"])
        points = tuple(Point.from_json(p, models) for p in data["points"])
        validation = tuple((p["validation"]["cost"], p["validation"]["quality"]) for p in data["points"]
                           if "validation" in p)
        combiner = Combiner.from_json(data["combiner"], models)
        return cls(models, combiner, points, validation, data.get("name", "cascade"), data.get("router_sha256"),
                   data.get("scorer_sha256"))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CascadePolicy:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise RouterMLError(f"{path}: cannot read the cascade policy ({exc})") from exc
        return cls.from_json(data, where=str(path))


def fit_policy(candidates: list[tuple[float, float, Point]], *, models: tuple[str, ...], combiner: Combiner,
               name: str = "cascade") -> CascadePolicy:
    """The policy of the candidates' validation hull (module doc): each hull point in cost order with
    the knob value from which it maximises ``quality - cost / willingness_to_pay``."""
    if not candidates:
        raise RouterMLError(f"cascade policy {name!r}: no candidate operating point to fit")
    costs = np.array([c for c, _, _ in candidates])
    qualities = np.array([q for _, q, _ in candidates])
    hull_c, hull_q = quality_hull(costs, qualities)
    points, validation = [], []
    for r, (c, q) in enumerate(zip(hull_c.tolist(), hull_q.tolist(), strict=True)):
        # the first candidate with exactly this hull point's numbers (the hull keeps them bit for bit)
        k = int(np.flatnonzero((costs == c) & (qualities == q))[0])
        start = 0.0 if r == 0 else (c - hull_c[r - 1]) / (q - hull_q[r - 1])
        points.append(replace(candidates[k][2], min_wtp=float(start)))
        validation.append((c, q))
    return CascadePolicy(models, combiner, tuple(points), tuple(validation), name)
