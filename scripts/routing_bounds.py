"""How far can knowing a prompt's subject take a router? Group-level routing bounds, per protocol.

A router that is told each test prompt's group (the data's ``task`` - RouteLLM's MMLU subject,
MMLU-Pro's category - or a metadata key such as MMLU-Pro's ``src``) and routes on that group's mean
quality per model is not deployable (the group is not in a live request), but it bounds what
subject-level information is worth:

- ``group_means_train``: per-group means estimated on the training + validation rows (smoothed
  toward the overall mean with weight ``--smoothing``), applied to the test prompts by their true group;
- ``group_means_test``: the same means estimated on the test rows themselves - in-sample, optimistic.

Same splits and metrics as ``router-ml train`` (seeded grouped split, knob sweep, AIQ / savings /
best quality, APGR / CPT on two-model data), seeds averaged. Prints one JSON object.

    python scripts/routing_bounds.py                                  # both protocols, seeds 0-4
    python scripts/routing_bounds.py --protocol mmlu-pro --group metadata.src --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from router_ml.cli import bounded
from router_ml.policy import estimate_input_tokens
from training.config import load_config
from training.evaluation import HeldOut, score_predictions, scoreable_rows
from training.pipeline import group_labels, prepare
from training.protocols import protocols
from training.routers.neural import group_quality, overall_quality
from training.sweep import seeds_arg

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = protocols()
KEYS = ("aiq", "savings_at_iso_quality", "best_quality", "apgr", "cpt_50")


def group_means(quality: np.ndarray, groups: np.ndarray, rows: np.ndarray, smoothing: float) -> dict[str, np.ndarray]:
    """Each group's smoothed mean quality over ``rows`` (the group-informed router's table), plus the overall
    mean under ``__overall__`` for groups that ``rows`` never see."""
    names, index = np.unique(groups[rows], return_inverse=True)
    table = group_quality(quality[rows], index, len(names), smoothing=smoothing)
    return dict(zip(names.tolist(), table, strict=True)) | {"__overall__": overall_quality(quality[rows])}


def bounds_for_seed(protocol: str, field: str, seed: int, smoothing: float) -> dict[str, dict[str, float]]:
    spec = PROTOCOLS[protocol]
    config = load_config(ROOT / "training" / "configs" / "mlp_static.toml",
                         [f"data.train_size={spec['train_size']}", f"data.seed={seed}"])
    options = {"exclude": spec["exclude"]} if spec["exclude"] else {}
    prep = prepare(config, spec["data"], **options)
    table, split = prep.table, prep.split
    groups = group_labels(table, field)
    scored = scoreable_rows(table.quality, split.test, table.propensity)
    cost_est = prep.cost_model.estimate(estimate_input_tokens([table.texts[int(i)] for i in scored]))
    held = HeldOut(quality=table.quality[scored], cost=prep.cost[scored], cost_est=cost_est,
                   wtps=np.asarray(prep.cost_model.knob_grid), models=table.models, two_model=prep.two_model,
                   n_boot=0, seed=seed)
    out = {}
    train_rows = np.concatenate([split.train, split.val])
    for name, rows in (("group_means_train", train_rows), ("group_means_test", scored)):
        means = group_means(table.quality, groups, rows, smoothing)
        report = score_predictions(np.stack([means.get(g, means["__overall__"]) for g in groups[scored]]), held)
        out[name] = {k: report[k] for k in KEYS if isinstance(report.get(k), int | float)}
    out["groups"] = {"count": int(len(np.unique(groups[train_rows])))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), action="append",
                        help="default: every protocol")
    parser.add_argument("--group", action="append", help="task or metadata.<key> (repeatable; default: task, "
                                                         "plus metadata.src on mmlu-pro)")
    parser.add_argument("--seeds", type=seeds_arg, default="0-4", help="e.g. 0-4 or 0,2")
    parser.add_argument("--smoothing", type=bounded(float, 0, 1e6), default=2.0,
                        help="pseudo-count toward the overall mean")
    args = parser.parse_args(argv)
    result: dict[str, dict] = {}
    for protocol in args.protocol or sorted(PROTOCOLS):
        if not Path(PROTOCOLS[protocol]["data"]).exists():
            result[protocol] = {"skipped": f"{PROTOCOLS[protocol]['data']} not found"}
            continue
        fields = args.group or (["task", "metadata.src"] if protocol == "mmlu-pro" else ["task"])
        for field in fields:
            runs = [bounds_for_seed(protocol, field, seed, args.smoothing) for seed in args.seeds]
            summary: dict[str, dict] = {"groups": runs[0]["groups"]["count"], "seeds": args.seeds}
            for name in ("group_means_train", "group_means_test"):
                keys = [k for k in KEYS if all(k in run[name] for run in runs)]
                summary[name] = {k: round(statistics.mean(run[name][k] for run in runs), 4) for k in keys}
                missing = sum(1 for run in runs if "savings_at_iso_quality" not in run[name])
                if missing:
                    summary[name]["savings_not_reached_seeds"] = missing
            result.setdefault(protocol, {})[field] = summary
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
