"""Grid sweeps: every combination of ``--set key=v1,v2,...`` values x every seed, as MLflow child
runs under one parent run, summarised per setting (mean, standard deviation, 95% t-interval over
seeds of the headline metrics).

A t-interval over a few seeds is wide, and a metric bounded by its definition is never outside its range:
the intervals of AIQ, best quality and the CPTs are clipped to [0, 1] (qualities are in [0, 1], a CPT is
a share of calls) and that of savings at iso-quality to >= 0 (a cost ratio; above 1 is possible); a clipped
interval says ``"clipped": true``. APGR is not clipped: below 0 and above 1 are both possible.

Each child run is named ``<kind>-<featurizer> <key>=<value> ... seed=<k>`` (the swept keys' values) and
tagged ``router_ml.sweep.setting`` (``router.hidden=64``, or ``default`` when nothing is swept) and
``router_ml.sweep.seed``, so the runs of a setting are told apart in MLflow and in ``router-ml compare``.

A comma separates the values to sweep for a scalar key (``router.hidden=256,512``); a key whose
value is a list (``eval.baselines``) is never swept - its comma-separated value is the list. Each
run is a full ``train_router`` call (own split per seed, own export) writing to
``<out>/<setting>/seed<k>``; the feature cache makes repeated featurization free.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router_ml import metrics
from router_ml.errors import RouterMLError
from training.config import load_config, parse_override
from training.data.loader import check_out_directory

__all__ = ["MAX_RUNS", "SUMMARY_KEYS", "parse_grid", "parse_seeds", "run_sweep", "seeds_arg"]

log = logging.getLogger("router_ml.sweep")
SUMMARY_KEYS = metrics.HEADLINE_KEYS


MAX_RUNS = 10_000
"""The most trainings one sweep runs (settings x seeds): past it the grid is a typo, not a plan."""


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` -> [0, 3, 7]; at most :data:`MAX_RUNS` seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if re.fullmatch(r"\d+-\d+", part):
                a, b = map(int, part.split("-"))
                if b < a:
                    raise ValueError
                if len(seeds) + b - a + 1 > MAX_RUNS:  # counted before the range is built
                    raise RouterMLError(f"--seeds {text!r}: more than {MAX_RUNS:,} seeds; a sweep runs one "
                                        "training per seed and setting - give fewer")
                seeds.extend(range(a, b + 1))
            elif re.fullmatch(r"\d+", part):
                seeds.append(int(part))
            else:
                raise ValueError
    except ValueError:
        raise RouterMLError(f"--seeds {text!r}: expected a range like 0-4 or a list like 0,3,7 "
                            "(whole numbers >= 0)") from None
    if len(seeds) > MAX_RUNS:
        raise RouterMLError(f"--seeds {text!r}: more than {MAX_RUNS:,} seeds; a sweep runs one training per "
                            "seed and setting - give fewer")
    if len(set(seeds)) != len(seeds):
        raise RouterMLError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def seeds_arg(text: str) -> list[int]:
    """:func:`parse_seeds` as an argparse ``type``, for the scripts' ``--seeds`` (a bad list: exit 2, no traceback)."""
    try:
        return parse_seeds(text)
    except RouterMLError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_grid(config_path: str | Path | None, sets: Sequence[str]) -> list[dict[str, str]]:
    """The settings to run: the cartesian product of the swept values, in the order given."""
    defaults = load_config(config_path).to_flat()
    axes: list[tuple[str, list[str]]] = []
    for text in sets:
        key, value = parse_override(text)
        if key not in defaults:
            raise RouterMLError(f"--set: unknown key '{key}'; valid keys: {', '.join(sorted(defaults))}")
        if key in ("data.seed",):
            raise RouterMLError("sweep seeds with --seeds, not --set data.seed")
        if key.startswith("tracking.") and "," in str(value):  # one sweep, one parent run: logged in one place
            raise RouterMLError(f"--set {text!r}: the tracking settings are the sweep's own; give one value")
        values = [value] if isinstance(defaults[key], list) else [v.strip() for v in value.split(",")]
        if any(v == "" for v in values) or len(set(values)) != len(values):
            raise RouterMLError(f"--set {text!r}: empty or repeated value")
        axes.append((key, values))
    if len({k for k, _ in axes}) != len(axes):
        raise RouterMLError("--set: a key is given twice")
    if math.prod(len(v) for _, v in axes) > MAX_RUNS:  # counted before the product is built
        raise RouterMLError(f"--set: {' x '.join(str(len(v)) for _, v in axes)} = "
                            f"{math.prod(len(v) for _, v in axes):,} settings, more than {MAX_RUNS:,}; "
                            "sweep fewer values, or split the grid into several sweeps")
    grid = [dict(zip([k for k, _ in axes], combo, strict=True)) for combo in itertools.product(*[v for _, v in axes])]
    for setting in grid:  # fail before the first run, not in the middle of the sweep
        load_config(config_path, setting)
    return grid


def _slug(setting: dict[str, str], swept: set[str]) -> str:
    """A directory-safe name from the swept keys' values (fixed ``--set`` values are left out)."""
    text = ",".join(f"{k.split('.')[-1]}={v}" for k, v in setting.items() if k in swept) or "default"
    return re.sub(r"[^A-Za-z0-9=,._-]+", "_", text)[:120]


#: the range each bounded metric's interval is clipped to (None: unbounded on that side); see the module docstring
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "aiq": (0.0, 1.0), "best_quality": (0.0, 1.0), "cpt_50": (0.0, 1.0), "cpt_80": (0.0, 1.0),
    "savings_at_iso_quality": (0.0, None),
}


def _interval(values: list[float], key: str | None = None) -> dict[str, Any]:
    n = len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if n > 1 else 0.0
    out: dict[str, Any] = {"mean": mean, "std": std, "n": n, "ci95": None}
    if n > 1:
        from scipy.stats import t

        half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
        lo, hi = BOUNDS.get(key or "", (None, None))
        clipped = [low if lo is None else max(low, lo), high if hi is None else min(high, hi)]
        out["ci95"] = clipped
        if clipped != [low, high]:
            out["clipped"] = True
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean, standard deviation and 95% t-interval over seeds for each headline metric (and the
    baselines' AIQ/best quality), from ``train_router`` summaries of one setting."""
    out: dict[str, Any] = {}
    for key in SUMMARY_KEYS:
        values = [r["test"][key] for r in runs if r["test"].get(key) is not None]
        if values:
            out[key] = _interval(values, key)
            if len(values) < len(runs):
                out[key]["reached_in"] = f"{len(values)}/{len(runs)} seeds"
    baselines = {}
    for name in runs[0]["test"].get("baselines", {}):
        for key in ("aiq", "best_quality", "apgr"):
            values = [r["test"]["baselines"][name].get(key) for r in runs]
            if all(v is not None for v in values):
                baselines.setdefault(name, {})[key] = _interval(values, key)
    out["baselines"] = baselines
    out["fit_seconds"] = statistics.fmean(r["fit_seconds"] for r in runs)
    return out


def run_sweep(config_path: str | Path | None, data: str | Path, *, sets: Sequence[str], seeds: Sequence[int],
              out_dir: str | Path, train_size: str | None = None, prices: str | Path | None = None,
              cache_dir: str | Path | None = None, progress: bool = False, tracking_uri: str | None = None,
              **load_options: Any) -> dict[str, Any]:
    """Run the grid x seeds; returns ``{"parent_run_id", "settings": [{"setting", "runs", "summary"}]}``."""
    from training.pipeline import train_router
    from training.tracking import Tracker, child_run_labels

    out_dir = Path(out_dir)
    check_out_directory(out_dir, "the runs' routers and sweep_summary.json")  # not after the parent run started
    grid = parse_grid(config_path, sets)
    swept = {k for k in (grid[0] if grid else {}) if len({g[k] for g in grid}) > 1}
    if not seeds:
        raise RouterMLError("--seeds: give at least one seed")
    if len(grid) * len(seeds) > MAX_RUNS:
        raise RouterMLError(f"{len(grid):,} settings x {len(seeds):,} seeds = {len(grid) * len(seeds):,} runs, "
                            f"more than {MAX_RUNS:,}; sweep fewer values or seeds, or split the sweep")
    base = load_config(config_path, grid[0] if grid else {})  # the fixed --set values (tracking's) hold for it too
    started = time.perf_counter()
    parent = Tracker(experiment=base.tracking.experiment, enabled=base.tracking.enabled, tracking_uri=tracking_uri,
                     run_name=f"sweep-{base.router.kind}-{base.featurizer.name}")
    settings_out = []
    with parent:
        parent.set_tags({"router_ml.sweep": "true"})
        parent.log_params({"sweep.config": str(config_path), "sweep.data": str(data),
                           "sweep.grid": json.dumps(sets), "sweep.seeds": ",".join(map(str, seeds)),
                           "sweep.runs": len(grid) * len(seeds)})
        for index, setting in enumerate(grid):
            slug = _slug(setting, swept)
            runs = []
            for seed in seeds:
                overrides = {**setting, "data.seed": seed}
                if train_size is not None:
                    overrides["data.train_size"] = train_size
                config = load_config(config_path, overrides)
                log.info("sweep: %s seed %d", slug, seed)
                label = " ".join(f"{k}={v}" for k, v in setting.items() if k in swept) or "default"
                try:
                    with child_run_labels(f"{label if swept else ''} seed={seed}".strip(),
                                          {"router_ml.sweep.setting": label, "router_ml.sweep.seed": seed}):
                        summary = train_router(config, data, out_dir=out_dir / slug / f"seed{seed}", prices=prices,
                                               cache_dir=cache_dir, progress=progress, tracking_uri=tracking_uri,
                                               parent_run_id=parent.run_id, **load_options)
                except RouterMLError as exc:  # a setting this data cannot take: keep what the others found
                    partial = {"parent_run_id": parent.run_id, "runs": len(grid) * len(seeds), "out": str(out_dir),
                               "settings": settings_out, "failed": {"setting": setting, "slug": slug, "seed": seed,
                                                                    "error": str(exc)}}
                    out_dir.mkdir(parents=True, exist_ok=True)
                    (out_dir / "sweep_summary.json").write_text(json.dumps(partial, indent=1))
                    raise RouterMLError(f"sweep: setting {slug} seed {seed}: {exc}; the {len(settings_out)} settings "
                                        f"done before it are summarised in {out_dir / 'sweep_summary.json'}") from exc
                runs.append(summary)
            summary = summarise(runs)
            settings_out.append({"setting": setting, "slug": slug,
                                 "run_ids": [r["run_id"] for r in runs], "seeds": list(seeds), "summary": summary})
            # MLflow metric names cannot hold '=' or ','; the setting itself is a parameter
            parent.log_params({f"setting{index}": slug})
            parent.log_metrics({f"setting{index}.{k}_mean": v["mean"] for k, v in summary.items()
                                if isinstance(v, dict) and "mean" in v})
        result = {"parent_run_id": parent.run_id, "tracking_uri": parent.tracking_uri if parent.enabled else None,
                  "tracking_error": parent.error, "runs": len(grid) * len(seeds), "out": str(out_dir),
                  "seconds": round(time.perf_counter() - started, 1), "settings": settings_out}
        parent.log_dict(result, "sweep_summary.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep_summary.json").write_text(json.dumps(result, indent=1))
    return result


def format_summary(result: dict[str, Any]) -> str:
    """One line per setting: mean [95% interval] of AIQ and best quality (plus APGR for two models)."""
    lines = [f"sweep: {result['runs']} runs in {result['seconds']} s; parent MLflow run {result['parent_run_id']}"]
    clipped = False
    for s in result["settings"]:
        parts = []
        for key in ("aiq", "apgr", "savings_at_iso_quality", "best_quality"):
            v = s["summary"].get(key)
            if v:
                ci = "" if v["ci95"] is None else f" [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]" + \
                    ("*" if v.get("clipped") else "")
                clipped = clipped or bool(v.get("clipped"))
                parts.append(f"{key} {v['mean']:.4f}{ci}")
        lines.append(f"  {s['slug']}: " + "; ".join(parts))
    if clipped:
        lines.append("  * a 95% t-interval over the seeds, clipped to the metric's range ([0, 1], savings >= 0); "
                     "more seeds narrow it")
    return "\n".join(lines)
