"""``train_router``: load -> split -> featurize -> train -> evaluate -> save (saved routers are scored by
:mod:`training.evaluate_saved`, re-exported here).

Everything a run decides is derived from the config and the data: the seed is set here (never at
import), the split is the data layer's deterministic grouped split, and the router directory
holds the weights (safetensors), the resolved config, the featurizer identity, the cost model,
the split's identity and the test metrics - enough to evaluate the router again on any data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router_ml import metrics
from router_ml.errors import DataError, RouterMLError
from router_ml.policy import CostModel, estimate_input_tokens, knob_grid
from router_ml.pricing import PriceCatalog
from training.baselines import BASELINES, evaluate_held_out, paired_differences
from training.baselines import summary as metrics_summary
from training.checkpoint import CHECKPOINT_FORMAT, check_out_dir, id_blocks, write_split
from training.config import TrainConfig, load_config, validate
from training.costs import column_means, fit_cost_model, observed_costs
from training.data import LoadReport, Split, TrafficTable, load_traffic, split_table
from training.data.columns import is_blank
from training.evaluate_saved import evaluate_many, evaluate_router  # their home before they moved
from training.evaluation import HeldOut, score_predictions, scoreable_rows, write_metrics_file
from training.featurizers import FeatureMatrix, as_feature_matrix
from training.offpolicy import Completion, complete_targets
from training.parallel import ordered_map, workers_for
from training.progress import chunks, scoped_by_progress_flag
from training.routers import ROUTERS, TorchRouter
from training.routers.auto_choice import log_selection
from training.routers.auto_encoder import encoder_candidate_config, encoder_skipped
from training.routers.auto_groups import auto_group_labels
from training.routers.neural import ROUTER_WEIGHT_FILES, check_groups, encoder_settings
from training.stages import Stages, return_free_memory
from training.trainer import Batchable, distributed_context, resolve_device

__all__ = ["CHECKPOINT_FORMAT", "evaluate_many", "evaluate_router", "train_router"]

log = logging.getLogger("router_ml.train")


@dataclass
class Prepared:
    table: TrafficTable
    report: LoadReport
    split: Split
    prices: PriceCatalog | None
    cost: np.ndarray
    cost_model: CostModel
    two_model: tuple[int, int] | None


def _two_model(table: TrafficTable, rows: np.ndarray) -> tuple[int, int] | None:
    if len(table.models) != 2:
        return None
    return metrics.weak_and_strong(column_means(table.quality, rows))


#: the fewest training records a split may leave (a count of 1 read as "all of it" left one; a few-record
#: router is still something to evaluate beside others)
MIN_TRAIN_RECORDS = 5


def _check_split(split: Any, train_size: float, val_size: float) -> None:
    """A split that leaves something to train on and to test on, or an error naming the setting to change."""
    sizes = split.sizes()
    if not sizes["test"]:
        raise DataError(f"the split leaves no test records ({sizes}): data.train_size (--train-size) = "
                        f"{train_size:g} takes every record; give a smaller count or a share below 1, e.g. 0.7")
    if sizes["train"] < MIN_TRAIN_RECORDS:
        total = sum(sizes.values())
        if sizes["val"] and sizes["train"] < sizes["val"]:
            blame = (f"data.val_size = {val_size:g} takes {sizes['val']} of the {sizes['train'] + sizes['val']} "
                     "train + validation records")
        elif train_size >= 1:
            blame = (f"data.train_size (--train-size) = {train_size:g} is a count of records (a share is a fraction "
                     "below 1, e.g. 0.7)")
        else:
            blame = (f"data.train_size (--train-size) = {train_size:g} of the data's {total} records leaves "
                     f"{sizes['train'] + sizes['val']} to train and validate on; give a larger share or more records")
        raise DataError(f"the split leaves {sizes['train']} training records ({sizes}; at least "
                        f"{MIN_TRAIN_RECORDS} are needed): {blame}")


def prepare(config: TrainConfig, data: str | Path, *, prices: str | Path | PriceCatalog | None = None,
            **load_options: Any) -> Prepared:
    catalog = PriceCatalog.load(prices) if isinstance(prices, str | Path) else prices
    table, report = load_traffic(data, prices=catalog, **load_options)
    split = split_table(table, train_size=config.data.train_size, val_size=config.data.val_size,
                        seed=config.data.seed)
    _check_split(split, config.data.train_size, config.data.val_size)
    try:
        cost = observed_costs(table, split.train, catalog)
    except DataError as exc:  # name the data, and the columns a cost may have been meant to come from
        ignored = [c for c in report.ignored_columns if "|" in c]
        hint = (f"; its columns {ignored} were ignored (a model's cost column is '<model>|total_cost')"
                if ignored else "")
        raise DataError(exc.reason + hint, location=exc.location or str(data), field=exc.field) from None
    cost_model = fit_cost_model(table, cost, split.train, catalog)
    # the knob values every evaluation of this router sweeps, saved with its cost model
    grid = knob_grid(column_means(cost, split.train), config.eval.knob_points)
    cost_model = dataclasses.replace(cost_model, knob_grid=tuple(float(w) for w in grid))
    return Prepared(table, report, split, catalog, cost, cost_model, _two_model(table, split.train))


def config_featurizer(config: TrainConfig) -> Any:
    """The featurizer ``config`` names; its identity is part of the feature cache key, so every stage
    that fills or reads the cache (``train``, ``featurize --shard``) builds it here."""
    from training.featurizers import get_featurizer

    return get_featurizer(config.featurizer.name, max_tokens=config.featurizer.max_tokens)


def featurize_texts(config: TrainConfig, texts: Sequence[str], *, fingerprint: str | None,
                    cache_dir: str | Path | None, progress: bool) -> tuple[np.ndarray | FeatureMatrix, dict[str, Any]]:
    """The prompts' features, computed once into the feature cache (every core where the featurizer
    allows: ``featurizer.num_proc = 0``) and returned as a :class:`~training.featurizers.FeatureMatrix`
    over the cached file: rows are read when indexed, so the matrix never sits in memory whole."""
    from training.featurizers import featurize

    f = config.featurizer
    featurizer = config_featurizer(config)
    num_proc = f.num_proc or ((os.cpu_count() or 1) if featurizer.supports_multiprocessing else 1)
    X = featurize(featurizer, texts, cache_dir=cache_dir, data_fingerprint=fingerprint, batch_size=f.batch_size,
                  num_proc=num_proc, progress=progress, mmap=True)
    return as_feature_matrix(X), featurizer.identity()


def group_labels(records: Any, field: str) -> np.ndarray:
    """Each record's group for ``router.groups``: its ``task`` or ``metadata.<key>`` ('' where missing).

    A :class:`TrafficTable` answers from its columns (no record built); any other sequence of
    record-like objects is read one by one."""
    if isinstance(records, TrafficTable):
        return records.group_values(field)
    if field == "task":
        values = [record.task or "" for record in records]
    elif field.startswith("metadata.") and len(field) > len("metadata."):
        key = field.removeprefix("metadata.")
        values = ["" if (v := (record.metadata or {}).get(key)) is None else str(v) for record in records]
    else:
        raise RouterMLError(f"router.groups takes 'task' or 'metadata.<key>', got {field!r}")
    return np.asarray(values, dtype=str)


def propensity_loss_weights(propensity: np.ndarray, clip: float) -> np.ndarray | None:
    """Per-cell quality-loss weights ``min(1 / p, clip)`` of logged outcomes (1 where no propensity was
    logged); None - plain masked training - when ``clip`` is 0 or nothing carries a propensity."""
    known = np.isfinite(propensity)
    if clip <= 0 or not known.any():
        return None
    with np.errstate(divide="ignore"):
        return np.where(known, np.minimum(1.0 / np.where(known, propensity, 1.0), clip), 1.0)


def _clipped_propensity(table: TrafficTable, rows: np.ndarray, clip: float) -> np.ndarray | None:
    """The propensity matrix of ``rows`` where ``loss.propensity_clip`` may weight something; None with the
    clip off or no propensity logged. Indexing copies, and a full-information table's column is a blank
    (zero-memory, all-NaN) one whose copy would cost 1.9 GB at 8M records of 29 models."""
    return None if clip <= 0 or is_blank(table.propensity) else table.propensity[rows]


def propensity_weighting(table: TrafficTable, rows: np.ndarray, clip: float) -> dict[str, Any] | None:
    """What ``loss.propensity_clip`` did to the records ``rows`` (``summary.json``'s ``propensity_weights``):
    how many logged outcomes it weighted, how many of those the clip capped, their mean and largest
    weight; None when it is off or no outcome carries a propensity."""
    propensity = _clipped_propensity(table, rows, clip)
    weights = None if propensity is None else propensity_loss_weights(propensity, clip)
    if weights is None:
        return None
    known = np.isfinite(propensity)
    logged = weights[known]
    return {"clip": clip, "weighted_outcomes": int(known.sum()), "capped": int(np.sum(1.0 / propensity[known] > clip)),
            "mean_weight": round(float(logged.mean()), 4), "max_weight": round(float(logged.max()), 4)}


def _preferences(table: TrafficTable, rows: np.ndarray) -> np.ndarray | None:
    """``(position in rows, model_a, model_b, winner)`` of the preferences of the records ``rows``,
    read from the preference column of the records that carry one (no record is built)."""
    column = table.columns.preferences
    col = {m: j for j, m in enumerate(table.models)}
    prefs = [(int(local), col[p["model_a"]], col[p["model_b"]], {"a": 1.0, "b": 0.0, "tie": 0.5}[p["winner"]])
             for local in np.flatnonzero(~column.is_null()[rows]) for p in json.loads(column[int(rows[local])])]
    return np.array(prefs, dtype=np.float64) if prefs else None


def _f32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _batchable(inputs: tuple[np.ndarray, ...], rows: np.ndarray, table: TrafficTable, cost: np.ndarray,
               cost_est: np.ndarray, groups: np.ndarray | None = None, clip: float = 0.0,
               completion: Completion | None = None, imputed_weight: float = 1.0) -> Batchable:
    """One split's training arrays; with a ``completion`` the quality targets are the completed ones
    and an imputed cell weighs ``imputed_weight`` (training/offpolicy.py). The inputs stay the whole
    table's (the loop reads the split's ``rows`` of them window by window); the targets are float32
    copies of the split's rows, as the loss reads them."""
    # a full-information table's column is a blank one: nothing copied (_clipped_propensity)
    propensity = None if is_blank(table.propensity) else table.propensity[rows]
    weights = None if propensity is None else propensity_loss_weights(propensity, clip)  # None with the clip off
    quality, imputed = table.quality[rows], None
    if completion is not None and completion.imputed[rows].any():
        quality, imputed = completion.quality[rows], completion.imputed[rows]
        base = np.ones(quality.shape) if weights is None else weights
        weights = np.where(imputed, imputed_weight, base)
    return Batchable(inputs=inputs, quality=_f32(quality), cost=_f32(cost[rows]), cost_est=_f32(cost_est[rows]),
                     prefs=_preferences(table, rows), groups=None if groups is None else groups[rows],
                     weights=None if weights is None else _f32(weights), rows=np.asarray(rows, dtype=np.int64),
                     imputed=imputed, propensity=None if propensity is None else _f32(propensity))


def _complete_logged(config: TrainConfig, router_cls, inputs, X, prep: Prepared, cost_est: np.ndarray,
                     groups: np.ndarray | None) -> Completion:
    """Completed targets for the logged (partial) records of train + validation: the first stage is
    the configured router itself, cross-fitted on the full-information records (training/offpolicy.py).
    The folds' first stages are fitted side by side on ``train.workers`` processes where that pays
    (:func:`~training.parallel.workers_for`: by the full-information records) and predict here."""
    table = prep.table
    wtp_range = _wtp_range(prep.cost)
    input_dim = None if router_cls.text_inputs else X.shape[1]

    def fit_args(train_rows: np.ndarray, val_rows: np.ndarray) -> tuple:
        return (router_cls, config, len(table.models), input_dim, wtp_range,
                _batchable(inputs, train_rows, table, prep.cost, cost_est, groups),
                _batchable(inputs, val_rows, table, prep.cost, cost_est, groups))

    def predict(stage: TorchRouter, predict_rows: np.ndarray):
        return stage.predict_stages(tuple(x[predict_rows] for x in inputs))

    def fit_predict(train_rows: np.ndarray, val_rows: np.ndarray, predict_rows: np.ndarray):
        return predict(_fit_first_stage(*fit_args(train_rows, val_rows)), predict_rows)

    def map_folds(tasks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]):
        full = sum(len(t) + len(v) for t, v, _ in tasks) // max(1, len(tasks) - 1)  # each fit holds (k-1)/k
        workers = workers_for(config.train.workers, full, len(tasks), config.train.threads)
        if router_cls.text_inputs or not all(isinstance(x, FeatureMatrix) or x.nbytes <= _SENT_BYTES for x in inputs):
            workers = 1  # an encoder fine-tunes on every core itself; a worker is sent a feature file's path
        if workers == 1:
            return (fit_predict(*task) for task in tasks)
        stages = ordered_map(_fit_first_stage, [fit_args(t, v) for t, v, _ in tasks], workers)
        return (predict(stage, rows) for stage, (_, _, rows) in zip(stages, tasks, strict=True))

    completion = complete_targets(table.quality, np.concatenate([prep.split.train, prep.split.val]),
                                  fit_predict=fit_predict, folds=config.loss.impute_folds, seed=config.data.seed,
                                  ridge=config.loss.impute_ridge, map_folds=map_folds)
    if completion.report.get("imputed_cells"):
        log.info("completed %d logged records (%d cells) from %d full-information records in %.1fs",
                 completion.report["partial_records"], completion.report["imputed_cells"],
                 completion.report["full_records"], completion.report["seconds"])
    return completion


#: the most bytes of in-memory inputs (not a feature file) sent to each worker process fitting a first stage
_SENT_BYTES = 256 * 2**20


def _fit_first_stage(router_cls, config: TrainConfig, n_models: int, input_dim: int | None,
                     wtp_range: tuple[float, float], train: Batchable, val: Batchable) -> TorchRouter:
    """One fold's first stage of the completion, fitted (in a worker process where folds run side by side)."""
    return router_cls(config=config, n_models=n_models, input_dim=input_dim).fit(train, val, wtp_range=wtp_range)


def _wtp_range(cost: np.ndarray) -> tuple[float, float]:
    means = column_means(cost)
    positive = means[means > 0]
    low = float(positive.min()) if positive.size else 1.0
    return low * 0.1, float(means.max()) * 100.0 if means.max() > 0 else 100.0


@scoped_by_progress_flag  # progress=False quiets the training and scoring bars too
def train_router(config: TrainConfig | str | Path, data: str | Path, *, out_dir: str | Path,
                 prices: str | Path | PriceCatalog | None = None, cache_dir: str | Path | None = None,
                 progress: bool = True, tracking_uri: str | None = None, register: str | None = None,
                 parent_run_id: str | None = None, **load_options: Any) -> dict[str, Any]:
    """Train the configured router on ``data`` and return the run summary (the CLI's JSON line).

    ``config`` is a :class:`TrainConfig` or the path of its TOML file (:func:`~training.config.load_config`).
    ``register`` names an MLflow registered model to add the exported router to as a new version;
    ``parent_run_id`` makes the MLflow run a child of that (active) run, as ``router-ml sweep`` does."""
    from training.tracking import Tracker

    if isinstance(config, str | Path):
        config = load_config(config)
    elif not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig or the path of a TOML config, got {type(config).__name__}")
    validate(config)  # loaded configs are validated already; this guards configs built in code
    # found now, not after the fit; an interrupted run's weights (saved before the manifest) are replaced
    check_out_dir(out_dir, partial=ROUTER_WEIGHT_FILES)
    resolve_device(config.train.device)  # a device this machine lacks, found before the data is read
    if config.router.kind == "encoder":
        encoder_settings(config)  # settings the encoder cannot take, likewise
    elif config.router.kind == "auto" and "encoder" in config.router.candidates \
            and encoder_skipped(config, 0, True) is None:  # the encoder candidate will be tried: its settings too
        encoder_settings(encoder_candidate_config(config))
    started = time.perf_counter()
    stages = Stages()
    rank, _ = distributed_context()
    prep = prepare(config, data, prices=prices, **load_options)
    table, split = prep.table, prep.split
    if len(table.models) < 2:
        empty = prep.report.models_without_outcomes
        raise DataError(f"{data}: every outcome is of one model ({table.models[0]!r}), and a router chooses between "
                        "models: give outcomes of at least two (logged traffic with exploration, or records "
                        "evaluated on several models)"
                        + (f"; the model column(s) {empty} hold no outcome in any record" if empty else ""))
    fingerprint = table.fingerprint()
    groups = group_labels(table, config.router.groups) if config.router.groups else auto_group_labels(config, table)
    if config.router.groups:  # before featurizing: a setting that cannot train fails now
        check_groups(config, groups[split.train])
    log.info("loaded %d records (%s), split %s", len(table), prep.report.format, split.sizes())
    if prep.report.models_without_outcomes:
        log.warning("%s: the model columns %s hold no outcome in any kept record, so those models are "
                    "not in the table and the router never chooses them; fill the columns (or drop them to "
                    "silence this)", data, prep.report.models_without_outcomes)
    # the test rows rank 0 scores after training, chosen now: a test split that cannot be scored stops
    # the run before any work
    scored = scoreable_rows(table.quality, split.test, table.propensity) if rank == 0 else None
    if scored is not None:
        check_test_scoreable(table.quality, scored, table.models)
    stages.done("load")
    X, featurizer_identity = featurize_texts(config, table.texts, fingerprint=fingerprint, cache_dir=cache_dir,
                                             progress=progress and rank == 0)
    stages.done("featurize")
    # what training no longer reads (the cost model is priced): ~100 bytes a record on full-information data
    table.release(*TrafficTable.RELEASABLE)
    return_free_memory()
    cost_est = prep.cost_model.estimate(estimate_input_tokens(table.texts), dtype=np.float32)  # the loss reads f32
    kind = config.router.kind  # the configured kind ("auto" stays "auto" whatever it chose)
    router_cls = ROUTERS[kind]
    router: TorchRouter = router_cls(config=config, n_models=len(table.models),
                                     input_dim=None if router_cls.text_inputs else X.shape[1])
    inputs = router.inputs(table.texts, X)
    out_dir = Path(out_dir)
    tracker = Tracker(experiment=config.tracking.experiment, enabled=config.tracking.enabled and rank == 0,
                      tracking_uri=tracking_uri, run_name=f"{config.router.kind}-{config.featurizer.name}",
                      parent_run_id=parent_run_id)
    with tracker:
        tracker.log_params({**config.to_flat(), "data_fingerprint": fingerprint,
                            "data.source": str(data),
                            "data.records": len(table), **{f"split.{k}": v for k, v in split.sizes().items()},
                            "featurizer.identity": json.dumps(featurizer_identity, sort_keys=True)})
        tracker.set_tags({"router": config.router.kind, "featurizer": config.featurizer.name,
                          "data_fingerprint": fingerprint})
        fit_started = time.perf_counter()
        clip, completion = config.loss.propensity_clip, None
        if config.loss.logged_targets == "impute":
            # a router may name a cheaper first stage (auto: a logistic regression, not its whole selection)
            first_stage = getattr(router_cls, "first_stage", router_cls)
            completion = _complete_logged(config, first_stage, inputs, X, prep, cost_est, groups)
            tracker.log_params({"logged_targets.method": completion.report["method"]})
        batch = dict(groups=groups, clip=clip, completion=completion, imputed_weight=config.loss.imputed_weight)
        train = _batchable(inputs, split.train, table, prep.cost, cost_est, **batch)
        val = _batchable(inputs, split.val, table, prep.cost, cost_est, **batch) if len(split.val) else None
        router.fit(train, val, wtp_range=_wtp_range(prep.cost),
                   on_epoch=lambda e, tl, vl: tracker.log_metrics({"train_loss": tl, "val_loss": vl}, step=e))
        replaced = None  # router.distill: the test predictions of the head the student replaced
        if config.router.distill and getattr(router, "winner_", None) is None:
            replaced = _distill(router, table, X, split, scored, train, val, prep.cost, tracker, rank)
        elif config.router.distill:
            log.warning("router.distill: the auto router chose the fine-tuned encoder, which reads token ids, "
                        "not the features an MLP student reads; it is exported as it is")
        fit_seconds = time.perf_counter() - fit_started
        selection = log_selection(tracker, router)  # the auto router's candidates and choice (None otherwise)
        heldout = getattr(router, "heldout_", None)  # the auto router's held-out predictions (out of fold)
        if getattr(router, "winner_", None) is not None:  # auto chose the fine-tuned encoder: the run is its
            router = router.winner_
            config, inputs = router.config, router.inputs(table.texts, X)
        elif getattr(router, "reads_tokens", False):  # a lexical head reads the token ids beside the features
            inputs = router.inputs(table.texts, X)
        del train, val, batch, cost_est  # the split's targets (0.6 GB at 10M records): evaluation has its own
        stages.done("fit")
        if rank != 0:
            return {}
        result = _evaluate(config, router, inputs, X, prep, scored, replaced=replaced)
        result["knob_curve"] = knob_curve(config, prep, result["predictions"], heldout)
        stages.done("evaluate")
        out_dir.mkdir(parents=True, exist_ok=True)
        _save(out_dir, config, router, prep, featurizer_identity, fingerprint, result, tracker.run_id)
        from training.plots import plot_cost_quality

        curves = {kind: result["router_curve"], **result["baseline_curves"]}
        plot_cost_quality(out_dir / "curve.png", curves=curves, singles=result["singles"],
                          title=f"{kind} / {config.featurizer.name} on {Path(str(data)).name}",
                          log_x=bool(np.all(column_means(prep.cost) > 0)))
        test_metrics = result["test"]
        flat = {k: v for k, v in test_metrics.items() if isinstance(v, int | float)}
        for name, base in test_metrics["baselines"].items():
            flat.update({f"{name}.{k}": v for k, v in base.items() if isinstance(v, int | float)})
        for name, diff in test_metrics.get("vs_baselines", {}).items():
            flat.update({f"vs_{name}.{k}": v for k, v in diff.items() if isinstance(v, int | float)})
        replaced_head = test_metrics.get("distilled_from")
        if replaced_head is not None:  # router.distill
            flat.update({f"distilled_from.{k}": v for k, v in replaced_head.items() if isinstance(v, int | float)})
            flat.update({f"student_minus_replaced.{k}": v
                         for k, v in replaced_head["student_minus_replaced"].items() if isinstance(v, int | float)})
        tracker.log_metrics({**flat, "fit_seconds": fit_seconds})
        stages.done("save")
        tracker.log_artifacts(out_dir, "router")
        exported = export_run(out_dir)
        stages.done("export")
        outputs = log_exported(tracker, out_dir, exported, register)
        summary = {
            "run_id": tracker.run_id,
            "router": kind,
            "featurizer": config.featurizer.name,
            "data_fingerprint": fingerprint,
            "train_records": int(len(split.train)),
            "val_records": int(len(split.val)),
            "test_records": int(len(split.test)),
            "test_scored": int(len(scored)),
            "rejected": prep.report.rejected,
            "missing_propensity": prep.report.missing_propensity,
            "excluded": prep.report.excluded,
            "models_without_outcomes": prep.report.models_without_outcomes,
            "fit_seconds": round(fit_seconds, 2),
            "logged_targets": None if completion is None else completion.report,
            "propensity_weights": propensity_weighting(table, np.concatenate([split.train, split.val]), clip),
            "total_seconds": round(time.perf_counter() - started, 2),
            "stages": stages.report,
            **outputs,
            **({"selection": selection} if selection else {}),
            # the prompts the exported default knob was chosen on: the test split's, or these
            "default_knob_prompts": {k: v for k, v in (result["knob_curve"] or {}).items()
                                     if k.endswith("prompts")} or {"test_prompts": int(len(scored))},
            "test": test_metrics,
        }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def log_exported(tracker: Any, out_dir: Path, exported: tuple[Path | None, dict[str, Any], str | None],
                 register: str | None) -> dict[str, Any]:
    """Log an exported artifact (``exported``: ``_export``'s artifact - None when the export failed -,
    report and error) to the run and, with ``register``, add it to that MLflow registered model; returns
    the summary's fields on where the run's outputs went (router and scorer runs report them alike)."""
    artifact, export_report, export_error = exported
    registered = None
    if artifact is not None:
        tracker.log_artifacts(artifact, "artifact")
        version = tracker.register(register) if register else None
        registered = None if version is None else f"models:/{register}/{version}"
    return {"out": str(out_dir), "tracking_uri": tracker.tracking_uri if tracker.enabled else None,
            "tracking_error": tracker.error, "artifact": None if artifact is None else str(artifact),
            "registered": registered,
            "export": export_report if artifact is not None else {"error": export_error}}


PARITY_PROMPTS = 1000


def parity_prompts(table: TrafficTable, test_rows: np.ndarray, seed: int) -> list[str]:
    """The held-out prompts the exporter checks ONNX against torch on: a seeded random sample of up
    to :data:`PARITY_PROMPTS` test prompts (a sample, not the first rows, which share a source or
    subject in files grouped that way); 1,000 prompts put a 1% route-change limit at 10 prompts."""
    rows = np.asarray(test_rows)
    if len(rows) > PARITY_PROMPTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, PARITY_PROMPTS, replace=False))
    return [table.texts[int(i)] for i in rows]


def export_run(out_dir: Path, exporter: Callable[[Path, Path], dict[str, Any]] | None = None
               ) -> tuple[Path | None, dict[str, Any] | None, str | None]:
    """Export the run trained into ``out_dir`` to ``out_dir / "artifact"`` with ``exporter`` (the router's
    by default; a scorer run passes its own): (artifact, report, error). A run that cannot be exported (a
    featurizer with no one-graph form, a failed parity check) is reported, not fatal."""
    from training.export import ExportError, export_router

    try:
        report = (exporter or export_router)(out_dir, out_dir / "artifact")
    except ExportError as exc:
        log.warning("not exported: %s", exc)
        return None, None, str(exc)
    return out_dir / "artifact", report, None


#: test records predicted per call when scoring: bounds the features in memory at once
PREDICT_CHUNK = 65536


def predict_rows(router: TorchRouter, inputs: tuple[np.ndarray, ...], rows: np.ndarray) -> np.ndarray:
    """``router.predict`` on the table rows ``rows`` of ``inputs``, at most :data:`PREDICT_CHUNK` rows at
    a time (a few of the router's batches: a fine-tuned encoder's 12,000 prompts take minutes on a CPU
    and the scoring bar counts them)."""
    step = min(PREDICT_CHUNK, 4 * getattr(router, "predict_batch", PREDICT_CHUNK))
    parts = [router.predict(tuple(x[rows[a:b]] for x in inputs))
             for a, b in chunks(len(rows), step, desc="score", unit="prompt")]
    return np.concatenate(parts) if parts else np.zeros((0, router.n_models))


def baseline_sample(rows: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """At most ``cap`` of ``rows`` (all when ``cap`` is 0 or there are fewer): a seeded sample, sorted."""
    rows = np.asarray(rows)
    if not cap or len(rows) <= cap:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, cap, replace=False))


def check_test_scoreable(quality: np.ndarray, scored: np.ndarray, models: Sequence[str]) -> None:
    """Logged test records (some outcome missing) are scored off-policy, which needs every model's
    outcome on at least one of them: a router's choices of a model the test split never logged cannot
    be scored. Raises DataError naming those models; ``train`` checks this before featurizing (its
    :func:`_evaluate` scores the same rows), so a split it cannot score costs no training."""
    observed = ~np.isnan(quality[scored])
    if observed.all() or not len(scored):
        return
    never = [m for m, n in zip(models, observed.sum(axis=0), strict=True) if n == 0]
    if never:
        raise DataError(f"the test split's {len(scored)} logged records have no outcome of {never}, so the "
                        "router's choices of them cannot be scored; give the test split more records "
                        "(a smaller --train-size, or more logged traffic) or score the router later with "
                        "'router-ml evaluate' on data holding every model's outcome")


def _distill(router, table: TrafficTable, X, split: Split, scored: np.ndarray | None, train: Batchable,
             val: Batchable | None, cost: np.ndarray, tracker, rank: int) -> np.ndarray | None:
    """``router.distill``: the chosen head's predictions on the training, validation and (rank 0) test
    prompts, then one MLP fitted to them in its place (:mod:`training.routers.distill`). With a kept lexical
    blend and ``router.distill_lexical`` the student imitates the head under the blend, which stays as chosen.
    Returns the replaced head's test predictions, which the evaluation scores beside the student's."""
    from training.routers.distill import distill_head, under_lexical_blend, with_targets

    inputs = router.inputs(table.texts, X)  # the head's own: token ids too where it reads them
    replaced = predict_rows(router, inputs, scored) if rank == 0 and scored is not None else None
    words = under_lexical_blend(router) if router.config.router.distill_lexical else None
    if words is not None:  # the teacher is the head under the blend: it reads the features alone
        inputs = router.inputs(table.texts, X)
    teacher_train = predict_rows(router, inputs, split.train)
    teacher_val = predict_rows(router, inputs, split.val) if val is not None else None
    distill_head(router, with_targets(train, teacher_train),
                 None if val is None else with_targets(val, teacher_val), wtp_range=_wtp_range(cost),
                 on_epoch=lambda e, tl, vl: tracker.log_metrics({"distill_train_loss": tl, "distill_val_loss": vl},
                                                                step=e), lexical=words,
                 teacher=None if X is None or router.reads_tokens else lambda features: router.predict((features,)))
    return replaced


def _evaluate(config: TrainConfig, router, inputs, X, prep: Prepared, scored: np.ndarray, *,
              replaced: np.ndarray | None = None) -> dict[str, Any]:
    table = prep.table
    if len(scored) == 0:
        raise DataError("the test split has no record with an outcome; nothing to score")
    quality, cost = table.quality[scored], prep.cost[scored]
    cost_est = prep.cost_model.estimate(estimate_input_tokens(table.texts)[scored])  # texts read in order, once
    train_rows = np.concatenate([prep.split.train, prep.split.val])
    trained = [b for b in config.eval.baselines if BASELINES[b].trained]
    cap, seed = config.eval.baseline_records, config.data.seed
    # the trained baselines (kNN, logistic regression) fit and score on seeded samples of a large split
    fit_rows = baseline_sample(train_rows, cap, seed) if trained else train_rows[:0]
    score_at = baseline_sample(np.arange(len(scored)), cap, seed + 1) if trained else None
    held = HeldOut(quality=quality, cost=cost, cost_est=cost_est, wtps=np.asarray(prep.cost_model.knob_grid),
                   models=table.models, two_model=prep.two_model, n_boot=config.eval.n_boot, seed=seed,
                   features=None if X is None or not trained else X[scored[score_at]],
                   train_features=None if X is None or not trained else X[fit_rows],
                   train_quality=table.quality[fit_rows], propensity=table.propensity[scored],
                   baseline_rows=None if score_at is None or len(score_at) == len(scored) else score_at,
                   refine=config.eval.knob_refine)
    pred = predict_rows(router, inputs, scored)
    result = evaluate_held_out(pred, held, baselines=config.eval.baselines)
    result["predictions"] = (scored, pred, cost_est)
    if replaced is not None:  # router.distill: the head the student replaced, on the same prompts and draws
        theirs = score_predictions(replaced, held)
        mine = {**result["test"], "draws": result["router_draws"]}  # the student's, already drawn
        result["test"]["distilled_from"] = {**metrics_summary(theirs), "student_minus_replaced": paired_differences(
            mine, theirs)}
    return result


def knob_curve(config: TrainConfig, prep: Prepared, test: tuple[np.ndarray, np.ndarray, np.ndarray],
               heldout: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any] | None:
    """The curve the default knob is chosen on (``training.export._default_willingness``) when the router
    has held-out predictions of its own - the auto router's out-of-fold predictions on the training
    records (the validation split's at 5,000 records and more): those records with every outcome and
    the test split's, with the router's predictions, scored exactly. None without them: the test curve
    is used. A knob picked on a few dozen test prompts lands far from the best (README, "Exported routers
    and the runtime", the default knob); the training records' held-out predictions multiply the prompts
    it is picked on."""
    if heldout is None or not len(heldout[0]):
        return None
    table = prep.table
    scored, pred, test_cost_est = test
    full = np.isfinite(table.quality[scored]).all(axis=1) & np.isfinite(prep.cost[scored]).all(axis=1)
    keep = np.isfinite(prep.cost[heldout[0]]).all(axis=1)
    rows = np.concatenate([heldout[0][keep], scored[full]])
    train_cost_est = prep.cost_model.estimate(estimate_input_tokens([table.texts[int(i)] for i in heldout[0][keep]]))
    held = HeldOut(quality=table.quality[rows], cost=prep.cost[rows],
                   cost_est=np.concatenate([train_cost_est, test_cost_est[full]]),
                   wtps=np.asarray(prep.cost_model.knob_grid), models=table.models, n_boot=0,
                   seed=config.data.seed, refine=config.eval.knob_refine)
    curve = score_predictions(np.concatenate([heldout[1][keep], pred[full]]), held, n_boot=0)["curve"]
    return {**curve, "prompts": int(len(rows)), "held_out_training_prompts": int(keep.sum()),
            "test_prompts": int(full.sum())}


def _save(out_dir: Path, config: TrainConfig, router, prep: Prepared, featurizer_identity, fingerprint,
          result, run_id) -> None:
    router.save(out_dir)
    table, split = prep.table, prep.split
    files = {
        "manifest.json": {"format": CHECKPOINT_FORMAT, "router": config.router.kind, "models": list(table.models),
                          "featurizer": config.featurizer.name, "mlflow_run_id": run_id,
                          "data_fingerprint": fingerprint, "two_model": prep.two_model},
        "config.json": config.to_flat(),
        "featurizer.json": featurizer_identity,
        "cost_model.json": prep.cost_model.to_dict(),
        "prices.json": prep.prices.to_dict() if prep.prices is not None else None,
    }
    for name, payload in files.items():
        if payload is not None:
            (out_dir / name).write_text(json.dumps(payload, indent=1))
    write_split(out_dir / "split.json", table, split, config.data.seed, fingerprint)
    write_metrics_file(out_dir / "metrics.json", result)
    (out_dir / "parity_prompts.json").write_text(json.dumps(parity_prompts(table, split.test, config.data.seed)))
    # per test prompt: what the router predicted and the cost it assumed, to re-score its choices independently
    scored, pred, cost_est = result["predictions"]
    with open(out_dir / "test_predictions.jsonl", "w", encoding="utf-8") as f:
        for start, ids in id_blocks(table, scored):
            f.writelines(json.dumps({"sample_id": sid, "row": int(scored[k]), "quality_hat": pred[k].round(6).tolist(),
                                     "cost_hat": cost_est[k].tolist()}) + "\n"
                         for k, sid in enumerate(ids, start))
