"""How the default router (``auto``) should choose between its candidates, on data nobody tuned it for.

Builds seven small routing tables in the RouterBench wide layout from the shared data (200-2,500
prompts, 2-26 models; subsets of MMLU-Pro-29, of the 7-model MMLU-Pro responses and of RouteLLM's
MMLU, seeded; ``build_quirk_tables`` writes nine more, run when ``--tables`` names them), and on each,
for seeds 0-4, runs ``router-ml train`` with the default config as a new
user would (``--train-size 0.85``) once per candidate, forced with ``router.auto_pick``. The selection
(cross-validated held-out AIQ of every candidate, and how often the best one beats the ensemble on
paired bootstrap resamples) is the same in every one of a seed's runs; only the kept candidate differs.
So every choice rule can be scored on the same runs: each rule's pick, its test AIQ minus the best of
``train``'s own kNN / logistic-regression baselines (the bar the default must clear), averaged per table and overall.

Rules: ``confidence>=X`` (the default, ``router.ensemble_confidence`` = 0.95: the best candidate
replaces the ensemble only when it beats it on X of the bootstrap resamples), ``margin 0.002`` (a
fixed held-out AIQ margin), ``best held-out``, ``always ensemble`` and each candidate alone.

Every run's JSON is kept under ``--out`` (a re-run skips finished runs). Prints one JSON object,
also written to ``<out>/auto_selection_study.json``. About 45 minutes on 2 cores.

    python scripts/auto_selection_study.py
    python scripts/auto_selection_study.py --tables mp29_300,rl_600 --seeds 0-1
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from router_ml.cli import bounded
from training.parallel import share_cores
from training.routers.auto_choice import keep_candidate
from training.sweep import seeds_arg

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "training" / "configs" / "auto.toml"
PICKS = ("ensemble", "knn", "logreg", "mlp", "mf")
RL_COSTS = {"mistralai/Mixtral-8x7B-Instruct-v0.1": 0.0006, "gpt-4-1106-preview": 0.01}  # USD per query


def _models(frame) -> list[str]:
    return [c for c in frame.columns if f"{c}|total_cost" in frame.columns]


def build_tables(shared: Path, out: Path) -> dict[str, Path]:
    """The seven tables (name -> Parquet path), written once under ``out``; the same files every time."""
    import numpy as np
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def write(name: str, frame) -> None:
        paths[name] = out / f"{name}.parquet"
        if not paths[name].exists():
            frame.reset_index(drop=True).to_parquet(paths[name])

    rng = np.random.default_rng(123)
    mp = pd.read_parquet(shared / "mmlu-pro-29" / "mmlu_pro_29.parquet")
    models = _models(mp)
    full = mp.dropna(subset=models)
    for name, n, k, groups in (("mp29_300", 300, 26, False), ("mp29_1200g", 1200, 12, True),
                               ("mp29_2500", 2500, 5, False)):
        chosen = list(rng.choice(models, k, replace=False))
        rows = full.sample(n, random_state=int(rng.integers(1e9)))
        cols = ["prompt"] + (["eval_name"] if groups else []) + [x for m in chosen for x in (m, f"{m}|total_cost")]
        write(name, rows[cols])
    rl = pd.concat([pd.read_csv(f) for f in sorted(glob.glob(str(shared / "routellm-mmlu" / "responses" / "*.csv")))])
    rl = rl.drop_duplicates("prompt")
    for model, cost in RL_COSTS.items():
        rl[model] = rl[model].astype(float)
        rl[f"{model}|total_cost"] = cost
    cols = ["prompt", *RL_COSTS, *(f"{m}|total_cost" for m in RL_COSTS)]
    write("rl_2000", rl.sample(2000, random_state=5)[cols])
    write("rl_600", rl.sample(600, random_state=6)[cols])
    seven = pd.read_parquet(shared / "mmlu-pro-responses" / "mmlu_pro_responses.parquet")
    models = _models(seven)
    seven = seven.dropna(subset=models)[["prompt", *(x for m in models for x in (m, f"{m}|total_cost"))]]
    write("mp7_250", seven.sample(250, random_state=7))
    write("mp7_2500", seven.sample(2500, random_state=8))
    return paths


#: the seven tables every study runs by default; :func:`build_quirk_tables` adds more, by name
SEVEN = ("mp29_300", "mp29_1200g", "mp29_2500", "rl_2000", "rl_600", "mp7_250", "mp7_2500")
#: the nine :func:`build_quirk_tables` writes
QUIRKS = ("rb_quirks", "continuous3", "dominant", "two_cheap_better", "missing10", "free_model", "dups", "m26_200",
          "names_long")


def build_quirk_tables(shared: Path, out: Path) -> dict[str, Path]:
    """Nine more tables (name -> Parquet path), MMLU-Pro-29 subsets of 200-600 prompts with what a
    user's own table may hold: RouterBench's own columns (``sample_id``, ``eval_name``, list-shaped
    prompts ``"['...']"``, ``M|model_response``, ``oracle_model_to_route_to``; ``rb_quirks``), graded
    quality in steps of 0.1 (``continuous3``), a model best and cheapest on every prompt (``dominant``),
    two models the cheaper of which is the better (``two_cheap_better``), 10% of the cells missing
    (``missing10``), a free model (``free_model``), 60 prompts twice under other ids (``dups``), 26 models
    on 200 prompts (``m26_200``), and model names with spaces and slashes beside 21 prompts 40 times
    their length (``names_long``). Every one keeps the ``eval_name`` category, so the ``groups`` candidate
    is tried. Written once; the same files every time."""
    import numpy as np
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    src = pd.read_parquet(shared / "mmlu-pro-29" / "mmlu_pro_29.parquet")
    models = _models(src)
    rng = np.random.default_rng(11)

    def table(n: int, chosen: list[str], seed: int):
        rows = src.iloc[np.random.default_rng(seed).choice(len(src), n, replace=False)].reset_index(drop=True)
        cols = {"sample_id": rows.sample_id, "prompt": rows.prompt, "eval_name": rows.eval_name}
        for m in chosen:
            cols[m], cols[f"{m}|total_cost"] = rows[m], rows[f"{m}|total_cost"]
        return pd.DataFrame(cols)

    tables = {}
    t = table(300, models[:11], 1)
    t["prompt"] = ["['" + p.replace("'", "\\'") + "']" for p in t.prompt]
    for m in models[:11]:
        t[f"{m}|model_response"] = "answer " + t[m].astype(str)
    t["oracle_model_to_route_to"] = models[0]
    tables["rb_quirks"] = t
    t = table(400, models[3:6], 2)
    for m in models[3:6]:
        t[m] = np.clip(np.round((t[m].fillna(0) * 0.6 + rng.random(len(t)) * 0.4) * 10) / 10, 0, 1)
    tables["continuous3"] = t
    t = table(300, models[:4], 3)
    t[models[0]], t[f"{models[0]}|total_cost"] = 1.0, 1e-6
    tables["dominant"] = t
    t = table(500, models[:2], 4)
    a, b = models[:2]
    if (t[a].mean() > t[b].mean()) != (t[f"{a}|total_cost"].mean() < t[f"{b}|total_cost"].mean()):
        t[f"{a}|total_cost"], t[f"{b}|total_cost"] = t[f"{b}|total_cost"].copy(), t[f"{a}|total_cost"].copy()
    tables["two_cheap_better"] = t
    t = table(600, models[5:13], 5)
    for m in models[5:13]:
        t.loc[rng.random(len(t)) < 0.1, m] = np.nan
    tables["missing10"] = t
    t = table(400, models[8:12], 6)
    t[f"{models[8]}|total_cost"] = 0.0
    tables["free_model"] = t
    t = table(300, models[2:7], 7)
    twice = t.iloc[:60].copy()
    twice["sample_id"] = twice["sample_id"] + "_dup"
    tables["dups"] = pd.concat([t, twice], ignore_index=True)
    tables["m26_200"] = table(200, models[:26], 8)
    t = table(300, models[10:14], 9)
    names = {m: "org/" + m.replace("-", " ") for m in models[10:14]}
    t = t.rename(columns={**names, **{f"{m}|total_cost": f"{names[m]}|total_cost" for m in models[10:14]}})
    t.loc[:20, "prompt"] = t.loc[:20, "prompt"] * 40
    tables["names_long"] = t
    paths = {}
    for name, frame in tables.items():
        paths[name] = out / f"{name}.parquet"
        if not paths[name].exists():
            frame.to_parquet(paths[name], index=False)
    return paths


def run_one(table: Path, seed: int, pick: str, runs: Path) -> Path:
    out = runs / f"{table.stem}_s{seed}_{pick}.json"
    if out.exists():
        return out
    work = runs / f"{table.stem}_s{seed}_{pick}"
    cmd = [str(Path(sys.executable).with_name("router-ml")), "train", "--config", str(CONFIG), "--data", str(table),
           "--train-size", "0.85", "--seed", str(seed), "--out", str(work), "--quiet",
           "--set", "tracking.enabled=false", "--set", f"router.auto_pick={pick}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    out.write_text(done.stdout)
    shutil.rmtree(work, ignore_errors=True)  # the artifact is not needed: the JSON holds the scores
    return out


def _rule_margin(candidates: dict, margin: float) -> str:
    best = max(candidates, key=lambda c: candidates[c]["val_aiq"])
    if "ensemble" in candidates and candidates["ensemble"]["val_aiq"] >= candidates[best]["val_aiq"] - margin:
        return "ensemble"
    return best


RULES = {  # the default is the selection's own rule (training.routers.auto_choice.keep_candidate)
    "confidence>=0.95 (default)": lambda c: keep_candidate(c, 0.95),
    "confidence>=0.8": lambda c: keep_candidate(c, 0.8),
    "margin 0.002": lambda c: _rule_margin(c, 0.002),
    "best held-out": lambda c: _rule_margin(c, -1.0),
    "always ensemble": lambda c: "ensemble",
    **{f"always {p}": (lambda c, p=p: p) for p in PICKS[1:]},
}


def summarize(results: dict[tuple[str, int], dict[str, dict]]) -> dict:
    per_rule: dict[str, dict] = {}
    for rule, fn in RULES.items():
        tables: dict[str, list[float]] = {}
        picks: dict[str, int] = {}
        for (table, _seed), runs in sorted(results.items()):
            first = runs["ensemble"]
            base = first["test"]["baselines"]
            bar = max(base["knn"]["aiq"], base["logreg"]["aiq"])
            pick = fn(first["selection"]["candidates"])
            picks[pick] = picks.get(pick, 0) + 1
            tables.setdefault(table, []).append(runs[pick]["test"]["aiq"] - bar)
        every = [d for ds in tables.values() for d in ds]
        per_rule[rule] = {"mean_vs_best_baseline": statistics.fmean(every),
                          "runs_below": sum(d < 0 for d in every), "runs": len(every), "picks": picks,
                          "per_table": {t: statistics.fmean(ds) for t, ds in tables.items()}}
    return per_rule


def study_setup(description: str, argv: list[str] | None) -> tuple[argparse.Namespace, list[int], dict[str, Path],
                                                                   list[str]]:
    """The studies' shared command line: ``(args, seeds, every table's path, the tables asked for)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "auto_selection")
    parser.add_argument("--tables", default="",
                        help="comma-separated table names (default: the seven; build_quirk_tables names nine more)")
    parser.add_argument("--seeds", type=seeds_arg, default="0-4", help="e.g. 0-4 or 0,2")
    parser.add_argument("--jobs", type=bounded(int, 1), default=2, help="runs at once (default 2)")
    args = parser.parse_args(argv)
    seeds = args.seeds
    names = [t for t in args.tables.split(",") if t] or list(SEVEN)
    unknown = sorted(set(names) - set(SEVEN) - set(QUIRKS))
    if unknown:  # before any table is built
        parser.error(f"--tables: unknown {unknown}; choose from {sorted(SEVEN + QUIRKS)}")
    paths = build_tables(args.shared, args.out / "tables")
    if set(names) - set(paths):  # the quirk tables only where named
        paths |= build_quirk_tables(args.shared, args.out / "tables")
    return args, seeds, paths, names


def main(argv: list[str] | None = None) -> int:
    args, seeds, paths, names = study_setup(__doc__.splitlines()[0], argv)
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet as pq

    grouped = {t for t in names if "eval_name" in pq.read_schema(paths[t]).names}  # the groups candidate
    jobs = [(paths[t], s, p) for t in names for s in seeds for p in PICKS + (("groups",) if t in grouped else ())]
    share_cores(args.jobs)  # each training's workers: its share of the cores
    with ThreadPoolExecutor(args.jobs) as pool:
        files = list(pool.map(lambda job: run_one(*job, runs), jobs))
    results: dict[tuple[str, int], dict[str, dict]] = {}
    for (table, seed, pick), file in zip(jobs, files, strict=True):
        results.setdefault((table.stem, seed), {})[pick] = json.loads(file.read_text())
    report = {"tables": {t: str(paths[t]) for t in names}, "seeds": seeds, "rules": summarize(results)}
    (args.out / "auto_selection_study.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
