"""How much of the bootstrap-to-ceiling gap a completed log could close: the imputed cells replaced by
what an oracle knows.

`router-ml train` on a log (``loss.logged_targets = "impute"``, training/offpolicy.py) fills each
unobserved (record, model) cell with ``clip(prior_m + lambda_m z, 0, 1)``: the first stage's prior
plus the one-factor transfer of the record's estimated difficulty ``z``. This script trains the same
router on the same bootstrap + log with those cells replaced, and scores it on the same test prompts:

- ``default``: unchanged (reproduces the protocol's ``offpolicy`` variant to the last digit);
- ``prior``: the first stage's prior alone, no transfer (``lambda = 0``);
- ``oracle_z``: the transfer with ``z`` estimated from *every* model's true outcome on the prompt
  (the same loadings and ridge): the best the one-factor model can do;
- ``truth``: the true outcomes themselves (still weighed ``loss.imputed_weight``): what the log
  would teach if the imputation were perfect.

It reads a finished run of ``scripts/offpolicy_targets.py --part learning`` (its bootstrap + log,
ceiling file with every outcome, test prompts and the bootstrap and ceiling scores) and prints one
JSON object: per data set and mode, the mean AIQ over the seeds and the share of the gap closed
(from the means, and per seed). A diagnostic: it reaches into the training pipeline's completion step
(``training.pipeline._complete_logged``), which no user-facing option exposes.

    python scripts/offpolicy_targets.py --part learning --config auto --datasets demo,mmlu-pro --seeds 0-4 \\
        --rates 0.2 --variant offpolicy= --out results/offpolicy_auto
    python scripts/completion_bounds.py --run results/offpolicy_auto --config auto --datasets demo,mmlu-pro
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
MODES = ("default", "prior", "oracle_z", "truth")


def train_with(mode: str, truth_file: Path, argv: list[str]) -> int:
    """``router-ml train argv`` in this process, the completion's imputed cells replaced per ``mode``."""
    import training.offpolicy as offpolicy
    import training.pipeline as pipeline
    from router_ml.cli import main

    complete = pipeline._complete_logged

    def replaced(config, router_cls, inputs, X, prep, cost_est, groups):
        seen: dict = {}
        factor_targets = offpolicy.factor_targets

        def keep(quality, prior, loadings, noise, *, ridge):  # the completion's own prior and factor
            seen.update(prior=prior, loadings=loadings, noise=noise, ridge=ridge)
            return factor_targets(quality, prior, loadings, noise, ridge=ridge)

        offpolicy.factor_targets = keep
        try:
            completion = complete(config, router_cls, inputs, X, prep, cost_est, groups)
        finally:
            offpolicy.factor_targets = factor_targets
        if mode == "default" or not completion.imputed.any():
            return completion
        table = prep.table
        from offpolicy_targets import record_key

        from training.data import load_traffic

        # by sample id and prompt together, as offpolicy_targets.write_full_outcomes matched them
        truth = {record_key(r): [r.outcomes[m].quality for m in table.models]
                 for r in load_traffic(truth_file)[0].records}
        rows = np.concatenate([prep.split.train, prep.split.val])
        observed = np.isfinite(table.quality)
        partial = rows[observed[rows].any(axis=1) & ~observed[rows].all(axis=1)]  # as complete_targets
        ids, texts = table.columns.sample_id, table.texts
        true = np.array([truth[(ids[int(i)], texts[int(i)])] for i in partial], dtype=np.float64)
        prior, loadings, noise = seen["prior"], seen["loadings"], seen["noise"]
        if mode == "prior":
            filled = np.clip(prior, 0.0, 1.0)
        elif mode == "oracle_z":
            z = ((true - prior) @ (loadings / noise)) / ((loadings ** 2 / noise).sum() + seen["ridge"])
            filled = np.clip(prior + z[:, None] * loadings[None, :], 0.0, 1.0)
        else:
            filled = true
        imputed = completion.imputed[partial]
        block = completion.quality[partial]
        change = float(np.abs(block[imputed] - filled[imputed]).mean())
        block[imputed] = filled[imputed]
        completion.quality[partial] = block
        completion.report.update(bounds_mode=mode, replaced_cells=int(imputed.sum()),
                                 mean_abs_change=round(change, 5))
        return completion

    pipeline._complete_logged = replaced
    return main(argv)


def one(run: Path, dataset: str, seed: int, mode: str, config: Path, out: Path) -> float:
    """Train (once: kept under ``out``) and score one seed's router; its test AIQ."""
    from offpolicy_targets import FAST_REPORT, cli, sets

    base = run / dataset / "learning" / f"seed{seed}"
    target = out / dataset / mode / f"seed{seed}"
    scored = target.with_name(target.name + ".eval.json")
    if not scored.exists():
        argv = ["train", "--config", str(config), "--data", str(base / "rate0.2" / "bootstrap_log.jsonl"),
                "--out", str(target), "--train-size", "0.9", "--seed", str(seed), "--quiet", *sets(FAST_REPORT)]
        done = subprocess.run([sys.executable, __file__, "--train-one", mode, str(base / "ceiling.jsonl"), *argv],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{dataset} seed {seed} {mode}: train failed\n{done.stderr[-2000:]}")
        test = next((run / dataset / "sims").glob(f"seed{seed}-rate0.2-explore{seed}/test.jsonl"))
        result = subprocess.run(cli("evaluate", "--router", str(target), "--data", str(test), "--json", "--quiet"),
                                capture_output=True, text=True, check=True)
        scored.write_text(result.stdout)
    return json.loads(scored.read_text())["test"]["aiq"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--train-one"]:
        return train_with(argv[1], Path(argv[2]), argv[3:])
    from offpolicy_targets import config_path, gap_closed

    from router_ml.cli import bounded
    from training.sweep import seeds_arg

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--run", required=True, help="a finished offpolicy_targets.py --part learning --out")
    parser.add_argument("--config", help="the config that run used (offpolicy_targets.py --config; default mlp_static)")
    parser.add_argument("--datasets", default="demo,mmlu-pro")
    parser.add_argument("--seeds", type=seeds_arg, default="0-4", help="e.g. 0-4 or 0,2")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument("--jobs", type=bounded(int, 1), default=2, help="trainings at once (default 2)")
    parser.add_argument("--out", help="where the trained routers go (default <run>/completion_bounds)")
    args = parser.parse_args(argv)
    run, config, seeds = Path(args.run), config_path(args.config), args.seeds
    out = Path(args.out) if args.out else run / "completion_bounds"
    modes = args.modes.split(",")
    if set(modes) - set(MODES):
        raise SystemExit(f"--modes: choose from {', '.join(MODES)}")
    jobs = [(d, s, m) for d in args.datasets.split(",") for m in modes for s in seeds]
    from training.parallel import share_cores

    share_cores(args.jobs)  # each training's workers: its share of the cores
    with ThreadPoolExecutor(args.jobs) as pool:
        aiq = dict(zip(jobs, pool.map(lambda j: one(run, j[0], j[1], j[2], config, out), jobs), strict=True))
    result: dict = {"run": str(run), "config": str(config), "seeds": seeds, "datasets": {}}
    for dataset in args.datasets.split(","):
        learning = run / dataset / "learning"
        low = [json.loads((learning / f"seed{s}" / "bootstrap.eval.json").read_text())["output"]["test"]["aiq"]
               for s in seeds]
        high = [json.loads((learning / f"seed{s}" / "ceiling.eval.json").read_text())["output"]["test"]["aiq"]
                for s in seeds]
        block = {"bootstrap": statistics.fmean(low), "ceiling": statistics.fmean(high), "modes": {}}
        for mode in modes:
            values = [aiq[(dataset, s, mode)] for s in seeds]
            block["modes"][mode] = {
                "aiq": statistics.fmean(values),
                "gap_closed": gap_closed(statistics.fmean(values), block["bootstrap"], block["ceiling"]),
                "per_seed": [gap_closed(v, lo, hi) for v, lo, hi in zip(values, low, high, strict=True)]}
        result["datasets"][dataset] = block
    out.mkdir(parents=True, exist_ok=True)
    (out / "completion_bounds.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
