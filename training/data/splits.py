"""Deterministic, grouped train/validation/test splits.

Records are grouped by normalised prompt (:func:`normalize_prompt`), so an identical prompt
never lands in two splits. Groups are ordered by ``sha256(f"{seed}:{key}")`` - an order that
depends only on the seed and the prompts, not on the order of the file or the platform - and
filled into train until it holds ``train_size`` records (a count, or a fraction of all records).
``val_size`` (a count or a fraction of the train part) is then carved out of train the same way,
so ``train + val`` together are the labelled budget and the test split is everything else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from router_ml.errors import DataError
from training.data.loader import normalize_prompt
from training.data.table import TrafficTable

__all__ = ["Split", "resolve_size", "split_table"]


@dataclass(frozen=True)
class Split:
    """Record indices of each split, each sorted ascending."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def resolve_size(size: float | int, total: int, what: str) -> int:
    """A record count from ``size``: a whole count, or a fraction (below 1) of ``total``; errors name ``what``."""
    if isinstance(size, bool) or size < 0:
        raise DataError(f"{what} must be a count >= 0 or a fraction in (0, 1), got {size!r}")
    if isinstance(size, float) and size < 1:
        return int(round(size * total))
    if isinstance(size, float) and not size.is_integer():
        raise DataError(f"{what} must be a whole count or a fraction below 1, got {size!r}")
    if int(size) > total:
        raise DataError(f"{what}={int(size)} is more than the {total} records available")
    return int(size)


def _ordered_groups(keys: list[str], seed: int) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    order = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).digest())
    return [groups[k] for k in order]


def _take(groups: list[list[int]], n: int) -> tuple[list[int], list[list[int]]]:
    taken: list[int] = []
    rest: list[list[int]] = []
    for group in groups:
        if len(taken) < n:
            taken.extend(group)
        else:
            rest.append(group)
    return taken, rest


def split_table(table: TrafficTable, *, train_size: float | int, val_size: float | int = 0.1,
                seed: int = 0) -> Split:
    """Split ``table`` into train/validation/test indices (rules in the module doc).

    >>> split = split_table(table, train_size=1500, seed=0)  # doctest: +SKIP
    >>> len(split.train) + len(split.val)                    # doctest: +SKIP
    1500
    """
    keys = [normalize_prompt(t) for t in table.texts]
    n_train = resolve_size(train_size, len(keys), "train_size")
    labelled, rest = _take(_ordered_groups(keys, seed), n_train)
    n_val = resolve_size(val_size, len(labelled), "val_size")
    sub_keys = [keys[i] for i in labelled]
    val_local, _ = _take(_ordered_groups(sub_keys, seed + 1), n_val)
    val = np.array(sorted(labelled[i] for i in val_local), dtype=np.int64)
    train = np.setdiff1d(np.array(labelled, dtype=np.int64), val)
    test = np.array(sorted(i for g in rest for i in g), dtype=np.int64)
    return Split(train=train, val=val, test=test)
