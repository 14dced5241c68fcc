"""Exploration with recorded propensities: sometimes route to a model other than the greedy choice.

Logged traffic is bandit feedback - only the chosen model's answer is ever rated - so learning from
it and evaluating a new router off-policy needs decisions that sometimes leave the greedy choice,
each logged with the probability (``propensity``) with which the deployed policy chose its model.
:class:`Exploration` states that policy; :meth:`Explorer.draw` applies it to one prompt.

Three kinds, all mixtures "greedy with probability ``1 - rate``, else explore":

- ``epsilon``: explore uniformly over the *eligible* models (the greedy one included), so with ``k``
  eligible models ``p(greedy) = 1 - rate + rate / k`` and ``p(other eligible) = rate / k``.
- ``softmax``: explore by a softmax of the eligible models' utilities (``quality - cost / knob``, the
  policy's own, :mod:`router_ml.policy`) divided by ``temperature``, so
  ``p(m) = (1 - rate) [m = greedy] + rate * softmax(m)``; ``rate=1`` is a plain softmax policy.
- ``curve``: explore along the router's own cost-quality curve: an explored decision is, with
  probability ``uniform_share``, uniform over the eligible models as in ``epsilon``, and otherwise the
  greedy choice at a willingness to pay drawn uniformly from the :data:`CURVE_POINTS` knobs of
  :func:`router_ml.policy.knob_grid` (0, a geometric range from a tenth of the prompt's cheapest cost
  to 10^4 x its dearest, and infinity) - the sweep the AIQ metric integrates over. The explored
  outcomes then land on the models some knob would route this prompt to (the ones a retrained router
  has to rank), not spread thinly over models no knob picks; the uniform share keeps every eligible
  model's propensity above 0. ``p(m) = (1 - rate) [m = greedy] + rate * (uniform_share / k +
  (1 - uniform_share) * n_m / CURVE_POINTS)``, ``n_m`` the knobs of the grid at which ``m`` is chosen,
  counted exactly from the upper convex hull of the prompt's (cost, predicted quality) points.

Eligible: not in ``exclude`` and, with ``max_cost_usd``, expected to cost at most that on the prompt.
The greedy model is always eligible (exploration never forbids what the router would choose anyway),
and an ineligible model has probability 0. No exploration (``None``, the default) means the greedy
model with propensity exactly 1.0.

Everything here is plain Python on a handful of floats, one random number per decision: it adds about
1-3 us to a routing decision for ``epsilon`` and ``softmax``, about 4 us for ``curve`` (its hull) with 5
models (``scripts/bench_runtime.py --explore-rate``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router_ml._numbers import is_number, is_whole

__all__ = ["KINDS", "Exploration", "Explorer"]

KINDS = ("epsilon", "softmax", "curve")
#: knobs of the grid a ``curve`` exploration draws from (as ``eval.knob_points``' default)
CURVE_POINTS = 81


@dataclass(frozen=True)
class Exploration:
    """An exploration policy (see the module doc). ``seed`` makes the draws reproducible in
    single-threaded use (``None``: fresh entropy); ``temperature`` applies to ``softmax`` only, in
    units of utility (predicted quality; at knob 0 the utility is minus the USD cost, whose differences
    are tiny against a temperature of 0.1, so softmax exploration there is close to uniform)."""

    kind: str = "epsilon"
    rate: float = 0.05
    seed: int | None = None
    max_cost_usd: float | None = None
    exclude: tuple[str, ...] = ()
    temperature: float = 0.1
    uniform_share: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"exploration kind must be one of {list(KINDS)}, got {self.kind!r}")
        if not is_number(self.rate) or not 0 <= self.rate <= 1:
            raise ValueError(f"exploration rate must be a number in [0, 1], got {self.rate!r}")
        if self.seed is not None and not is_whole(self.seed):
            raise ValueError(f"exploration seed must be an integer or None, got {self.seed!r}")
        if self.max_cost_usd is not None and (not is_number(self.max_cost_usd) or not self.max_cost_usd >= 0):
            raise ValueError(f"exploration max_cost_usd must be a number >= 0 (USD) or None, got {self.max_cost_usd!r}")
        exclude = () if self.exclude is None else self.exclude
        if not isinstance(exclude, str) and isinstance(exclude, Iterable):
            exclude = tuple(exclude)  # once: a generator is read a single time
        if not isinstance(exclude, tuple) or not all(isinstance(m, str) for m in exclude):
            raise ValueError(f"exploration exclude must be a list of model names, got {self.exclude!r}")
        object.__setattr__(self, "exclude", exclude)
        if not is_number(self.temperature) or not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"exploration temperature must be a finite number > 0, got {self.temperature!r}")
        if not is_number(self.uniform_share) or not 0 <= self.uniform_share <= 1:
            raise ValueError(f"exploration uniform_share must be a number in [0, 1], got {self.uniform_share!r}")
        # numpy's numbers are accepted and stored as Python's (for the RNG's seed and the decision log's JSON)
        for name in ("rate", "temperature", "uniform_share") + (("max_cost_usd",) if self.max_cost_usd is not None
                                                                else ()):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rate": self.rate, "seed": self.seed, "max_cost_usd": self.max_cost_usd,
                "exclude": list(self.exclude), "temperature": self.temperature,
                "uniform_share": self.uniform_share}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Exploration:
        unknown = set(data) - {"kind", "rate", "seed", "max_cost_usd", "exclude", "temperature", "uniform_share"}
        if unknown:
            raise ValueError(f"exploration: unknown field(s) {sorted(unknown)}; the fields are kind, rate, seed, "
                             f"max_cost_usd, exclude, temperature, uniform_share")
        return cls(**{**data, "exclude": tuple(data.get("exclude") or ())})


class Explorer:
    """An :class:`Exploration` bound to a router's models, with its own RNG seeded from the settings.

    One ``random.Random.random()`` call per draw, and no lock: CPython's Mersenne Twister is thread-safe
    (each call is atomic), and a draw never needs two numbers - an explored draw reuses ``u / rate``, which
    given ``u < rate`` is again uniform on [0, 1). Single-threaded use with a seed is reproducible.
    """

    def __init__(self, exploration: Exploration, models: Sequence[str]):
        unknown = [m for m in exploration.exclude if m not in models]
        if unknown:
            raise ValueError(f"exploration exclude names unknown model(s) {unknown}; the router's models are "
                             f"{list(models)}")
        self.exploration = exploration
        self._rate = float(exploration.rate)
        self._softmax = exploration.kind == "softmax"
        self._curve = exploration.kind == "curve"
        self._uniform_share = float(exploration.uniform_share)
        self._inv_temperature = 1.0 / float(exploration.temperature)
        self._cap = math.inf if exploration.max_cost_usd is None else float(exploration.max_cost_usd)
        self._allowed = tuple(m not in exploration.exclude for m in models)
        self._n_allowed = sum(self._allowed)
        # no exclusion and no cap: every model is eligible on every prompt (a shared list: never mutated)
        self._everyone = list(range(len(models))) if self._n_allowed == len(models) and self._cap == math.inf \
            else None
        self._random = random.Random(exploration.seed).random

    def eligible(self, costs: Sequence[float], greedy: int) -> list[int]:
        """Indices that may be explored on this prompt: allowed and within the cost cap, plus ``greedy``."""
        if self._everyone is not None:
            return self._everyone
        cap, allowed = self._cap, self._allowed
        return [i for i, c in enumerate(costs) if i == greedy or (allowed[i] and c <= cap)]

    def _weights(self, utility: Sequence[float], costs: Sequence[float], greedy: int) -> list[float]:
        """Unnormalised softmax weights, 0 for ineligible models. ``greedy`` has the largest utility, so
        subtracting its utility keeps every ``exp`` at most about 1."""
        top, inv, cap, allowed, exp = utility[greedy], self._inv_temperature, self._cap, self._allowed, math.exp
        return [exp((u - top) * inv) if i == greedy or (allowed[i] and costs[i] <= cap) else 0.0
                for i, u in enumerate(utility)]

    def curve_shares(self, scores: Sequence[float], costs: Sequence[float], greedy: int,
                     eligible: list[int] | None = None) -> list[float]:
        """Each model's share of the :data:`CURVE_POINTS` knobs (0, a geometric range from a tenth of the
        cheapest eligible cost to 10^4 x the dearest, infinity) at which it is the choice among the eligible
        models, from the upper convex hull of their (cost, predicted quality) points: the model between two
        breakpoints ``(c_b - c_a) / (q_b - q_a)`` of the hull is chosen for every knob between them (a
        knob on a breakpoint goes to the cheaper one) - the choices :func:`router_ml.policy.choose` makes."""
        order = sorted(self.eligible(costs, greedy) if eligible is None else eligible, key=costs.__getitem__)
        hull: list[int] = []
        for i in order:  # by cost (equal costs in index order)
            q, c = scores[i], costs[i]
            if hull:
                b = hull[-1]
                if q <= scores[b]:
                    continue  # costs at least as much and is not better: never chosen
                if c == costs[b]:
                    hull.pop()  # as cheap and better: b is never chosen at a knob above 0
                while len(hull) >= 2:  # drop the last point if it lies on or under the segment to this one
                    a, b = hull[-2], hull[-1]
                    if (scores[b] - scores[a]) * (c - costs[b]) <= (q - scores[b]) * (costs[b] - costs[a]):
                        hull.pop()
                    else:
                        break
            hull.append(i)
        share = 1.0 / CURVE_POINTS
        shares = [0.0] * len(costs)
        shares[order[0]] = share  # knob 0: the cheapest (the first of equals, as choose's argmax)
        best = hull[-1]
        cheapest, dearest = costs[order[0]], costs[order[-1]]
        inner = CURVE_POINTS - 2
        if cheapest <= 0:  # the grid starts at the cheapest *positive* cost
            cheapest = min((c for c in map(costs.__getitem__, order) if c > 0), default=0.0)
        if dearest <= 0 or len(hull) == 1:
            shares[best] += (inner + 1) * share
            return shares
        low = 0.1 * cheapest
        step = math.log(1e5 * dearest / cheapest) / (inner - 1)  # the log of the grid's ratio
        log, floor = math.log, math.floor
        below = 0  # knobs of the geometric range at or under the current breakpoint
        for a, b in zip(hull, hull[1:], strict=False):
            knob = (costs[b] - costs[a]) / (scores[b] - scores[a])
            upto = min(inner, max(0, floor(log(knob / low) / step) + 1)) if knob > 0 else 0
            if upto > below:
                shares[a] += (upto - below) * share
                below = upto
        shares[best] += (inner - below + 1) * share  # and knob infinity
        return shares

    def _explore_weights(self, utility: Sequence[float], costs: Sequence[float], greedy: int) -> list[float]:
        """The explored part's distribution over models for ``epsilon`` and ``softmax`` (unnormalised)."""
        if self._softmax:
            return self._weights(utility, costs, greedy)
        weights = [0.0] * len(costs)
        for i in self.eligible(costs, greedy):
            weights[i] = 1.0
        return weights

    def probabilities(self, utility: Sequence[float], costs: Sequence[float], greedy: int,
                      scores: Sequence[float] | None = None) -> list[float]:
        """The probability of every model on this prompt (what :meth:`draw` samples from); ``scores``
        (the predicted qualities) are needed by ``curve`` only."""
        rate = self._rate
        if self._curve:
            eligible, shares = self._curve_parts(costs, greedy, scores)
            probs = [rate * (1.0 - self._uniform_share) * share for share in shares]
            uniform = rate * self._uniform_share / len(eligible)
            for i in eligible:
                probs[i] += uniform
            probs[greedy] += 1.0 - rate
            return probs
        weights = self._explore_weights(utility, costs, greedy)
        total = sum(weights)
        probs = [rate * w / total for w in weights]
        probs[greedy] += 1.0 - rate
        return probs

    def _curve_parts(self, costs: Sequence[float], greedy: int,
                     scores: Sequence[float] | None) -> tuple[list[int], list[float]]:
        if scores is None:
            raise ValueError("curve exploration needs the router's predicted qualities (scores)")
        eligible = self.eligible(costs, greedy)
        return eligible, self.curve_shares(scores, costs, greedy, eligible)

    def draw(self, utility: Sequence[float], costs: Sequence[float], greedy: int,
             scores: Sequence[float] | None = None) -> tuple[int, float]:
        """``(chosen index, its propensity)`` for one prompt; ``utility`` is the policy's per model,
        ``scores`` its predicted qualities (needed by ``curve`` only)."""
        u, rate = self._random(), self._rate
        if not self._softmax and not self._curve:
            if self._cap == math.inf:  # eligible = allowed, plus the greedy model: counted without a loop
                k = self._n_allowed + (not self._allowed[greedy])
                if u >= rate:
                    return greedy, 1.0 - rate + rate / k
                eligible = self.eligible(costs, greedy)
            else:
                eligible = self.eligible(costs, greedy)
                k = len(eligible)
                if u >= rate:
                    return greedy, 1.0 - rate + rate / k
            chosen = eligible[min(int(u / rate * k), k - 1)]
            return chosen, (1.0 - rate + rate / k) if chosen == greedy else rate / k
        if self._curve:
            return self._draw_curve(u, costs, greedy, scores)
        weights = self._explore_weights(utility, costs, greedy)
        total = sum(weights)
        if u >= rate:
            return greedy, 1.0 - rate + rate * weights[greedy] / total
        target, acc, chosen = u / rate * total, 0.0, greedy  # inverse CDF of the explored part
        for i, w in enumerate(weights):
            if w > 0:
                acc += w
                chosen = i
                if target < acc:
                    break  # else rounding left target a hair past the total: the last eligible model
        p = rate * weights[chosen] / total
        return chosen, p + (1.0 - rate) if chosen == greedy else p

    def _draw_curve(self, u: float, costs: Sequence[float], greedy: int,
                    scores: Sequence[float] | None) -> tuple[int, float]:
        """:meth:`draw` for ``curve``: ``u < rate`` explores, the uniform part first (``u / rate`` below
        ``uniform_share``), then the knob grid by the inverse CDF of the shares; the propensity is
        :meth:`probabilities`' for the chosen model."""
        rate, share = self._rate, self._uniform_share
        eligible, shares = self._curve_parts(costs, greedy, scores)
        k = len(eligible)
        chosen = greedy
        if u < rate:
            target = u / rate
            if target < share:
                chosen = eligible[min(int(target / share * k), k - 1)]
            else:
                target, acc = (target - share) / (1.0 - share), 0.0
                for i, w in enumerate(shares):
                    if w > 0:
                        acc += w
                        chosen = i
                        if target < acc:
                            break  # else rounding left target a hair past 1: the last model with a share
        p = rate * (share / k + (1.0 - share) * shares[chosen])  # every chosen model is eligible
        return chosen, p + (1.0 - rate) if chosen == greedy else p
