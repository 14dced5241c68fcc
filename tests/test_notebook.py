"""The comparison notebook runs top to bottom (it trains on the demo data, so it cannot rot)."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "compare_routers.ipynb"


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


@pytest.mark.slow
def test_compare_routers_notebook_executes(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    out = _stdout(nb)
    for variant in ("mlp_static", "mlp_static_no_tradeoff", "mf"):
        assert f"{variant} " in out
    assert "sorted by aiq" in out and "logged to MLflow run" in out
    assert out.count("expected cost") == 8  # 4 prompts x 2 knob values, each routed to a named model
    models = {"tiny-1b", "small-8b", "code-34b", "large-70b", "frontier-xl"}
    routed = [line.split()[0] for line in out.splitlines() if "expected cost" in line]
    assert set(routed) <= models
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the comparison figure is displayed"
    assert (ROOT / "results" / "notebook" / "comparison.png").stat().st_size > 10_000
