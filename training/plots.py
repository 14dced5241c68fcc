"""The cost-quality plot: router curves, single models and their hull, random and oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_cost_quality"]


def plot_cost_quality(path: str | Path, *, curves: dict[str, dict[str, Any]], singles: dict[str, dict[str, float]],
                      title: str = "cost-quality", log_x: bool = True) -> Path:
    """Write a PNG: each ``curves[name] = {"cost": [...], "quality": [...]}`` as a line, each single
    model as a labelled point with their non-decreasing convex hull dashed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from router_ml.metrics import quality_hull

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    try:
        for name, curve in curves.items():
            c, q = np.asarray(curve["cost"], dtype=float), np.asarray(curve["quality"], dtype=float)
            order = np.argsort(c, kind="stable")
            style = {"oracle": dict(color="black", ls=":"), "random": dict(color="grey", ls="--"),
                     "router only": dict(color="black", ls="-.")}.get(name, {})
            ax.plot(c[order], q[order], marker=".", ms=3, lw=1.5, label=name, **style)
        sc = np.array([v["cost"] for v in singles.values()], dtype=float)
        sq = np.array([v["quality"] for v in singles.values()], dtype=float)
        if len(singles):  # runs logged before the single models were saved with the curve have none
            ax.scatter(sc, sq, s=18, color="tab:red", zorder=3, label="single models")
            for name, c, q in zip(singles, sc, sq, strict=True):
                ax.annotate(name, (c, q), fontsize=6, xytext=(3, -3), textcoords="offset points")
            hc, hq = quality_hull(sc, sq)
            ax.plot(hc, hq, color="tab:red", ls="--", lw=1, label="single-model hull")
        if log_x and np.all(sc > 0):
            ax.set_xscale("log")
        ax.set_xlabel("mean cost per request (USD)")
        ax.set_ylabel("mean quality")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
