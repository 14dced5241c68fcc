"""Regenerate the README's cascade results: router, answer scorer and cascade evaluation per seed.

For each seed: ``router-ml train`` the router (``auto.toml``) and the answer scorer
(``scorer_static.toml`` unless ``--scorer-config``) on the same 70/30 split (validation: ``--val-size``
of the training records, 0.2 by default), then ``router-ml cascade
evaluate`` them; finally one table per seed and the ``compare --cascade`` summary over the seeds,
written to ``<out>/cascade_tables.md`` (and printed). Steps whose output exists are skipped, so an
interrupted run resumes.

    python scripts/cascade_results.py --seeds 0-4 --out results/cascade     # ~5 min a seed on 2 cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from router_ml.cli import bounded
from training.sweep import seeds_arg

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mmlu-pro-responses" / "mmlu_pro_responses.parquet"


def _run(*args: str) -> None:
    cmd = [sys.executable, "-m", "router_ml.cli", *args]
    print("+ router-ml " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def val_size(text: str) -> str:
    """``--val-size``, as ``data.val_size`` takes it: 0, a fraction in (0, 1) or a whole count (the text kept)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value == 0 or 0 < value < 1 or (value >= 1 and value.is_integer())):
        raise argparse.ArgumentTypeError(f"expected 0, a fraction in (0, 1) or a whole count, got {text!r}")
    return text


def _fmt(value: float | None, spec: str, ci: list | None = None) -> str:
    text = "-" if value is None else format(value, spec)
    return text if not ci or ci[0] is None else f"{text} [{format(ci[0], spec)}, {format(ci[1], spec)}]"


def seed_row(seed: int, report: dict) -> str:
    """One seed's line: the headline beside the router alone, and the scorer's AUC per model."""
    test, router = report["test"], report["router_only"]
    points = sorted(report["policies"][test["policy"]]["points"], key=lambda p: p["cost"])
    hit = next((p for p in points if p["quality"] >= test["reference_quality"]), None)
    at_iso = "-" if hit is None else f"{hit['calls']:.2f} / {hit['escalated']:.0%} / {hit['scorer_calls']:.2f}"
    auc = " / ".join(_fmt(v, ".3f") for v in report["scorer_auc"].values())
    return (f"| {seed} | {test['policy']} | {_fmt(test['aiq'], '.4f', test['ci95']['aiq'])} "
            f"| {_fmt(router['aiq'], '.4f')} "
            f"| {_fmt(test['savings_at_iso_quality'], '.3f', test['ci95']['savings_at_iso_quality'])} "
            f"| {_fmt(router['savings_at_iso_quality'], '.3f')} | {_fmt(test['best_quality'], '.4f')} "
            f"| {_fmt(router['best_quality'], '.4f')} | {_fmt(test['reference_quality'], '.4f')} | {at_iso} | {auc} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--seeds", type=seeds_arg, default="0-4", help="e.g. 0-4 or 0,2")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--out", default="results/cascade")
    parser.add_argument("--scorer-config", default=str(ROOT / "training/configs/scorer_static.toml"))
    parser.add_argument("--n-boot", type=bounded(int, 0), default=200)
    parser.add_argument("--val-size", type=val_size, default="0.2",
                        help="data.val_size of router and scorer (their one split; the policies are fitted on it; "
                        "default 0.2, as the scorer configs)")
    args = parser.parse_args()
    out = Path(args.out)
    common = ["--data", args.data, "--train-size", "0.7", "--quiet"]
    split = ["--set", f"data.val_size={args.val_size}"]
    lines, dirs = [], []
    for seed in args.seeds:
        base = out / f"seed{seed}"
        if not (base / "router" / "artifact").is_dir():
            _run("train", "--config", str(ROOT / "training/configs/auto.toml"), "--seed", str(seed),
                 "--out", str(base / "router"), *common, *split)
        if not (base / "scorer" / "artifact").is_dir():
            _run("train", "--config", args.scorer_config, "--seed", str(seed), "--out", str(base / "scorer"), *common,
                 *split)
        if not (base / "cascade" / "report.json").is_file():
            _run("cascade", "evaluate", "--router", str(base / "router" / "artifact"), "--scorer",
                 str(base / "scorer" / "artifact"), "--seed", str(seed), "--out", str(base / "cascade"),
                 "--n-boot", str(args.n_boot), *common)
        report = json.loads((base / "cascade" / "report.json").read_text())
        lines.append(seed_row(seed, report))
        dirs.append(str(base / "cascade"))
    models = " / ".join(report["scorer_auc"])
    head = ("| seed | headline | AIQ [95% CI] | router-only AIQ | savings at iso-quality [95% CI] "
            "| router-only savings | best quality | router-only best | reference quality "
            "| at iso-quality: calls / escalated / scorer calls "
            f"| scorer AUC ({models}) |\n|{'---|' * 11}")
    summary = subprocess.run([sys.executable, "-m", "router_ml.cli", "compare", "--sort", "savings_at_iso_quality",
                              *(x for d in dirs for x in ("--cascade", d))], check=True, capture_output=True, text=True)
    text = "\n".join([head, *lines, "", "```", summary.stdout.rstrip(), "```", ""])
    (out / "cascade_tables.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
