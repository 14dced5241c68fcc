"""scripts/routing_bounds.py: group labels from records and the smoothed per-group means it routes on."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from router_ml.errors import RouterMLError

from .conftest import ROOT

spec = importlib.util.spec_from_file_location("routing_bounds", ROOT / "scripts" / "routing_bounds.py")
bounds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bounds)


def test_group_labels_read_task_or_a_metadata_key():
    records = [SimpleNamespace(task="law", metadata={"src": "s1"}), SimpleNamespace(task=None, metadata=None)]
    assert bounds.group_labels(records, "task").tolist() == ["law", ""]
    assert bounds.group_labels(records, "metadata.src").tolist() == ["s1", ""]
    with pytest.raises(RouterMLError, match="metadata.<key>"):
        bounds.group_labels(records, "src")


def test_group_means_are_smoothed_toward_the_overall_mean_and_skip_missing_outcomes():
    quality = np.array([[1.0, 0.0], [0.0, np.nan], [1.0, 1.0], [0.0, 0.0]])
    groups = np.array(["a", "a", "b", "c"])
    rows = np.array([0, 1, 2])  # row 3 is not among the rows the means come from
    raw = bounds.group_means(quality, groups, rows, smoothing=0.0)
    np.testing.assert_allclose(raw["a"], [0.5, 0.0])
    np.testing.assert_allclose(raw["b"], [1.0, 1.0])
    assert "c" not in raw
    overall = np.array([2 / 3, 0.5])
    np.testing.assert_allclose(raw["__overall__"], overall)
    smooth = bounds.group_means(quality, groups, rows, smoothing=2.0)
    np.testing.assert_allclose(smooth["a"], [(1 + 2 * overall[0]) / 4, (0 + 2 * overall[1]) / 3])
