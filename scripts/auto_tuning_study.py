"""How ``auto`` should tune and calibrate its candidates on data nobody tuned it for.

On the seven small tables of ``scripts/auto_selection_study.py`` (seeds 0-4, ``--train-size 0.85`` as
``router-ml train`` splits them), one run per table and seed computes, for every candidate variant (each
logistic-regression C and kNN k of the default grids, the MLP and MF, with and without Platt scaling):

- its cross-validated held-out predictions on train + validation, exactly as the selection computes them;
- its test predictions, fitted on all of train + validation (the torch candidates early-stopped on a
  tenth of it, as in a cross-validation fold).

Every tuning rule is then applied to the same cross-validated scores and scored on the same test prompts
against ``train``'s own baselines (kNN k = 25 and logistic regression C = 1, fitted on train +
validation): the bar is the better of the two. Rules:

- ``tuned+platt``: each family's grid point and calibration with the best held-out AIQ (the selection's
  rule);
- ``tuned``: the best grid point, never calibrated;
- ``defaults``: the baselines' own settings (C = 1, k = 25), never calibrated;
- ``confident@X``: the default setting, uncalibrated, unless another grid point or its calibration beats
  it on at least X of 200 paired bootstrap resamples of the held-out prompts (the ensemble rule applied
  to tuning);
- ``anchored@X``: the default rule's kept candidate only where it beats the logistic regression at
  ``train``'s baseline setting (C = 1, uncalibrated) on at least X of 200 paired bootstrap resamples of
  the held-out prompts, else that regression - the baseline kept unless the selection beats it beyond noise.

Each rule's ensemble (the mean of its families' predictions; also without MF, without kNN, and of the
logistic regression and kNN alone) and the candidate the ensemble rule keeps (``router.ensemble_confidence`` 0.95)
are scored; for the default rule also three other ways to combine the members: a mean of logits,
stacking (simplex weights minimising the held-out Brier score) and greedy ensemble selection by held-out
AIQ (Caruana et al., 2004). The fitting step writes each run's arrays to ``<out>/tuning/<table>_s<seed>.npz``
(a re-run reuses them and only re-scores the rules, a few minutes). Prints one JSON object (also
written to ``<out>/auto_tuning_study.json``). About 15 minutes on 2 cores, 25 with the analysis.

    python scripts/auto_tuning_study.py
    python scripts/auto_tuning_study.py --tables rl_2000 --seeds 0-1
"""

from __future__ import annotations

import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

CONFIG = ROOT / "training" / "configs" / "auto.toml"
DEFAULTS = {"logreg": 1.0, "knn": 25}
CONFIDENCE = (0.8, 0.95)
ANCHOR_LEVELS = (0.5, 0.8, 0.9, 0.95)


def _one(table: str, path: str, seed: int, cache: str, out: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from router_ml.policy import estimate_input_tokens
    from training.config import load_config
    from training.evaluation import HeldOut
    from training.pipeline import _batchable, _wtp_range, featurize_texts, prepare
    from training.routers.auto import AutoRouter, _Selection
    from training.routers.auto_groups import auto_group_labels
    from training.routers.baselines import KNNRouter, LogRegRouter
    from training.routers.heads import apply_platt, fit_platt

    target = Path(out) / f"{table}_s{seed}.npz"
    if target.exists():
        return str(target)
    config = load_config(CONFIG, {"data.train_size": "0.85", "data.seed": str(seed), "tracking.enabled": "false",
                                  "train.workers": "1"})  # the study runs --jobs of these side by side
    # the candidates over the static features that the study's rules tune (the lexical candidate, added
    # after the study, has its own: scripts/lexical_study.py)
    config = config.replace(**{"router.candidates": tuple(c for c in config.router.candidates
                                                          if c not in ("encoder", "lexical"))})
    prep = prepare(config, path)
    table_, split = prep.table, prep.split
    groups = auto_group_labels(config, table_)
    X, _ = featurize_texts(config, table_.texts, fingerprint=table_.fingerprint(), cache_dir=cache, progress=False)
    cost_est = prep.cost_model.estimate(estimate_input_tokens(table_.texts), dtype=np.float32)
    router = AutoRouter(config=config, n_models=len(table_.models), input_dim=X.shape[1])
    inputs = router.inputs(table_.texts, X)
    part = dict(groups=groups)
    train = _batchable(inputs, split.train, table_, prep.cost, cost_est, **part)
    val = _batchable(inputs, split.val, table_, prep.cost, cost_est, **part) if len(split.val) else None
    test = _batchable(inputs, split.test, table_, prep.cost, cost_est, **part)
    wtp = _wtp_range(prep.cost)

    # cross-validated held-out predictions, as the selection computes them
    sel = _Selection(router, train, val, wtp, None)
    variants = sel._variants()
    cv = {v: np.full(sel.pool.quality.shape, np.nan) for v in variants}
    parts = sel._parts()
    sel._fit_parts(parts, cv)
    scored = np.concatenate([s for _, s in parts])
    Qv = sel.pool.quality[scored]
    from router_ml.policy import knob_grid

    grid = knob_grid(np.nanmean(train.cost, axis=0), config.eval.knob_points)
    # test predictions: fitted on all of train + validation (a selection whose pool ends with the test part)
    outer = _Selection(router, train.concat(val), test, wtp, None)
    outer.cv = True  # torch candidates early-stop on a tenth of the fit part
    n_fit = len(sel.pool)
    tp = {v: np.full(outer.pool.quality.shape, np.nan) for v in variants}
    outer._fit_parts([(np.arange(n_fit), np.arange(n_fit, len(outer.pool)))], tp)
    tq = table_.quality[split.test]
    held_t = HeldOut(quality=tq, cost=prep.cost[split.test], cost_est=cost_est[split.test].astype(np.float64),
                     wtps=np.asarray(prep.cost_model.knob_grid), models=table_.models, two_model=prep.two_model,
                     n_boot=0, seed=seed)

    versions = {}  # "family|param|calibrated" -> (cv preds, test preds)
    for v in variants:
        raw_v, raw_t = cv[v][scored], tp[v][n_fit:]
        versions[f"{v[0]}|{v[1]}|0"] = (raw_v, raw_t)
        if v[0] != "encoder":
            scale, shift = fit_platt(raw_v, Qv)
            versions[f"{v[0]}|{v[1]}|1"] = (apply_platt(raw_v, scale, shift), apply_platt(raw_t, scale, shift))
    trainval = np.concatenate([split.train, split.val])
    baselines = {"knn": KNNRouter(k=25).fit(X[trainval], table_.quality[trainval]).predict(X[split.test]),
                 "logreg": LogRegRouter(C=1.0).fit(X[trainval], table_.quality[trainval]).predict(X[split.test])}
    arrays = {"val_quality": Qv, "val_cost": sel.pool.cost[scored], "val_cost_est": sel.pool.cost_est[scored],
              "val_wtps": grid, "test_quality": tq, "test_cost": held_t.cost, "test_cost_est": held_t.cost_est,
              "test_wtps": held_t.wtps, "two_model": np.asarray(prep.two_model or (-1, -1)),
              "refine": np.asarray(config.eval.knob_refine),
              **{f"base:{k}": v for k, v in baselines.items()},
              **{f"cv:{k}": v[0] for k, v in versions.items()}, **{f"test:{k}": v[1] for k, v in versions.items()}}
    np.savez_compressed(target, **arrays)
    return str(target)


def _held(a: dict, part: str, seed: int):
    from training.evaluation import HeldOut

    two = tuple(int(x) for x in a["two_model"])
    return HeldOut(quality=a[f"{part}_quality"], cost=a[f"{part}_cost"], cost_est=a[f"{part}_cost_est"],
                   wtps=a[f"{part}_wtps"], models=tuple(str(j) for j in range(a[f"{part}_quality"].shape[1])),
                   two_model=None if two[0] < 0 or part == "val" else two, n_boot=0, seed=seed,
                   refine=int(a["refine"]) if "refine" in a else 0)  # eval.knob_refine, as train sweeps


def _aiq(pred, held) -> float:
    from training.evaluation import score_predictions

    value = score_predictions(pred, held, n_boot=0).get("aiq")
    return float("-inf") if value is None else float(value)


def _paired_vs_baselines(pred, a: dict, held) -> dict:
    """The default's test AIQ minus each baseline's, with the paired 95% bootstrap interval that
    ``router-ml train`` prints (1,000 resamples of the test prompts)."""
    import dataclasses

    from training.baselines import paired_differences
    from training.evaluation import score_predictions

    held = dataclasses.replace(held, n_boot=1000)
    mine = score_predictions(pred, held)
    out = {}
    for b in ("knn", "logreg"):
        diff = paired_differences(mine, score_predictions(a[f"base:{b}"], held))
        out[b] = {"aiq": diff.get("aiq"), "ci95": diff.get("ci95", {}).get("aiq")}
    return out


def analyse(path: str, table: str, seed: int) -> dict:
    """Every rule's picks and test AIQ on one run's arrays (module doc)."""
    import numpy as np

    from training.routers.auto_choice import paired_wins

    with np.load(path) as z:
        a = dict(z)
    held_v, held_t = _held(a, "val", seed), _held(a, "test", seed)
    keys = sorted({k.split(":", 1)[1] for k in a if k.startswith("cv:")})
    versions = {tuple(k.split("|")): (a[f"cv:{k}"], a[f"test:{k}"]) for k in keys}
    val_aiq = {k: _aiq(p[0], held_v) for k, p in versions.items()}
    test_aiq = {k: _aiq(p[1], held_t) for k, p in versions.items()}
    families = sorted({k[0] for k in versions})
    bar = {b: _aiq(a[f"base:{b}"], held_t) for b in ("knn", "logreg")}

    def default(f):
        if f in DEFAULTS:
            return (f, str(DEFAULTS[f]), "0")
        return min(k for k in versions if k[0] == f and k[2] == "0")  # no grid (mlp, mf) or a group field

    def rule_choice(rule, f):
        options = [k for k in versions if k[0] == f]
        if rule == "tuned+platt":
            return max(options, key=lambda k: val_aiq[k])
        if rule == "tuned":
            return max((k for k in options if k[2] == "0"), key=lambda k: val_aiq[k])
        if rule == "defaults":
            return default(f)
        level = float(rule.split("@")[1])
        base = default(f)
        best = max(options, key=lambda k: val_aiq[k])
        if best == base or val_aiq[best] <= val_aiq[base]:
            return base
        return best if paired_wins(versions[best][0], versions[base][0], held_v, seed) >= level else base

    report = {"table": table, "seed": seed, "test_prompts": int(len(a["test_quality"])),
              "cv_prompts": int(len(a["val_quality"])), "baselines": bar, "bar": max(bar.values()), "rules": {}}
    for rule in ("tuned+platt", "tuned", "defaults", *(f"confident@{c}" for c in CONFIDENCE)):
        chosen = {f: rule_choice(rule, f) for f in families}
        for name, members in ENSEMBLES.items():
            picked = {f: chosen[f] for f in families if f in members or members == "all"}
            if len(picked) < 2:
                continue
            mean_v = np.mean([versions[k][0] for k in picked.values()], axis=0)
            mean_t = np.mean([versions[k][1] for k in picked.values()], axis=0)
            entry = {"ensemble": _aiq(mean_t, held_t), "ensemble_val": _aiq(mean_v, held_v),
                     "families": {f: {"choice": list(k[1:]), "test": test_aiq[k], "val": val_aiq[k]}
                                  for f, k in picked.items()}}
            leader = max(picked, key=lambda f: val_aiq[picked[f]])
            keep = "ensemble"
            if val_aiq[picked[leader]] > entry["ensemble_val"] and paired_wins(
                    versions[picked[leader]][0], mean_v, held_v, seed) >= 0.95:
                keep = leader
            entry["kept"] = keep
            entry["kept_test"] = entry["ensemble"] if keep == "ensemble" else test_aiq[picked[keep]]
            report["rules"][rule if name == "all" else f"{rule} [{name}]"] = entry
            if rule == "tuned+platt" and name == "all":
                report["default_vs_baselines"] = _paired_vs_baselines(
                    mean_t if keep == "ensemble" else versions[picked[keep]][1], a, held_t)
                kept_v = mean_v if keep == "ensemble" else versions[picked[keep]][0]
                anchor = versions[("logreg", str(DEFAULTS["logreg"]), "0")]
                wins = paired_wins(kept_v, anchor[0], held_v, seed)
                for level in ANCHOR_LEVELS:
                    stay = wins < level
                    report["rules"][f"anchored@{level}"] = {
                        "kept": "anchor" if stay else keep, "wins": wins,
                        "kept_test": test_aiq[("logreg", str(DEFAULTS["logreg"]), "0")] if stay else entry["kept_test"]}
    chosen = {f: rule_choice("tuned+platt", f) for f in families}
    P_v = [versions[k][0] for k in chosen.values()]
    P_t = [versions[k][1] for k in chosen.values()]
    Qv = a["val_quality"]
    seen = np.isfinite(Qv)
    # stacking: simplex weights minimising the held-out Brier score of the weighted mean
    from scipy.optimize import nnls

    A = np.stack([p[seen] for p in P_v], axis=1)
    w, _ = nnls(A, Qv[seen])
    w = w / w.sum() if w.sum() > 0 else np.full(len(P_v), 1 / len(P_v))
    stacked = {"weights": dict(zip(chosen, np.round(w, 3).tolist(), strict=True)),
               "val": _aiq(sum(wi * p for wi, p in zip(w, P_v, strict=True)), held_v),
               "test": _aiq(sum(wi * p for wi, p in zip(w, P_t, strict=True)), held_t)}
    report["rules"]["tuned+platt [stacked]"] = {"ensemble": stacked["test"], "kept_test": stacked["test"],
                                                "weights": stacked["weights"], "kept": "stacked"}
    # greedy ensemble selection by held-out AIQ, with replacement (Caruana et al. 2004)
    bag: list[int] = []
    best_val = -np.inf
    for _ in range(10):
        trial = [(_aiq(np.mean([P_v[i] for i in bag + [j]], axis=0), held_v), j) for j in range(len(P_v))]
        value, j = max(trial)
        if value <= best_val:
            break
        bag.append(j)
        best_val = value
    greedy_t = _aiq(np.mean([P_t[i] for i in bag], axis=0), held_t)
    report["rules"]["tuned+platt [greedy]"] = {"ensemble": greedy_t, "kept_test": greedy_t, "kept": "greedy",
                                               "bag": [list(chosen)[i] for i in bag]}
    lg = lambda p: np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6)))  # noqa: E731
    logit_t = _aiq(1 / (1 + np.exp(-np.mean([lg(p) for p in P_t], axis=0))), held_t)
    report["rules"]["tuned+platt [logit mean]"] = {"ensemble": logit_t, "kept_test": logit_t, "kept": "logit"}
    return report


#: ensembles scored: every family, and subsets
ENSEMBLES = {"all": "all", "no mf": ("mlp", "logreg", "knn", "groups"), "lr+knn": ("logreg", "knn"),
             "no knn": ("mlp", "mf", "logreg", "groups")}


def summarize(runs: list[dict]) -> dict:
    """Per rule: the kept candidate's test AIQ minus the bar (mean over runs, per table, runs below it)
    and paired against the default rule (``tuned+platt``): mean difference and its standard error."""
    out = {}
    default = [r["rules"]["tuned+platt"]["kept_test"] for r in runs]
    for rule in runs[0]["rules"]:
        tables: dict[str, list[float]] = {}
        for r in runs:
            tables.setdefault(r["table"], []).append(r["rules"][rule]["kept_test"] - r["bar"])
        every = [d for ds in tables.values() for d in ds]
        paired = [r["rules"][rule]["kept_test"] - d for r, d in zip(runs, default, strict=True)]
        out[rule] = {"mean_vs_best_baseline": round(statistics.fmean(every), 5),
                     "runs_below": sum(d < 0 for d in every), "runs": len(every),
                     "per_table": {t: round(statistics.fmean(d), 5) for t, d in tables.items()},
                     "paired_vs_default": round(statistics.fmean(paired), 5),
                     "paired_se": round(statistics.stdev(paired) / len(paired) ** 0.5, 5) if len(paired) > 1 else None}
    paired = []  # the default against the better baseline on each run's test set
    for r in runs:
        diff = r["default_vs_baselines"][max(r["baselines"], key=r["baselines"].get)]
        if diff["ci95"] and diff["ci95"][0] is not None:
            paired.append({"table": r["table"], "seed": r["seed"], "aiq": round(diff["aiq"], 5),
                           "ci95": [round(v, 5) for v in diff["ci95"]]})
    out["tuned+platt"]["runs_below_beyond_paired_interval"] = [p for p in paired if p["ci95"][1] < 0]
    out["tuned+platt"]["paired_interval_width_median"] = (
        round(statistics.median(p["ci95"][1] - p["ci95"][0] for p in paired), 5) if paired else None)
    out["tuned+platt"]["closest_to_below"] = min(paired, key=lambda p: p["ci95"][1], default=None)
    return out


def main(argv: list[str] | None = None) -> int:
    from auto_selection_study import study_setup

    args, seeds, paths, names = study_setup(__doc__.splitlines()[0], argv)
    runs_dir = args.out / "tuning"
    runs_dir.mkdir(parents=True, exist_ok=True)
    cache = str(args.out / "feature_cache")
    jobs = [(t, str(paths[t]), s, cache, str(runs_dir)) for t in names for s in seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        files = list(pool.map(_one, *zip(*jobs, strict=True)))
        runs = list(pool.map(analyse, files, [j[0] for j in jobs], [j[2] for j in jobs]))
    report = {"seeds": seeds, "tables": names, "rules": summarize(runs)}
    (args.out / "auto_tuning_study.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
