"""The in-memory training table: validated records plus the matrices training needs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from training.data.schema import Record

__all__ = ["TrafficTable"]


class TrafficTable(Sequence[Record]):
    """An ordered collection of :class:`Record` with per-model outcome matrices.

    ``models`` lists every model with an outcome or a preference, in order of first appearance.
    ``quality`` and ``cost`` are ``(n_records, n_models)`` float arrays with NaN where a record
    has no outcome (or no known cost) for a model - the mask that lets logged traffic, with one
    model per prompt, train a router beside offline evaluations that have every model.
    ``propensity`` is the same shape: the logging policy's probability of each logged choice,
    NaN where no propensity was logged.
    """

    def __init__(self, records: Sequence[Record], *, models: Sequence[str] | None = None):
        self.records = list(records)
        if models is None:
            seen: dict[str, None] = {}
            for record in self.records:
                seen.update(dict.fromkeys(record.outcomes))
                for pref in record.preferences:
                    seen.update(dict.fromkeys((pref.model_a, pref.model_b)))
            models = list(seen)
        self.models: tuple[str, ...] = tuple(models)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return TrafficTable(self.records[index], models=self.models)
        return self.records[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TrafficTable) and self.models == other.models
                and self.records == other.records)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TrafficTable:
        """The records at ``indices``, keeping the full model list (and its column order)."""
        return TrafficTable([self.records[int(i)] for i in indices], models=self.models)

    @cached_property
    def texts(self) -> list[str]:
        """The routed text of each record."""
        return [r.text for r in self.records]

    def _matrix(self, attr: str) -> np.ndarray:
        col = {m: j for j, m in enumerate(self.models)}
        out = np.full((len(self.records), len(self.models)), np.nan)
        for i, record in enumerate(self.records):
            for model, outcome in record.outcomes.items():
                value = getattr(outcome, attr)
                if value is not None and model in col:
                    out[i, col[model]] = value
        return out

    @cached_property
    def quality(self) -> np.ndarray:
        """``(n_records, n_models)`` quality in [0, 1]; NaN = no outcome."""
        return self._matrix("quality")

    @cached_property
    def cost(self) -> np.ndarray:
        """``(n_records, n_models)`` cost in USD; NaN = no outcome or cost unknown."""
        return self._matrix("cost")

    @cached_property
    def propensity(self) -> np.ndarray:
        """``(n_records, n_models)`` propensity in (0, 1]; NaN = no outcome or not logged."""
        return self._matrix("propensity")

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of every record, in order: the data's identity."""
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(json.dumps(record.to_dict(), sort_keys=True, ensure_ascii=True).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Counts and per-model coverage, mean quality, mean cost, propensity coverage (the share of
        the model's outcomes that carry a propensity) and min propensity (``None`` when unknown)."""
        n = len(self.records)
        has = ~np.isnan(self.quality)
        with np.errstate(invalid="ignore"):
            coverage = has.sum(axis=0) / n if n else np.zeros(len(self.models))
        mean_quality, mean_cost, p_coverage, p_min = {}, {}, {}, {}
        for j, model in enumerate(self.models):
            q = self.quality[:, j][has[:, j]]
            c = self.cost[:, j][~np.isnan(self.cost[:, j])]
            p = self.propensity[:, j][~np.isnan(self.propensity[:, j])]
            mean_quality[model] = float(q.mean()) if q.size else None
            mean_cost[model] = float(c.mean()) if c.size else None
            p_coverage[model] = p.size / q.size if q.size else 0.0
            p_min[model] = float(p.min()) if p.size else None
        tasks: dict[str, int] = {}
        for record in self.records:
            if record.task is not None:
                tasks[record.task] = tasks.get(record.task, 0) + 1
        return {
            "records": n,
            "models": list(self.models),
            "coverage": {m: float(coverage[j]) for j, m in enumerate(self.models)},
            "mean_quality": mean_quality,
            "mean_cost": mean_cost,
            "propensity_coverage": p_coverage,
            "min_propensity": p_min,
            "outcomes": int(has.sum()),
            "preferences": sum(len(r.preferences) for r in self.records),
            "chat_records": sum(r.messages is not None for r in self.records),
            "tasks": len(tasks),
            "fingerprint": self.fingerprint(),
        }
