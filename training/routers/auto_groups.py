"""Group fields for ``router.kind = "auto"``: which task/category fields the ``groups`` candidate and the
group blend try, and the blend itself.

A data set may name each record's group (``task``, or a metadata key such as a benchmark's subject). The
auto router (:mod:`training.routers.auto`) tries each field that names enough groups with enough records
as a hyperparameter of its ``groups`` candidate (the MLP blended with ``p(group | prompt) @`` the group
means, :class:`~training.routers.neural.GroupBlend`) and of the blend stage after the choice; validation
decides whether either is kept.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_GROUP_FIELDS", "MIN_GROUP_RECORDS", "auto_group_fields", "auto_group_labels", "blended",
           "group_columns", "group_fields_to_try", "known_groups"]

#: a group field is tried when at least half the pool names a group and there are this many labelled
#: records per group on average (fewer: the group means are noise and p(group | prompt) unlearnable)
MIN_GROUP_RECORDS = 10
#: at most this many group fields are tried (the first ones of ``router.auto_groups``, expanded)
MAX_GROUP_FIELDS = 8


def known_groups(labels: np.ndarray | None) -> int:
    """How many groups ``labels`` names ('' is no group)."""
    return 0 if labels is None else len(set(np.asarray(labels, dtype=str).tolist()) - {""})


def auto_group_fields(config, table) -> list[str]:
    """The group fields ``router.auto_groups`` names for ``table``, ``metadata.*`` expanded to the table's
    metadata keys (:meth:`~training.data.table.TrafficTable.metadata_keys`), in order, each once."""
    fields: list[str] = []
    for field in config.router.auto_groups:
        expanded = [f"metadata.{k}" for k in table.metadata_keys()] if field == "metadata.*" else [field]
        fields += [f for f in expanded if f not in fields]
    return fields


def auto_group_labels(config, table) -> np.ndarray | None:
    """Every record's group under each field of :func:`auto_group_fields` that names at least 2 groups, as
    a structured array (one str column per field, '' where missing) - what the ``groups`` candidate and
    the group blend train with; None when the router is not ``auto``, ``groups`` is not among its
    candidates, or no field names 2 groups. Which fields are tried is decided on the training pool
    (:func:`group_fields_to_try`)."""
    r = config.router
    if r.kind != "auto" or not r.auto_groups or "groups" not in r.candidates:
        return None
    columns = {}
    for field in auto_group_fields(config, table):
        labels = table.group_values(field)
        if known_groups(labels) >= 2:
            columns[field] = labels
    if not columns:
        return None
    out = np.empty(len(table), dtype=[(f, v.dtype) for f, v in columns.items()])
    for f, v in columns.items():
        out[f] = v
    return out


def group_columns(groups: np.ndarray | None, default: str) -> dict[str, np.ndarray]:
    """``{field: labels}`` of a pool's ``groups``: a structured array's columns, or one plain column."""
    if groups is None:
        return {}
    if groups.dtype.names:
        return {f: np.asarray(groups[f], dtype=str) for f in groups.dtype.names}
    return {default: np.asarray(groups, dtype=str)}


def group_fields_to_try(groups: np.ndarray | None, default: str) -> dict[str, np.ndarray]:
    """The fields of a training pool's ``groups`` worth trying (:data:`MIN_GROUP_RECORDS`, at most
    :data:`MAX_GROUP_FIELDS`), a field that groups the records exactly as an earlier one does left out;
    ``default`` names a plain (unstructured) column."""
    out: dict[str, np.ndarray] = {}
    seen: list[np.ndarray] = []
    for field, labels in group_columns(groups, default).items():
        known = labels != ""
        names, first, partition = np.unique(labels, return_index=True, return_inverse=True)
        count = int(len(names) - ("" in names))
        if count < 2 or known.mean() < 0.5 or known.sum() < MIN_GROUP_RECORDS * count:
            continue
        canonical = np.argsort(np.argsort(first))[partition]  # group ids in order of first appearance
        if any(np.array_equal(canonical, other) for other in seen):
            continue
        seen.append(canonical)
        out[field] = labels
        if len(out) == MAX_GROUP_FIELDS:
            break
    return out


def blended(pred: np.ndarray, mixture: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * pred + weight * mixture`` clamped as :class:`~training.routers.neural.GroupBlend` does."""
    return np.clip((1 - weight) * pred + weight * mixture, 1e-6, 1 - 1e-6)
