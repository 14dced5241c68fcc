"""Turning predicted per-model quality and estimated cost into a choice.

A router predicts ``quality[i, m]``: how well model ``m`` would answer prompt ``i``. The policy
picks, per prompt, the model with the highest utility

    utility[i, m] = quality[i, m] - cost[i, m] / willingness_to_pay

where ``cost`` is the estimated USD cost of the call and ``willingness_to_pay`` (USD per unit of
quality, per request) is the knob: 0 always picks the cheapest model, ``inf`` the best predicted
one, and values between trace the router's cost-quality curve. Ties go to the cheaper model.
Because prices enter only here, one trained router serves every budget and every price change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router_ml._numbers import is_amount


def wtp_to_json(willingness_to_pay: float) -> float | None:
    """A knob value as JSON stores it: ``inf`` (always the best predicted model) becomes ``null``."""
    return None if np.isinf(willingness_to_pay) else float(willingness_to_pay)


def wtp_from_json(value: float | None) -> float:
    """The inverse of :func:`wtp_to_json`: ``null`` is ``inf``."""
    return float("inf") if value is None else float(value)

__all__ = ["CostModel", "choose", "choose_each", "estimate_input_tokens", "knob_grid", "wtp_from_json", "wtp_to_json"]


def estimate_input_tokens(texts: Sequence[str]) -> np.ndarray:
    """Estimated provider input tokens per text: ``ceil(len(text) / 4)``, the usual rule of thumb."""
    return np.fromiter(((len(t) + 3) // 4 for t in texts), dtype=np.float64, count=len(texts))


@dataclass(frozen=True)
class CostModel:
    """Expected USD cost of calling each model on a prompt, known before the call.

    ``cost[i, m] = fixed_usd[m] + input_tokens[i] * per_input_token_usd[m]``. Built from a price
    catalog and the expected output tokens per model (:meth:`from_prices`), or from the mean
    logged cost per model when no catalog is given. ``knob_grid`` is the willingness-to-pay grid
    (USD per unit of quality, :func:`knob_grid`) the router was scored on when it was trained, saved
    with it so that every later evaluation sweeps the same knob values (empty when unknown).
    """

    models: tuple[str, ...]
    fixed_usd: tuple[float, ...]
    per_input_token_usd: tuple[float, ...]
    knob_grid: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("fixed_usd", "per_input_token_usd"):
            values = getattr(self, name)
            if len(values) != len(self.models):
                raise ValueError(f"cost model: {len(values)} {name} values for {len(self.models)} models")
            for model, value in zip(self.models, values, strict=True):
                if not is_amount(value):
                    raise ValueError(f"cost model: model {model!r}: {name} must be a finite number >= 0 USD, "
                                     f"got {value!r}")

    @classmethod
    def from_prices(cls, prices, models: Sequence[str], expected_output_tokens: dict[str, float]) -> CostModel:
        """Price each call with the catalog: input tokens at the input price, expected output tokens
        at the output price (``prices`` is a :class:`router_ml.PriceCatalog`)."""
        for m in models:
            tokens = expected_output_tokens.get(m) if isinstance(expected_output_tokens, Mapping) else None
            if not is_amount(tokens):
                raise ValueError(f"expected output tokens of model {m!r} must be a finite number >= 0, got "
                                 f"{tokens!r}" + ("" if isinstance(expected_output_tokens, Mapping)
                                                  else " (expected_output_tokens must map model -> tokens)"))
        fixed = tuple(prices[m].output_per_mtok * expected_output_tokens[m] / 1e6 for m in models)
        per_in = tuple(prices[m].input_per_mtok / 1e6 for m in models)
        return cls(tuple(models), fixed, per_in)

    def estimate(self, input_tokens: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
        """``(n, m)`` expected cost in USD for prompts with the given input token counts (``dtype``
        float32 halves the matrix where that is all a consumer reads, as training's loss does)."""
        tokens = np.asarray(input_tokens, dtype=dtype).reshape(-1, 1)
        fixed = np.asarray(self.fixed_usd, dtype=dtype)[None, :]
        return fixed + tokens * np.asarray(self.per_input_token_usd, dtype=dtype)[None, :]

    def to_dict(self) -> dict:
        out = {"models": list(self.models), "fixed_usd": list(self.fixed_usd),
               "per_input_token_usd": list(self.per_input_token_usd)}
        if self.knob_grid:
            out["knob_grid"] = [wtp_to_json(w) for w in self.knob_grid]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CostModel:
        return cls(tuple(data["models"]), tuple(map(float, data["fixed_usd"])),
                   tuple(map(float, data["per_input_token_usd"])),
                   tuple(wtp_from_json(w) for w in data.get("knob_grid") or ()))


def choose(quality: np.ndarray, cost: np.ndarray, willingness_to_pay: float) -> np.ndarray:
    """Index of the chosen model per row: argmax of ``quality - cost / willingness_to_pay``.

    >>> choose(np.array([[0.5, 0.9]]), np.array([[1.0, 10.0]]), willingness_to_pay=5.0).tolist()
    [0]
    """
    _check_wtp(willingness_to_pay)
    terms = _utility_terms(quality, cost)
    for name, values in zip(("quality", "cost"), terms[:2], strict=False):
        if np.isnan(values).any():  # argmax takes a NaN for the best
            row, model = np.argwhere(np.isnan(values))[0].tolist() if values.ndim == 2 else (None, None)
            raise ValueError(f"choose: {name} is NaN" + (f" (row {row}, model {model})" if row is not None else "")
                             + "; every model needs a score and a cost")
    return _pick(*terms, willingness_to_pay)


def choose_each(quality: np.ndarray, cost: np.ndarray, willingness_to_pay: Sequence[float],
                dtype: Any = np.int64) -> np.ndarray:
    """``(k, n)``: :func:`choose` at each of ``k`` knob values, the same choices, with the conversions and
    the tie-break term computed once for all of them (a sweep of 81 values over 7,000 prompts x 29
    models is 81 calls' worth of them otherwise)."""
    wtps = [float(w) for w in willingness_to_pay]
    for w in wtps:
        _check_wtp(w)
    terms = _utility_terms(quality, cost)
    out = np.empty((len(wtps), terms[0].shape[0]), dtype=dtype)
    buffer = np.empty_like(terms[1])  # one utility matrix for every knob: a fresh one each time was 5x slower
    for r, w in enumerate(wtps):
        out[r] = _pick(*terms, w, buffer)
    return out


def _check_wtp(willingness_to_pay: float) -> None:
    if willingness_to_pay < 0 or np.isnan(willingness_to_pay):
        raise ValueError(f"willingness_to_pay must be >= 0 USD per unit of quality, got {willingness_to_pay}")


def _utility_terms(quality: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(quality, cost, tie)`` as float64, ``tie`` breaking exact ties toward the cheaper model."""
    quality = np.asarray(quality, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    scale = float(np.nanmax(cost)) if cost.size and np.nanmax(cost) > 0 else 1.0
    return quality, cost, cost / scale * 1e-9


def _pick(quality: np.ndarray, cost: np.ndarray, tie: np.ndarray, willingness_to_pay: float,
          out: np.ndarray | None = None) -> np.ndarray:
    """The argmax of ``quality - cost / willingness_to_pay - tie`` per row, computed in ``out`` when given."""
    if willingness_to_pay == 0:
        utility = np.negative(cost, out=out)
    elif np.isinf(willingness_to_pay):
        utility = np.subtract(quality, tie, out=out)
    else:
        utility = np.divide(cost, willingness_to_pay, out=out)
        np.subtract(quality, utility, out=utility)
        np.subtract(utility, tie, out=utility)
    return np.argmax(utility, axis=1)


def knob_grid(mean_costs: Sequence[float], points: int = 81) -> np.ndarray:
    """Willingness-to-pay values that sweep a router from cheapest to best: 0, a geometric range
    from a tenth of the cheapest model's cost to 10^4 x the dearest one's, and ``inf``."""
    costs = np.asarray([c for c in mean_costs if c > 0], dtype=np.float64)
    if costs.size == 0 or points < 3:
        return np.array([0.0, np.inf])
    inner = np.geomspace(costs.min() * 0.1, costs.max() * 1e4, points - 2)
    return np.concatenate([[0.0], inner, [np.inf]])
