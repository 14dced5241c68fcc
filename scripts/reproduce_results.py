"""Reproduce the README's results tables: each protocol x router variant x seed, then mean and spread.

Protocols (:mod:`training.protocols`; data read by path from ../shared/data, never copied):
- routellm: RouteLLM's MMLU responses minus its contaminated prompts, 1,500 training labels
  (train + validation), the other 12,537 prompts as test - RouteLLM's augmented-MMLU setting;
- mmlu-pro: MMLU-Pro outcomes for 29 models, 70% train + validation / 30% test.

Every run is a real ``train_router`` call (logged to the local MLflow store under the experiment
``reproduce``). Prints one JSON object: per protocol, per variant, the mean, standard deviation and
per-seed values of the headline metrics, the mean bootstrap interval, and the baselines.

    python scripts/reproduce_results.py                      # seeds 0-4, every default variant
    python scripts/reproduce_results.py --seeds 0 --variants mlp_static

It also writes ``<out>/results.json`` and ``<out>/tables.md``: the README's two results tables,
rendered from these numbers (with RouteLLM's published rows next to them).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from router_ml.cli import bounded
from router_ml.metrics import HEADLINE_KEYS as KEYS
from training.protocols import protocols, shared_data_dir
from training.sweep import seeds_arg

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = protocols()
VARIANTS = {
    "mlp_static": ("mlp_static.toml", {}),
    "mlp_static_no_tradeoff": ("mlp_static.toml", {"loss.tradeoff_weight": 0.0}),
    "mlp_static_groups": ("mlp_static.toml", {"router.groups": "task"}),
    "mf": ("mf.toml", {}),
    "mlp_minilm": ("mlp_minilm.toml", {}),
    "encoder": ("encoder.toml", {}),
    "encoder_fast": ("encoder_fast.toml", {}),
}
LABELS = {
    "mlp_static": "**mlp_static**", "mlp_static_no_tradeoff": "mlp_static, no tradeoff term",
    "mlp_static_groups": "mlp_static + task groups", "mf": "mf (static)",
    "mlp_minilm": "mlp_minilm", "encoder": "encoder (MiniLM fine-tuned)",
    "encoder_fast": "encoder_fast (3 of 6 MiniLM layers fine-tuned)",
}
# RouteLLM paper, Table 2 ("augmented" routers: Chatbot Arena + ~1,500 golden MMLU labels): APGR, CPT(50%)
ROUTELLM_PUBLISHED = (("random", 0.500, 50.07), ("SW ranking", 0.603, 35.40), ("MF", 0.597, 35.46),
                      ("BERT", 0.572, 41.30), ("causal LLM", 0.600, 35.49))


def _stats(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(present), "std": statistics.pstdev(present) if len(present) > 1 else 0.0}


def _mean_interval(runs: list[dict], key: str) -> list[float | None]:
    """The bootstrap interval of ``key`` averaged over seeds, bound by bound."""
    out: list[float | None] = []
    for bound in (0, 1):
        values = [r["test"]["ci95"][key][bound] for r in runs if (r["test"]["ci95"].get(key) or [None, None])[bound]
                  is not None]
        out.append(statistics.fmean(values) if values else None)
    return out


def _cell(entry: dict, key: str, *, pct: bool = False, interval: bool = True) -> str:
    stats = entry.get(key) or {}
    if stats.get("mean") is None:
        return "-"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    digits = 1 if pct else 3
    text = f"{stats['mean'] * scale:.{digits}f}"
    if "per_seed" in stats:
        text += f" ± {stats['std'] * scale:.{digits}f}{unit}"
        reached = [v for v in stats["per_seed"] if v is not None]
        if len(reached) < len(stats["per_seed"]):
            text += f" ({len(reached)}/{len(stats['per_seed'])} seeds)"
        lo, hi = (entry.get("ci95_mean") or {}).get(key, [None, None])
        if interval and lo is not None and hi is not None:
            text += f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
    else:
        text += unit
    return text


def _rows(block: dict) -> list[tuple[str, dict]]:
    rows = [(LABELS.get(name, name), entry) for name, entry in block.items() if name != "baselines"]
    for name, entry in block.get("baselines", {}).items():
        label = f"{name} (baseline)"
        if name == "best-single":
            label = f"single-model hull (best: {entry.get('best_model')})"
        rows.append((label, entry))
    return rows


def markdown_tables(results: dict) -> str:
    """The README's results tables, rendered from :func:`main`'s results."""
    out = []
    if "routellm" in results:
        out += ["### RouteLLM MMLU (GPT-4 vs Mixtral-8x7B)", "",
                "| router | APGR | CPT(50%) | CPT(80%) | AIQ (strong-share axis) | seconds/run |",
                "|---|---|---|---|---|---|"]
        for label, e in _rows(results["routellm"]):
            secs = f"{e['seconds_per_run']:.0f}" if "seconds_per_run" in e else ""
            out.append(f"| {label} | {_cell(e, 'apgr')} | {_cell(e, 'cpt_50', pct=True)} | "
                       f"{_cell(e, 'cpt_80', pct=True, interval=False)} | {_cell(e, 'aiq', interval=False)} | {secs} |")
        for name, apgr, cpt in ROUTELLM_PUBLISHED:
            out.append(f"| RouteLLM {name} (published) | {apgr:.3f} | {cpt:.2f}% | | | |")
        out.append("")
    if "mmlu-pro" in results:
        out += ["### MMLU-Pro, 29 models", "",
                "| router | AIQ | savings at iso-quality | best quality | seconds/run |", "|---|---|---|---|---|"]
        for label, e in _rows(results["mmlu-pro"]):
            secs = f"{e['seconds_per_run']:.0f}" if "seconds_per_run" in e else ""
            out.append(f"| {label} | {_cell(e, 'aiq')} | {_cell(e, 'savings_at_iso_quality', interval=False)} | "
                       f"{_cell(e, 'best_quality')} | {secs} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--protocols", default="routellm,mmlu-pro")
    parser.add_argument("--variants", default="mlp_static,mlp_static_no_tradeoff,mf,mlp_minilm")
    parser.add_argument("--seeds", type=seeds_arg, default="0-4", help="e.g. 0-4 or 0,2")
    parser.add_argument("--out", default=str(ROOT / "results"), help="router directories and results.json")
    parser.add_argument("--n-boot", type=bounded(int, 0), default=200)
    args = parser.parse_args()
    for flag, given, known in (("--protocols", args.protocols, PROTOCOLS), ("--variants", args.variants, VARIANTS)):
        unknown = [name for name in given.split(",") if name not in known]
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; choose from {', '.join(known)}")
    logging.basicConfig(level=logging.WARNING)
    missing = [p for p in PROTOCOLS.values() if not Path(p["data"]).exists()]
    if missing:
        print(json.dumps({"error": f"routing data not found under {shared_data_dir()}"}))
        return 1
    from training.config import load_config
    from training.pipeline import train_router

    out = Path(args.out)
    run_started = time.perf_counter()
    results: dict = {}
    for protocol in args.protocols.split(","):
        spec = PROTOCOLS[protocol]
        results[protocol] = {}
        for v_index, variant in enumerate(args.variants.split(",")):
            config_file, overrides = VARIANTS[variant]
            runs = []
            for seed in args.seeds:
                config = load_config(ROOT / "training" / "configs" / config_file, {
                    **overrides, "data.seed": seed, "data.train_size": spec["train_size"],
                    "eval.n_boot": args.n_boot, "tracking.experiment": "reproduce",
                    # the baselines depend only on the split: compute them with the first variant
                    **({} if v_index == 0 else {"eval.baselines": "best-single"}),
                })
                started = time.perf_counter()
                summary = train_router(config, spec["data"], out_dir=out / protocol / variant / f"seed{seed}",
                                       exclude=spec["exclude"], progress=False)
                summary["wall_seconds"] = time.perf_counter() - started
                runs.append(summary)
                print(f"{protocol} {variant} seed {seed}: aiq {summary['test']['aiq']:.4f} "
                      f"({summary['wall_seconds']:.0f} s)", file=sys.stderr)
            entry = {k: {**_stats([r["test"].get(k) for r in runs]),
                         "per_seed": [r["test"].get(k) for r in runs]} for k in KEYS}
            entry["ci95_mean"] = {k: _mean_interval(runs, k) for k in KEYS if k in runs[0]["test"].get("ci95", {})}
            entry["seconds_per_run"] = statistics.fmean(r["wall_seconds"] for r in runs)
            entry["fit_seconds"] = statistics.fmean(r["fit_seconds"] for r in runs)
            entry["train_records"], entry["test_records"] = runs[0]["train_records"] + runs[0]["val_records"], \
                runs[0]["test_records"]
            results[protocol][variant] = entry
            if v_index == 0:
                baselines = {}
                for name in runs[0]["test"]["baselines"]:
                    baselines[name] = {k: _stats([r["test"]["baselines"][name].get(k) for r in runs])
                                       for k in KEYS if k in runs[0]["test"]["baselines"][name]}
                    if name == "best-single":
                        baselines[name]["best_model"] = runs[0]["test"]["baselines"][name]["best_model"]
                results[protocol]["baselines"] = baselines
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "tables.md").write_text(markdown_tables(results))
    results["wall_seconds"] = round(time.perf_counter() - run_started, 1)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
