"""Cost matrices for training and evaluation, and the runtime's cost estimate.

*Observed* cost (what a call cost) scores the router; the *estimate* (what the runtime can know
before the call) drives its decisions. Rules, in order:

1. a cell with a logged cost (or tokens priced by the catalog at load time) keeps it;
2. a missing cost is imputed with that model's mean observed cost in the training split;
3. a model with no cost anywhere is priced by the catalog when given (estimated input tokens,
   mean output tokens); otherwise, for exactly two models and no costs at all (RouteLLM's data),
   the weaker model costs 0 and the stronger 1 USD per call, so the cost axis is the share of
   calls to the strong model - RouteLLM's own axis. Anything else is an error asking for prices.

The estimate is a :class:`router_ml.policy.CostModel`: with a catalog, input tokens
(``ceil(chars/4)``) at the input price plus the model's mean output tokens at the output price;
without one, a per-model least-squares line ``a + b * input_tokens`` (``a, b >= 0``) fitted to the
observed training costs.
"""

from __future__ import annotations

import logging

import numpy as np

from router_ml import metrics
from router_ml.errors import DataError
from router_ml.policy import CostModel, estimate_input_tokens
from router_ml.pricing import PriceCatalog
from training.data.table import TrafficTable

__all__ = ["column_means", "fit_cost_model", "observed_costs"]

_BLOCK = 1 << 16
log = logging.getLogger("router_ml.train")


def column_means(matrix: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``np.nanmean(matrix[rows], axis=0)`` a block of rows at a time: the same means without the two
    full-size temporaries (the row copy, then nanmean's own) that cost 0.7 GB at 10M records x 5
    models. A column with no value is NaN (no warning)."""
    rows = np.arange(len(matrix)) if rows is None else np.asarray(rows, dtype=np.int64)
    sums = np.zeros(matrix.shape[1])
    counts = np.zeros(matrix.shape[1])
    for start in range(0, len(rows), _BLOCK):
        block = matrix[rows[start:start + _BLOCK]]
        seen = ~np.isnan(block)
        sums += np.where(seen, block, 0.0).sum(axis=0)
        counts += seen.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _mean_output_tokens(table: TrafficTable, rows: np.ndarray) -> dict[str, float]:
    tokens = table.output_tokens[np.asarray(rows, dtype=np.int64)]
    out = {}
    for j, m in enumerate(table.models):
        values = tokens[:, j][~np.isnan(tokens[:, j])]
        out[m] = float(values.mean()) if values.size else 0.0
    return out


def observed_costs(table: TrafficTable, train_rows: np.ndarray, prices: PriceCatalog | None = None) -> np.ndarray:
    """``(n, m)`` observed cost for every cell, imputed by the rules of the module doc. Where every
    cell has a cost (full-information data) it is the table's own matrix, read-only, not a copy."""
    known = ~np.isnan(table.cost)
    if known.all():
        shared = table.cost.view()
        shared.flags.writeable = False
        return shared
    cost = table.cost.copy()
    quality = table.quality
    if not known.any():
        if prices is not None and all(m in prices for m in table.models):
            tokens = estimate_input_tokens(table.texts)
            model = CostModel.from_prices(prices, table.models, _mean_output_tokens(table, train_rows))
            return model.estimate(tokens)
        if len(table.models) == 2:
            _, strong = metrics.weak_and_strong(column_means(quality, train_rows))
            cost = np.zeros_like(quality)
            cost[:, strong] = 1.0
            log.warning("no costs in the data: with two models the stronger by mean quality, '%s', costs 1 "
                        "and '%s' 0 per call (RouteLLM's axis: the share of calls to the strong model); give a "
                        "price catalog (--prices) or cost columns for costs in dollars", table.models[strong],
                        table.models[1 - strong])
            return cost
        if prices is not None:
            unpriced = [m for m in table.models if m not in prices]
            raise DataError(f"no costs in the data, and the price catalog has no price for {unpriced}: add "
                            "them to the catalog, or give cost columns")
        raise DataError("no costs in the data: give a price catalog (--prices) or cost columns "
                        f"for the {len(table.models)} models")
    for j, model in enumerate(table.models):
        train_known = cost[train_rows, j][~np.isnan(cost[train_rows, j])]
        if train_known.size == 0:
            train_known = cost[:, j][known[:, j]]
        if train_known.size == 0 and prices is not None and model in prices:  # rule 3: the catalog prices it
            priced = CostModel.from_prices(prices, [model], {model: _mean_output_tokens(table, train_rows)[model]})
            cost[:, j] = priced.estimate(estimate_input_tokens(table.texts))[:, 0]
            continue
        if train_known.size == 0:
            raise DataError(f"model '{model}' has outcomes but no cost anywhere; " + (
                f"the price catalog {prices.source} has no price for it{_close(model, prices)}: add it"
                if prices is not None else "give a price catalog (--prices)"))
        cost[~known[:, j], j] = train_known.mean()
    return cost


def _close(model: str, prices: PriceCatalog) -> str:
    import difflib

    near = difflib.get_close_matches(model, list(prices), n=1) or [m for m in prices if m.lower() == model.lower()]
    return f" (it prices {near[0]!r}: the same model under another name?)" if near else ""


def fit_cost_model(table: TrafficTable, cost: np.ndarray, train_rows: np.ndarray,
                   prices: PriceCatalog | None = None) -> CostModel:
    """The runtime's cost estimate, fitted on the training split (rules in the module doc)."""
    if prices is not None and all(m in prices for m in table.models):
        return CostModel.from_prices(prices, table.models, _mean_output_tokens(table, train_rows))
    # every text once, in order (a spilled text column reads in blocks), then the rows: no list of strings
    tokens = estimate_input_tokens(table.texts)[np.asarray(train_rows, dtype=np.int64)]
    fixed, per_token = [], []
    design = np.stack([np.ones_like(tokens), tokens], axis=1)
    for j in range(len(table.models)):
        y = cost[train_rows, j]
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        if b < 0 or a < 0:
            a, b = float(y.mean()), 0.0
        fixed.append(float(a))
        per_token.append(float(b))
    return CostModel(tuple(table.models), tuple(fixed), tuple(per_token))
