"""Compare trained router variants: saved routers on one log, or MLflow runs; one ranked table.

**Saved routers on a log** (:func:`compare_routers`): each checkpoint or artifact directory is
scored by :func:`training.evaluate_saved.evaluate_router` on the same data with the same estimator (on
logged traffic SNIPS by default: see there), and ranked by AIQ, or by quality or cost at each
router's default knob, each with its bootstrap interval and the effective sample size behind it -
so a ranking whose intervals overlap, or that rests on a handful of matching logged choices, shows
it. This is how the next router is picked from the traffic the current one logged.

**Cascade evaluations** (:func:`compare_cascades`): the ``report.json`` files ``router-ml cascade
evaluate --out DIR`` writes - every policy family, the router alone and the baselines of each - on
the same data and train size (seeds may differ: one report per seed), as mean and standard deviation
over the reports per policy, ranked by AIQ, savings at iso-quality or best quality.

**MLflow runs** (:func:`compare_runs`):

A run is comparable with another when both were trained on the same data (``data_fingerprint``)
and split the same way (seed, train/validation sizes): then they were tested on the same prompts.
:func:`compare_runs` refuses to rank runs that differ there unless ``allow_mixed`` - a mixed table
would rank data sets, not routers.

Runs are found by experiment name(s), run ids, or an MLflow filter string (for example
``params.data_fingerprint = '...'``); only training runs (those tagged with a ``router``) are
listed, so sweep parents and earlier comparisons are skipped. The figure draws each run's
cost-quality curve from its logged ``router/metrics.json`` next to the single models, their hull,
random and oracle of the first run, and is logged to MLflow as the artifact of a comparison run
(tagged ``router_ml.comparison``) in the first run's experiment. Runs that did not finish - FAILED (among
them runs whose MLflow tracking stopped part-way: their record is incomplete; the tag
``router_ml.tracking_error`` says why), KILLED or still RUNNING - are left out and counted in the table's
footer (``left_out`` in the JSON); a run named by id that did not finish is refused, saying why. The table
shows each run's name (a sweep's child runs are named by their setting and seed); the numeric parameters in
a row (``seed``, ``test_records``) are numbers.

The store is only read (the comparison run aside): a missing SQLite or file store is an error, never created,
and a store that cannot be opened or a server that does not answer is one line naming the URI and
``MLFLOW_TRACKING_URI``, within seconds (:func:`training.tracking.check_store`, :func:`~training.tracking.fail_fast`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router_ml.errors import RouterMLError, UsageError
from training.evaluation import read_metrics_file

__all__ = ["CASCADE_SORTS", "COLUMNS", "LOWER_IS_BETTER", "ROUTER_SORTS", "compare_cascades", "compare_routers",
           "compare_runs", "format_cascade_table", "format_router_table", "format_table"]

# (column, MLflow metric) - the table's metric columns
COLUMNS = (
    ("aiq", "aiq"), ("apgr", "apgr"), ("cpt_50", "cpt_50"), ("savings_at_iso_quality", "savings_at_iso_quality"),
    ("best_quality", "best_quality"), ("latency_p50_us", "runtime.p50_us_64"), ("fit_seconds", "fit_seconds"),
)
LOWER_IS_BETTER = {"cpt_50", "savings_at_iso_quality", "latency_p50_us", "fit_seconds"}
# what must agree for two runs to have been tested on the same prompts
_SAME_DATA = ("data_fingerprint",)
_SAME_SPLIT = ("data.seed", "data.train_size", "data.val_size", "split.train", "split.val", "split.test")


#: ``compare --router`` sort keys -> (where in a router's row, higher is better)
ROUTER_SORTS = {"aiq": ("aiq", True), "quality": ("quality", True), "cost": ("cost", False)}


def compare_routers(routers: Sequence[str | Path], data: str | Path, *, sort: str = "aiq",
                    **options: Any) -> dict[str, Any]:
    """Score each saved router (checkpoint or artifact directory) on ``data`` and rank them by ``sort``
    (:data:`ROUTER_SORTS`; ties and missing values last). ``options`` go to
    :func:`training.pipeline.evaluate_router` (estimator, prices, load options...). Returns
    ``{"data", "estimator", "sort", "ranking": [row, ...], "routers": [full report, ...]}``. Every router
    is scored on the same bootstrap resamples (seed 0) and the same knob refinement (the most any of them was
    trained with), and the routers must choose among the same models; each row after the first has ``vs_first``: its
    AIQ and default-knob quality and cost minus the first's, with the paired 95% interval of each
    difference (None when the two were scored on different prompts).

    >>> compare_routers(["runs/a", "runs/b"], "log.jsonl")["ranking"][0]["router_dir"]   # doctest: +SKIP
    'runs/b'
    """
    from training.pipeline import evaluate_router

    if sort not in ROUTER_SORTS:
        raise RouterMLError(f"--sort {sort!r}: with --router choose one of {', '.join(ROUTER_SORTS)}")
    if not routers:
        raise RouterMLError("give at least one --router DIR")
    from training.saved import load_saved

    saved = [load_saved(path) for path in routers]
    sets = {frozenset(s.models) for s in saved}  # by name: each router's outputs are read by name
    if len(sets) > 1:  # each AIQ is over its own models' cost range and baselines: not comparable
        listed = "; ".join(f"{s.path}: {list(s.models)}" for s in saved)
        raise RouterMLError(f"the routers choose among different models ({listed}); an AIQ is measured over the "
                            "router's own models, so these do not compare: compare routers trained on the same "
                            "models")
    # one sweep for all: the AIQ of the same weights moved with the eval.knob_refine each was trained with
    refine = max(s.knob_refine for s in saved)
    reports = [evaluate_router(s, data, bootstrap_seed=0, keep_draws=True, knob_refine=refine, **options)
               for s in saved]
    draws = [report.pop("draws") for report in reports]
    rows = []
    for report in reports:
        test, knob = report["test"], report["default_knob"]
        ci = knob.get("ci95", {})
        off = test.get("off_policy", {})
        rows.append({"router_dir": report["router_dir"], "router": report["router"], "kind": report["router_kind"],
                     "scored": report["scored"], "aiq": test.get("aiq"), "aiq_ci95": test.get("ci95", {}).get("aiq"),
                     "willingness_to_pay": knob["willingness_to_pay"], "quality": knob["quality"],
                     "quality_ci95": ci.get("quality"), "cost": knob["cost"], "cost_ci95": ci.get("cost"),
                     "ess": knob.get("effective_sample_size"),
                     "ess_curve_median": off.get("effective_sample_size", {}).get("median"),
                     "biased": report["biased"]})
    key, higher = ROUTER_SORTS[sort]
    order = sorted(range(len(rows)), key=lambda i: (rows[i][key] is None,
                                                    -rows[i][key] if higher and rows[i][key] is not None
                                                    else rows[i][key] or 0.0))
    first = order[0]
    for i in order[1:]:
        rows[i]["vs_first"] = _paired_vs_first(rows[i], rows[first], draws[i], draws[first])
    return {"data": str(data), "estimator": reports[0]["test"]["estimator"], "sort": sort,
            "ranking": [rows[i] for i in order], "routers": reports}


def _paired_vs_first(row: dict[str, Any], first: dict[str, Any], mine: dict[str, Any],
                     theirs: dict[str, Any]) -> dict[str, Any] | None:
    """This router's AIQ and default-knob quality and cost minus the first-ranked router's, each with the
    95% interval of the difference over the same bootstrap resamples of the same prompts (None when the
    two were scored on different prompts: a checkpoint drops the prompts it was trained on)."""
    import numpy as np

    from training.baselines import paired_differences

    if not np.array_equal(mine["rows"], theirs["rows"]):
        return None
    diff = paired_differences({**row, "draws": mine}, {**first, "draws": theirs}, keys=("aiq", "quality", "cost"))
    intervals = diff.pop("ci95", {})
    return {**diff, **{f"{key}_ci95": ci for key, ci in intervals.items()}}


#: ``compare --cascade`` sort keys -> higher is better
CASCADE_SORTS = {"aiq": True, "savings_at_iso_quality": False, "best_quality": True}


def compare_cascades(directories: Sequence[str | Path], *, sort: str = "aiq") -> dict[str, Any]:
    """Summarise ``cascade evaluate`` reports (``DIR/report.json``) per policy over the reports: mean and
    standard deviation of each headline number and how many reports reach the reference's quality.
    Refuses reports of other data or train sizes (their test prompts differ in kind, not by seed)."""
    import numpy as np

    if sort not in CASCADE_SORTS:
        raise RouterMLError(f"--sort {sort!r}: with --cascade choose one of {', '.join(CASCADE_SORTS)}")
    if not directories:
        raise RouterMLError("give at least one --cascade DIR (written by 'router-ml cascade evaluate --out DIR')")
    reports = []
    for directory in directories:
        path = Path(directory) / "report.json"
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise RouterMLError(f"{path}: not a cascade evaluation report ({exc}); run 'router-ml cascade "
                                "evaluate --out DIR' first") from exc
    identity = {(r.get("data_fingerprint"), r["split"]["train_size"], r["test"]["reference_model"]) for r in reports}
    if len(identity) > 1:
        raise RouterMLError(f"the reports differ in data, train size or reference model "
                            f"({sorted(map(str, identity))}); compare evaluations of one data set")
    rows: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        for name, policy in report["policies"].items():
            rows.setdefault(name, []).append(policy)
        rows.setdefault("router only", []).append(report["router_only"])
        for name in ("best-single", "random", "oracle"):
            rows.setdefault(name, []).append(report["baselines"][name])
    table = []
    for name, values in rows.items():
        row: dict[str, Any] = {"policy": name, "reports": len(values)}
        for key in CASCADE_SORTS:
            have = [v[key] for v in values if v.get(key) is not None]
            row[key] = float(np.mean(have)) if have else None
            row[f"{key}_sd"] = float(np.std(have, ddof=1)) if len(have) > 1 else None
        row["reached"] = sum(v.get("savings_at_iso_quality") is not None for v in values)
        table.append(row)
    higher = CASCADE_SORTS[sort]
    table.sort(key=lambda r: (r[sort] is None, -r[sort] if higher and r[sort] is not None else r[sort] or 0.0))
    return {"reports": [str(d) for d in directories], "seeds": [r["split"]["seed"] for r in reports],
            "reference_model": reports[0]["test"]["reference_model"],
            "headline": sorted({r["test"]["policy"] for r in reports}), "sort": sort, "ranking": table}


def format_cascade_table(result: dict[str, Any]) -> str:
    """``compare --cascade``'s ranking as an aligned text table (mean ± sd over the reports)."""
    def cell(row: dict[str, Any], key: str, spec: str) -> str:
        sd = row[f"{key}_sd"]
        return _fmt(row[key], spec) + ("" if sd is None else f" ± {format(sd, spec)}")

    head = ("#", "policy", "AIQ", "savings@iso", "reached", "best quality")
    lines = [head] + [(str(rank), row["policy"], cell(row, "aiq", ".4f"), cell(row, "savings_at_iso_quality", ".3f"),
                       f"{row['reached']}/{row['reports']}", cell(row, "best_quality", ".4f"))
                      for rank, row in enumerate(result["ranking"], start=1)]
    footer = (f"{len(result['reports'])} cascade evaluation(s), seeds {result['seeds']}, reference "
              f"{result['reference_model']}, headline {', '.join(result['headline'])}; sorted by {result['sort']}")
    return _aligned(lines, left=2) + "\n" + footer


def format_router_table(result: dict[str, Any]) -> str:
    """``compare --router``'s ranking as an aligned text table (intervals are 95% bootstrap)."""
    def band(value: Any, ci: Any, spec: str) -> str:
        text = _fmt(value, spec)
        return text if not ci or ci[0] is None else f"{text} [{format(ci[0], spec)}, {format(ci[1], spec)}]"

    key = result["sort"]
    spec = ".3e" if key == "cost" else "+.4f"

    def versus(row: dict[str, Any]) -> str:
        diff = row.get("vs_first")
        if not diff or key not in diff:
            return "-" if "vs_first" not in row else "n/a"
        return band(diff[key], diff.get(f"{key}_ci95"), spec)

    head = ("#", "router", "AIQ", "quality @ default knob", "cost @ default knob (USD)", "ESS", f"{key} - #1's")
    lines = [head] + [(str(rank), row["router_dir"], band(row["aiq"], row["aiq_ci95"], ".4f"),
                       band(row["quality"], row["quality_ci95"], ".4f"), band(row["cost"], row["cost_ci95"], ".3e"),
                       _fmt(row["ess"], ".0f"), versus(row)) for rank, row in enumerate(result["ranking"], start=1)]
    footer = (f"{len(result['ranking'])} routers on {result['data']} ({result['estimator']}), sorted by "
              f"{result['sort']}; ESS = effective sample size at the default knob; the last column is paired "
              f"(same bootstrap resamples of the same prompts): an interval that excludes 0 separates the two "
              f"beyond the noise of the data; n/a = scored on different prompts")
    if any(row["biased"] for row in result["ranking"]):
        footer += "; WARNING: no logged propensities, estimates biased (exposure weights)"
    return _aligned(lines, left=2) + "\n" + footer


def _aligned(lines: list[tuple[str, ...]], *, left: int) -> str:
    """Rows as columns: the first ``left`` columns left-aligned, the rest right-aligned; a rule under the head."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths,
                                                                                                      strict=True)))
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def _client(tracking_uri: str | None):
    """MLflow, a client of the store and its URI, once the store is known to answer: a
    store that is not there or cannot be opened, or a server that does not answer, is a
    :class:`~training.tracking.TrackingStoreError` naming the URI and where it came from."""
    from training.tracking import (
        TrackingStoreError,
        check_store,
        default_tracking_uri,
        fail_fast,
        quiet_retries,
        store_problem,
    )

    fail_fast()  # a server that does not answer: seconds, not MLflow's minutes of retries
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = tracking_uri or default_tracking_uri()
    check_store(uri, create=False)  # reading creates no store, and an unopenable SQLite file fails now
    import mlflow

    try:
        with quiet_retries():  # urllib3's "Retrying ..." warning: the one line below says it all
            client = mlflow.MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as exc:
        raise TrackingStoreError(store_problem(uri, exc)) from None
    return mlflow, client, uri


def _find(client, mlflow, *, experiments: Sequence[str], run_ids: Sequence[str], filter_string: str | None,
          store_uri: str, left_out: dict[str, int]):
    """The finished training runs selected; ``left_out`` counts the training runs left out by status."""
    from training.tracking import ERROR_TAG, TrackingStoreError, redact_uri, store_problem

    uri = redact_uri(store_uri)  # for messages: a password never printed

    runs = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except mlflow.exceptions.MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise TrackingStoreError(store_problem(store_uri, exc)) from None
            raise RouterMLError(f"run {run_id}: not found in {uri} ({exc.message}); check the run id and "
                                "MLFLOW_TRACKING_URI") from None
        # a run named by id is never left out without a word (an experiment's unfinished runs are)
        if "router" not in run.data.tags:
            raise RouterMLError(f"run {run_id}: not a training run of router-ml (no 'router' tag); give the id of a "
                                "run 'router-ml train' logged")
        if run.info.status != "FINISHED":
            why = run.data.tags.get(ERROR_TAG)
            raise RouterMLError(f"run {run_id}: {run.info.status}, not finished - it has no complete test metrics "
                                "to compare" + (f" (MLflow tracking stopped part-way: {why})" if why else "")
                                + "; train it again or leave it out")
        runs.append(run)
    if experiments or (filter_string and not run_ids):
        names = list(experiments)
        if names:
            ids = []
            for name in names:
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    known = sorted(e.name for e in client.search_experiments())
                    raise RouterMLError(f"experiment '{name}' not found in {uri}; experiments there: {known} (check "
                                        "MLFLOW_TRACKING_URI)")
                ids.append(exp.experiment_id)
        else:
            ids = [e.experiment_id for e in client.search_experiments()]
        try:
            found = client.search_runs(ids, filter_string=filter_string or "", max_results=5000,
                                       order_by=["attributes.start_time ASC"])
        except mlflow.exceptions.MlflowException as exc:
            raise RouterMLError(f"invalid --filter {filter_string!r}: {exc.message}") from None
        runs.extend(found)
    elif filter_string:
        runs = [r for r in runs if r.info.run_id in {x.info.run_id for x in client.search_runs(
            [r.info.experiment_id for r in runs], filter_string=filter_string)}]
    seen, out = set(), []
    for run in runs:
        if run.info.run_id in seen or "router" not in run.data.tags:
            continue
        seen.add(run.info.run_id)
        if run.info.status != "FINISHED":
            left_out[run.info.status] = left_out.get(run.info.status, 0) + 1
            continue
        out.append(run)
    return out


def _download_metrics(client, run_id: str) -> dict[str, Any] | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "router/metrics.json", tmp)
        except Exception:  # a run logged without its router directory has no curve to draw
            return None
        return read_metrics_file(path)


def _key(run, names: Sequence[str]) -> tuple:
    return tuple(run.data.params.get(n) for n in names)


def _number(text: str | None) -> int | float | str | None:
    """A parameter MLflow stored as text, as the number it was (``"0"`` -> 0); other text as it is."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return text
        return number if math.isfinite(number) else text  # strict JSON: no NaN or infinity


def compare_runs(*, experiments: Sequence[str] = (), run_ids: Sequence[str] = (), filter_string: str | None = None,
                 sort: str = "aiq", allow_mixed: bool = False, plot: str | Path | None = "comparison.png",
                 log_to_mlflow: bool = True, tracking_uri: str | None = None) -> dict[str, Any]:
    """Rank the selected training runs by ``sort`` and draw their curves; returns the JSON shape
    ``{"runs": [...], "sort": ..., "plot": ..., "comparison_run_id": ..., "mixed": bool}``."""
    columns = dict(COLUMNS)
    if sort not in columns:
        raise RouterMLError(f"--sort {sort!r}: choose one of {', '.join(columns)}")
    if not experiments and not run_ids and not filter_string:
        raise UsageError("select runs with --experiment NAME, --run-id ID or --filter EXPR")
    from training.tracking import redact_uri

    mlflow, client, store_uri = _client(tracking_uri)
    uri = redact_uri(store_uri)
    left_out: dict[str, int] = {}
    runs = _find(client, mlflow, experiments=experiments, run_ids=run_ids, filter_string=filter_string,
                 store_uri=store_uri, left_out=left_out)
    if not runs:
        raise RouterMLError("no finished training runs match the selection"
                            + (f" ({_left_out_text(left_out)})" if left_out else ""))
    data_keys = {_key(r, _SAME_DATA) for r in runs}
    split_keys = {_key(r, _SAME_DATA + _SAME_SPLIT) for r in runs}
    mixed = len(split_keys) > 1
    if mixed and not allow_mixed:
        what = "data" if len(data_keys) > 1 else "splits"
        groups = {}
        for r in runs:
            groups.setdefault(_key(r, _SAME_DATA + _SAME_SPLIT), []).append(r.info.run_id[:8])
        detail = "; ".join(f"fingerprint {k[0]}, seed {k[1]}, train_size {k[2]}: runs {', '.join(v)}"
                           for k, v in groups.items())
        raise RouterMLError(f"these runs were trained or tested on different {what}, so their metrics are not "
                            f"comparable ({detail}); narrow the selection (e.g. --filter \"params.data_fingerprint "
                            f"= '...'\") or pass --allow-mixed")
    rows, curves = [], {}
    singles = baseline_curves = None
    for run in runs:
        m, p, t = run.data.metrics, run.data.params, run.data.tags
        row = {"run_id": run.info.run_id, "run_name": run.info.run_name, "experiment_id": run.info.experiment_id,
               "router": t.get("router"), "featurizer": t.get("featurizer"),
               "data_fingerprint": p.get("data_fingerprint"), "seed": _number(p.get("data.seed")),
               "test_records": _number(p.get("split.test"))}
        row.update({col: m.get(metric) for col, metric in COLUMNS})
        rows.append(row)
        logged = _download_metrics(client, run.info.run_id) if plot else None
        if logged:
            curves[f"{row['router']}/{row['featurizer']} {run.info.run_id[:8]}"] = logged["curve"]
            if singles is None and logged.get("singles"):
                singles, baseline_curves = logged["singles"], logged.get("baseline_curves", {})
    worst = float("inf") if sort in LOWER_IS_BETTER else float("-inf")
    rows.sort(key=lambda r: worst if r[sort] is None else r[sort], reverse=sort not in LOWER_IS_BETTER)
    result: dict[str, Any] = {"sort": sort, "mixed": mixed, "tracking_uri": uri, "runs": rows,
                              "left_out": dict(sorted(left_out.items())), "plot": None, "comparison_run_id": None}
    if plot and curves:
        from training.plots import plot_cost_quality

        drawn = dict(curves)
        for name in ("random", "oracle"):
            if baseline_curves and name in baseline_curves:
                drawn[name] = baseline_curves[name]
        costs = [v["cost"] for v in (singles or {}).values()]
        path = plot_cost_quality(plot, curves=drawn, singles=singles or {},
                                 title=f"{len(curves)} routers compared", log_x=bool(costs) and min(costs) > 0)
        result["plot"] = str(path)
        if log_to_mlflow:
            try:
                result["comparison_run_id"] = _log_comparison(client, runs[0].info.experiment_id, path, result)
            except RouterMLError as exc:
                result["comparison_error"] = str(exc)
    return result


def _log_comparison(client, experiment_id: str, png: Path, result: dict[str, Any]) -> str:
    run = client.create_run(experiment_id, run_name="comparison",
                            tags={"router_ml.comparison": "true",
                                  "router_ml.compared_runs": ",".join(r["run_id"] for r in result["runs"])})
    try:
        client.log_artifact(run.info.run_id, str(png), "comparison")
        client.log_text(run.info.run_id, json.dumps({k: v for k, v in result.items() if k != "comparison_run_id"},
                                                    indent=1), "comparison/table.json")
    except Exception as exc:  # the comparison run is ended, not left RUNNING; the table is printed all the same
        with contextlib.suppress(Exception):
            client.set_terminated(run.info.run_id, status="FAILED")
        raise RouterMLError(f"the comparison could not be logged to MLflow run {run.info.run_id} "
                            f"({type(exc).__name__}: {exc}); pass --no-log to leave it out") from None
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _left_out_text(left_out: dict[str, int]) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(left_out.items()))
    return f"left out {sum(left_out.values())} unfinished training run(s): {counts}"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(result: dict[str, Any]) -> str:
    """The comparison as an aligned text table (the CLI's default output)."""
    head = ("run", "name", "router", "featurizer", "AIQ", "APGR", "CPT50", "savings@iso", "best q", "p50 us",
            "fit s")
    lines = [head]
    for r in result["runs"]:
        lines.append((r["run_id"][:8], r["run_name"] or "-", r["router"] or "-", r["featurizer"] or "-",
                      _fmt(r["aiq"], ".4f"),
                      _fmt(r["apgr"], ".3f"), _fmt(None if r["cpt_50"] is None else 100 * r["cpt_50"], ".1f"),
                      _fmt(r["savings_at_iso_quality"], ".3f"), _fmt(r["best_quality"], ".4f"),
                      _fmt(r["latency_p50_us"], ".0f"), _fmt(r["fit_seconds"], ".1f")))
    footer = f"sorted by {result['sort']}"
    if result["mixed"]:
        footer += "; WARNING: runs trained/tested on different data or splits (--allow-mixed)"
    if result.get("left_out"):
        footer += f"; {_left_out_text(result['left_out'])}"
    if result["plot"]:
        footer += f"; figure: {result['plot']}"
    if result["comparison_run_id"]:
        footer += f" (logged to MLflow run {result['comparison_run_id']})"
    if result.get("comparison_error"):
        footer += f"; NOT logged: {result['comparison_error']}"
    return "\n".join([_aligned(lines, left=4), footer])
