"""Simulated logged traffic: what a deployed, exploring router would log on a full-information table.

From a table with every model's outcome on every prompt, :func:`simulate_log` makes the three parts
of the logged-traffic protocol, split by prompt (the data layer's seeded grouped split: no prompt in
two parts):

- ``bootstrap.jsonl``: a small labelled set with every outcome - what a team has before it deploys;
- ``log.jsonl``: the prompts a router trained on the bootstrap set (``router-ml train`` with the
  given config, its usual internal split, exported to ONNX) routes with an exploration policy
  (:class:`router_ml.Exploration`), keeping only the chosen model's outcome and the probability it
  was chosen with (``propensity``) - canonical JSONL, read by ``train`` and ``evaluate`` like any log;
- ``test.jsonl``: held-out prompts with every outcome, to score any router exactly.

It is how the off-policy estimators and training are measured, and how a user can plan an
exploration rate on their own offline evaluations before deploying.

    router-ml simulate-log --data ../shared/data/mmlu-pro-29/mmlu_pro_29.parquet --bootstrap 0.05 \\
        --logged 0.65 --explore-rate 0.2 --seed 0 --out sim/
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.errors import DataError
from router_ml.exploration import Exploration
from training.config import TrainConfig
from training.pipeline import MIN_TRAIN_RECORDS

__all__ = ["simulate_log"]

log = logging.getLogger(__name__)
#: the fewest bootstrap records: the bootstrap router's own split trains on about 60% of them, and needs
#: training.pipeline.MIN_TRAIN_RECORDS
MIN_BOOTSTRAP = 2 * MIN_TRAIN_RECORDS

#: what :func:`simulate_log` writes under ``out``
OUTPUTS = ("bootstrap.jsonl", "log.jsonl", "test.jsonl", "simulation.json", "bootstrap_router")


def _check_outputs_spare_inputs(out: Path, inputs: list[Any]) -> None:
    """Refuse an ``out`` whose files would overwrite an input (``--data sim/test.jsonl --out sim``)."""
    from training.data.loader import lies_within

    for given in (Path(p) for p in inputs if isinstance(p, str | Path)):
        if given.exists() and any(lies_within(given, out / name) for name in OUTPUTS):
            raise DataError(f"--out {out}: would overwrite the input {given} (simulate-log writes "
                            f"{', '.join(OUTPUTS)} there); choose another --out")


def simulate_log(config: TrainConfig, data: str | Path, *, out: str | Path, bootstrap: float | int,
                 logged: float | int, exploration: Exploration | None, seed: int = 0,
                 willingness_to_pay: float | None = None, progress: bool = False,
                 **load_options: Any) -> dict[str, Any]:
    """Write ``bootstrap.jsonl``, ``log.jsonl`` and ``test.jsonl`` under ``out`` (module doc) and the
    bootstrap router under ``out/bootstrap_router``; returns a summary (sizes, explored share, the
    logged policy's mean quality and cost, and the bootstrap router's own test metrics).

    ``bootstrap`` and ``logged`` are record counts or fractions of the complete records; the test
    part is the rest. ``willingness_to_pay`` overrides the exported router's default knob.
    """
    from router_ml import Router
    from training.data import load_traffic, split_table, write_jsonl
    from training.data.splits import resolve_size
    from training.pipeline import train_router

    out = Path(out)
    _check_outputs_spare_inputs(out, [data, load_options.get("exclude"), load_options.get("prices")])
    table, report = load_traffic(data, **load_options)
    complete = np.isfinite(table.quality).all(axis=1)
    if complete.sum() < 3:
        raise DataError(f"{data}: simulating a log needs full-information records (every model's outcome); "
                        f"{int(complete.sum())} of {len(table)} have every outcome")
    unknown = sorted(set(exploration.exclude) - set(table.models)) if exploration is not None else []
    if unknown:  # found now, not after the bootstrap router's training
        raise DataError(f"--explore-exclude names model(s) {unknown} that {data} does not hold; its models are "
                        f"{list(table.models)}")
    if not complete.all():
        log.warning("%s: %d of %d records lack some model's outcome and are left out (a simulated log needs every "
                    "outcome of its records); --bootstrap and --logged shares are of the %d complete ones", data,
                    int((~complete).sum()), len(table), int(complete.sum()))
    full = table.subset(np.flatnonzero(complete))
    total = len(full)
    n_boot = resolve_size(bootstrap, total, "--bootstrap")
    n_logged = resolve_size(logged, total, "--logged")
    if n_boot < MIN_BOOTSTRAP:  # found now: the bootstrap router's own split would refuse it after the files
        raise DataError(f"--bootstrap {bootstrap} of {total} complete records is {n_boot}; the bootstrap router "
                        f"trains and is tested on them: give at least {MIN_BOOTSTRAP}")
    if n_boot < 2 or n_logged < 1 or n_boot + n_logged >= total:
        raise DataError(f"--bootstrap {bootstrap} and --logged {logged} of {total} complete records leave "
                        f"{n_boot} bootstrap, {n_logged} logged and {total - n_boot - n_logged} test records; "
                        "each part needs records")
    # the data layer's grouped split: train = bootstrap, val = logged, test = the rest
    parts = split_table(full, train_size=n_boot + n_logged, val_size=n_logged, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    records = full.records
    write_jsonl([records[int(i)] for i in parts.train], out / "bootstrap.jsonl")
    write_jsonl([records[int(i)] for i in parts.test], out / "test.jsonl")
    boot_config = config.replace(**{"data.seed": seed})
    summary = train_router(boot_config, out / "bootstrap.jsonl", out_dir=out / "bootstrap_router", progress=progress)
    if summary.get("artifact") is None:
        raise DataError(f"the bootstrap router could not be exported ({summary.get('export')}); simulate with a "
                        "config whose router exports to ONNX (e.g. training/configs/mlp_static.toml)")
    router = Router.load(summary["artifact"], exploration=exploration)
    prompts = [records[int(i)] for i in parts.val]
    decisions = router.route_batch([r.text for r in prompts], willingness_to_pay=willingness_to_pay)
    logged_records = []
    for record, decision in zip(prompts, decisions, strict=True):
        outcome = dataclasses.replace(record.outcomes[decision.model], propensity=float(decision.propensity))
        logged_records.append(dataclasses.replace(record, outcomes={decision.model: outcome}))
    write_jsonl(logged_records, out / "log.jsonl")
    chosen = [r.outcomes[d.model] for r, d in zip(prompts, decisions, strict=True)]
    result = {
        "out": str(out), "source": str(data), "rejected": report.rejected, "complete_records": total,
        "partial_records_left_out": int((~complete).sum()),
        "bootstrap_records": int(len(parts.train)), "logged_records": len(logged_records),
        "test_records": int(len(parts.test)),
        "exploration": None if exploration is None else exploration.to_dict(),
        "willingness_to_pay": router.willingness_to_pay if willingness_to_pay is None else willingness_to_pay,
        "explored_share": float(np.mean([d.explored for d in decisions])),
        "min_propensity": float(min(d.propensity for d in decisions)),
        "chosen_share": {m: float(np.mean([d.model == m for d in decisions])) for m in router.models},
        "logged_mean_quality": float(np.mean([o.quality for o in chosen])),
        # None when the data has no costs (RouteLLM's tables): JSON has no NaN
        "logged_mean_cost": float(np.mean(costs)) if (costs := [o.cost for o in chosen if o.cost is not None])
        else None,
        "bootstrap_router": {"out": summary["out"], "artifact": summary["artifact"],
                             "test": {k: summary["test"].get(k) for k in ("aiq", "best_quality", "apgr")}},
    }
    if exploration is not None and exploration.rate > 0 and result["explored_share"] == 0:
        # every decision kept propensity 1: the log can say nothing about the models the router did not pick
        causes = [flag for flag, given in (("--explore-max-cost", exploration.max_cost_usd is not None),
                                           ("--explore-exclude", bool(exploration.exclude))) if given]
        if exploration.kind == "softmax":  # a temperature near 0 puts every draw on the greedy choice
            causes.append(f"--explore-temperature {exploration.temperature:g}")
        result["warning"] = (f"nothing was explored on {len(decisions)} logged prompts: no model other than the "
                             f"router's choice was drawn (see {' and '.join(causes) or 'the exploration settings'})")
    (out / "simulation.json").write_text(json.dumps(result, indent=1))
    return result
