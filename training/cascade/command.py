"""``router-ml cascade evaluate``: rebuild the training split, score it with the runtime artifacts, fit
cascade policies on validation and report them on test beside the router alone.

The split is the one ``router-ml train`` made (:func:`training.data.split_table` with the same
``--train-size``, the artifact's validation size and ``--seed``): the router and the answer scorer
were fitted on its training part, the policies are fitted on its validation part, and everything is
reported on its test part. The router artifact records the data fingerprint and split settings it
was trained with; a mismatch is an error, and when the training run's ``split.json`` lies beside the
artifact its test sample ids must equal the rebuilt test split's. Only torch-free runtime artifacts
are read (:class:`router_ml.Router`, ``router_ml.scorer.AnswerScorer``), the way serving will.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.cascade.agreement import agreement_matrix
from router_ml.cascade.combiner import Signals
from router_ml.errors import DataError, RouterMLError
from training.cascade.evaluate import evaluate_cascades
from training.data.loader import check_out_directory

__all__ = ["ScoreFn", "build_signals", "check_same_split", "check_split", "compact", "log_run", "run_cascade_evaluate"]

#: the policy families drawn in ``curves.png`` besides the headline (``report.json`` has them all)
PLOTTED = ("cascade", "chain", "chain_margin", "route_then_cascade_margin")
#: (prompts, models, responses) -> P(quality) per triple: ``AnswerScorer.score_many``'s signature
ScoreFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]


def check_split(router_dir: Path, manifest: dict[str, Any], table: Any, split: Any, *, train_size: float | int,
                seed: int) -> dict[str, Any]:
    """Refuse a split other than the router's own (module doc); return what was checked."""
    from training.checkpoint import sample_ids

    training = manifest.get("training") or {}
    config = training.get("config") or {}
    checked: dict[str, Any] = {}
    for key, ours in (("data.train_size", train_size), ("data.seed", seed)):
        theirs = config.get(key)
        if theirs is not None and float(theirs) != float(ours):
            raise RouterMLError(f"{router_dir}: the router was trained with {key}={theirs}, not {ours}; pass "
                                f"--{key.split('.')[1].replace('_', '-')} {theirs} to evaluate on its own split")
        checked[key] = theirs
    for candidate in (router_dir / "split.json", router_dir.parent / "split.json"):
        if candidate.is_file():
            saved = json.loads(candidate.read_text())
            rows = saved.get("test_rows")  # split.json files written before it lack it
            if saved.get("test_sample_ids") != sample_ids(table, split.test) or (
                    rows is not None and rows != split.test.tolist()):
                raise DataError(f"{candidate}: the training run's test records differ from the rebuilt split's; "
                                "check --data, --train-size and --seed")
            checked["split_json"] = str(candidate)
            break
    fingerprint = training.get("data_fingerprint")
    checked["data_fingerprint"] = None if not fingerprint else fingerprint == table.fingerprint()
    # the fingerprint covers every loaded field, so a data layer that reads more of the same file (response
    # text) changes it: with the run's own test records verified above, that is not a different split
    if checked["data_fingerprint"] is False and "split_json" not in checked:
        raise DataError(f"{router_dir}: the router was trained on other data (fingerprint {fingerprint[:12]}..., "
                        f"this file {table.fingerprint()[:12]}...) and no split.json beside it shows the same test "
                        "records; evaluate on the router's own data, or keep its training directory's split.json")
    return checked


def check_same_split(router_config: dict[str, Any], scorer_manifest: dict[str, Any], *, router: Any,
                     scorer: Any, router_fingerprint: str | None = None) -> None:
    """Refuse a scorer trained on another split than the router's, or on other data: its training records
    would include the router's validation or test rows, where the policies are fitted and scored on the
    scorer's (then in-sample) scores."""
    training = scorer_manifest.get("training") or {}
    fingerprints = (router_fingerprint, training.get("data_fingerprint"))
    if all(fingerprints) and fingerprints[0] != fingerprints[1]:  # the same numbers split other data otherwise
        raise RouterMLError(f"{scorer}: the answer scorer was trained on other data (fingerprint "
                            f"{fingerprints[1][:12]}...) than the router {router} ({fingerprints[0][:12]}...): its "
                            "training records may be the router's test records; train both on the same file with "
                            "the same --train-size and --seed")
    theirs = training.get("config") or {}
    if not theirs:  # a scoring function, or a scorer exported without its training config: nothing to check
        return
    for key, default in (("data.train_size", None), ("data.seed", None), ("data.val_size", 0.1)):
        a, b = router_config.get(key, default), theirs.get(key, default)
        if a is not None and b is not None and float(a) != float(b):
            raise RouterMLError(f"{scorer}: the answer scorer was trained with {key}={b}, the router {router} with "
                                f"{a}; a cascade needs both on one split (train both with the same --train-size, "
                                f"--seed and --set {key}=...)")


def _responses(table: Any, models: Sequence[str]) -> list[np.ndarray]:
    if not hasattr(table, "responses"):
        raise DataError("this router-ml's data layer carries no response text; a cascade needs each model's "
                        "answer (`<model>|response` columns or `response` in the outcomes)")
    return [table.responses(m) for m in models]


def build_signals(table: Any, rows: np.ndarray, *, router: Any, score_fn: ScoreFn) -> Signals:
    """Signals of ``rows`` (full-size arrays, NaN elsewhere) in the router's model order: its prior and
    cost estimate, the scorer's score of every response and the responses' pairwise agreement."""
    models = router.models
    texts = list(table.texts)
    n, m = len(texts), len(models)
    prompts = [texts[i] for i in rows]
    prior, cost_est, score = np.full((n, m), np.nan), np.full((n, m), np.nan), np.full((n, m), np.nan)
    prior[rows], cost_est[rows] = router.predict(prompts), router.costs(prompts)
    responses = _responses(table, models)
    for j, model in enumerate(models):
        have = rows[np.array([responses[j][i] is not None for i in rows], dtype=bool)]
        if len(have):
            score[have, j] = np.asarray(score_fn([texts[i] for i in have], [model] * len(have),
                                                 [responses[j][i] for i in have]), dtype=float)
    agreement = np.full((n, m, m), np.nan)
    agreement[rows] = agreement_matrix([[responses[j][i] for j in range(m)] for i in rows])
    return Signals(prior=prior, score=score, cost_est=cost_est, agreement=agreement)


def _load_scorer(path: str | Path) -> tuple[ScoreFn, str, dict[str, Any]]:
    """The scorer artifact's ``score_many``, the sha256 of its graph (recorded in the policies) and its manifest."""
    from router_ml.scorer import SCORER_GRAPH, AnswerScorer

    scorer = AnswerScorer.load(path)
    return scorer.score_many, scorer.manifest["files"][SCORER_GRAPH], scorer.manifest


def measure_scorer(path: str | Path, prompts: Sequence[str], models: Sequence[str], responses: Sequence[str],
                   *, warmup: int = 20) -> dict[str, Any]:
    """The scorer's time per scored answer as serving pays it: one answer per call, one onnxruntime thread
    (:class:`router_ml.cascade.Cascade` loads it so), p50 and p99 over the given answers in ms."""
    import time

    from router_ml.scorer import AnswerScorer

    scorer = AnswerScorer.load(path, intra_op_threads=1)
    triples = list(zip(prompts, models, responses, strict=True))
    for p, m, r in triples[:warmup]:
        scorer.score(p, m, r)
    times = []
    for p, m, r in triples:
        t0 = time.perf_counter()
        scorer.score(p, m, r)
        times.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99)), "answers": len(times),
            "threads": 1}


def _timing_sample(table: Any, rows: np.ndarray, models: Sequence[str], n: int, seed: int) -> tuple[list, ...]:
    """Up to ``n`` (prompt, model, response) triples of these rows, drawn with ``seed``."""
    responses = _responses(table, models)
    triples = [(table.texts[i], m, responses[j][i]) for i in rows for j, m in enumerate(models)
               if responses[j][i] is not None]
    pick = np.random.default_rng(seed).permutation(len(triples))[:n]
    return tuple(list(t) for t in zip(*(triples[k] for k in pick), strict=True)) if len(pick) else ([], [], [])


def run_cascade_evaluate(*, router: str | Path, scorer: str | Path | ScoreFn, data: str | Path,
                         train_size: float | int, seed: int, out: str | Path | None = None,
                         scorer_latency_ms: float | None = None, n_boot: int = 200, grid: int = 21,
                         headline: str = "default", tracking: bool = False, tracking_uri: str | None = None,
                         experiment: str | None = None, **load_options: Any) -> dict[str, Any]:
    """The command (module doc): returns the report; with ``out`` writes ``report.json``, one
    ``policy_<name>.json`` per policy family (``policy.json``: the headline one) and ``curves.png``.
    ``scorer`` is a scorer artifact path or a ``ScoreFn``; ``headline`` names the policy family whose
    numbers are the report's ``test`` (``"auto"``: chosen on validation; ``"default"``: chain_margin unless
    validation clearly prefers another, :data:`training.cascade.evaluate.GUARD_AIQ`); ``tracking`` logs the
    evaluation as an MLflow run beside the router's (:func:`log_run`). ``scorer_latency_ms`` (per scored
    answer, for the latency report): None measures a scorer artifact's p50 on 200 test answers
    (:func:`measure_scorer`; 1 ms is assumed for a ``ScoreFn``)."""
    from router_ml import Router
    from training.costs import observed_costs
    from training.data import load_traffic, split_table

    if out is not None:  # found now, not after the evaluation
        check_out_directory(out, "report.json, the policies and curves.png")
    router_dir = Path(router)
    loaded = Router.load(router_dir)
    table, _ = load_traffic(data, **load_options)
    missing = [m for m in loaded.models if m not in table.models]
    if missing:
        raise DataError(f"{data}: no outcomes of the router's models {missing}; evaluate on the router's data")
    config = (loaded.manifest.get("training") or {}).get("config") or {}
    split = split_table(table, train_size=train_size, val_size=config.get("data.val_size", 0.1), seed=seed)
    checked = check_split(router_dir, loaded.manifest, table, split, train_size=train_size, seed=seed)
    score_fn, scorer_sha256, scorer_manifest = (_load_scorer(scorer) if isinstance(scorer, str | Path)
                                                else (scorer, None, {}))
    check_same_split(config, scorer_manifest, router=router_dir, scorer=scorer,
                     router_fingerprint=(loaded.manifest.get("training") or {}).get("data_fingerprint"))
    unscored = [m for m in loaded.models if m not in scorer_manifest.get("models", loaded.models)]
    if unscored:  # found now, not as a traceback after the router's scoring
        raise RouterMLError(f"{scorer}: the answer scorer does not score {unscored}, which the router {router_dir} "
                            f"chooses; train it on data with those models' answers")
    silent = [m for m in loaded.models if not any(r is not None for r in table.responses(m))]
    if silent:  # a cascade scores answers: without them every policy was fitted on nothing
        raise DataError(f"{data}: no recorded response of {silent}; a cascade scores each model's answer text "
                        "(field outcomes.<model>.response, or a '<model>|response' column)")
    rows = np.concatenate([split.val, split.test])
    signals = build_signals(table, rows, router=loaded, score_fn=score_fn)
    latency_source = "given"
    timing = None
    if scorer_latency_ms is None and isinstance(scorer, str | Path):
        timing = measure_scorer(scorer, *_timing_sample(table, split.test, loaded.models, 200, seed))
        scorer_latency_ms, latency_source = timing["p50_ms"], "measured"
    elif scorer_latency_ms is None:
        scorer_latency_ms, latency_source = 1.0, "assumed"
    order = [table.models.index(m) for m in loaded.models]
    cost = observed_costs(table, split.train)[:, order]
    latency = table.latency_s[:, order]
    report, fitted = evaluate_cascades(
        signals, table.quality[:, order], cost, val_rows=split.val, test_rows=split.test, models=loaded.models,
        wtps=np.asarray(loaded.cost_model.knob_grid or (0.0, float("inf"))), scorer_latency_ms=scorer_latency_ms,
        latency_s=None if np.isnan(latency).all() else latency, n_boot=n_boot, seed=seed, grid=grid,
        headline=headline)
    # serving checks these: the combiner's weights are calibrated on this router's and this scorer's outputs
    policies = {name: replace(p, router_sha256=loaded.manifest["files"]["router.onnx"], scorer_sha256=scorer_sha256)
                for name, p in fitted.items()}
    report["scorer_latency"] = {"ms": scorer_latency_ms, "source": latency_source, **(timing or {})}
    report["data"], report["data_fingerprint"] = str(data), table.fingerprint()
    report["split"] = {"train_size": train_size, "seed": seed, **split.sizes(), "checked": checked}
    if out is not None:
        report["files"] = write_outputs(Path(out), report, policies)
    if tracking:
        report["mlflow"] = log_run(report, router_manifest=loaded.manifest, scorer_manifest=scorer_manifest,
                                   router=router_dir, scorer=scorer if isinstance(scorer, str | Path) else None,
                                   tracking_uri=tracking_uri, experiment=experiment)
    return report


def log_run(report: dict[str, Any], *, router_manifest: dict[str, Any], scorer_manifest: dict[str, Any],
            router: Path, scorer: str | Path | None, tracking_uri: str | None = None,
            experiment: str | None = None) -> dict[str, Any]:
    """Log a cascade evaluation as an MLflow run that ``router-ml compare --experiment`` ranks beside the
    router runs of the same split: tags ``router`` = ``cascade:<headline family>`` and ``featurizer`` =
    ``scorer:<kind>``, the router run's data fingerprint and split parameters (so the same-split check
    holds), the headline's test ``aiq`` / ``savings_at_iso_quality`` / ``best_quality`` under the
    router runs' names, every family's as ``<family>.<metric>``, the router alone's as ``router_only.*``,
    ``scorer_auc.<model>``, and the output files. The experiment defaults to the router's own."""
    from training.tracking import Tracker

    training = router_manifest.get("training") or {}
    config = training.get("config") or {}
    test, split = report["test"], report["split"]
    metrics: dict[str, float | None] = {k: test.get(k) for k in ("aiq", "savings_at_iso_quality", "best_quality")}
    metrics.update({f"router_only.{k}": test["router_only"].get(k)
                    for k in ("aiq", "savings_at_iso_quality", "best_quality")})
    for name, policy in report["policies"].items():
        metrics.update({f"{name}.{k}": policy.get(k) for k in ("aiq", "savings_at_iso_quality", "best_quality")})
    metrics.update({f"scorer_auc.{m}": v for m, v in report["scorer_auc"].items()})
    scorer_run = (scorer_manifest.get("training") or {}).get("mlflow_run_id") or ""
    with Tracker(experiment=experiment or config.get("tracking.experiment") or "router-ml", tracking_uri=tracking_uri,
                 run_name=f"cascade-{test['policy']}") as tracker:
        tracker.set_tags({"router": f"cascade:{test['policy']}",
                          "featurizer": f"scorer:{scorer_manifest.get('scorer', 'custom')}", "kind": "cascade",
                          "router_ml.router_run_id": training.get("mlflow_run_id") or "",
                          "router_ml.scorer_run_id": scorer_run})
        tracker.log_params({"data_fingerprint": training.get("data_fingerprint") or report["data_fingerprint"],
                            "data.seed": config.get("data.seed", split["seed"]),
                            "data.train_size": config.get("data.train_size", split["train_size"]),
                            "data.val_size": config.get("data.val_size", 0.1),
                            **{f"split.{k}": split[k] for k in ("train", "val", "test")},
                            "cascade.headline": test["policy"], "cascade.router": str(router),
                            "cascade.scorer": str(scorer) if scorer is not None else "function",
                            "cascade.data": report["data"], "cascade.reference_model": test["reference_model"]})
        tracker.log_metrics(metrics)
        for path in (report.get("files") or {}).values():
            tracker.log_artifact(path, "cascade")
    return {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri, "error": tracker.error}


def compact(report: dict[str, Any]) -> dict[str, Any]:
    """The report without curves and per-point tables (what the command prints; ``report.json`` has all)."""
    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k not in ("curve", "curves", "points", "singles")}

    return {**report, "policies": {k: strip(v) for k, v in report["policies"].items()},
            "router_only": strip(report["router_only"]),
            "baselines": {k: strip(v) for k, v in report["baselines"].items() if isinstance(v, dict) and k != "singles"
                          and k != "curves"}}


def write_outputs(out: Path, report: dict[str, Any], policies: dict[str, Any]) -> dict[str, str]:
    """``report.json``, the policies' JSON (``policy.json``: the headline's) and the plot of the policies'
    test curves beside the router alone, random, the oracle and the single models."""
    from training.plots import plot_cost_quality

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, policy in policies.items():
        headline = name == report["test"]["policy"]
        files[name] = str(policy.save(out / ("policy.json" if headline else f"policy_{name}.json")))
    # the headline and each kind's own hull beside the router; the oracle (far above) would flatten the rest
    drawn = (*PLOTTED, report["test"]["policy"])
    curves = {name: p["curve"] for name, p in report["policies"].items() if name in drawn}
    curves["router only"] = report["router_only"]["curve"]
    curves["random"] = report["baselines"]["curves"]["random"]
    files["plot"] = str(plot_cost_quality(out / "curves.png", curves=curves, singles=report["baselines"]["singles"],
                                          title="cascades vs router alone (test)"))
    files["report"] = str(out / "report.json")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return files
