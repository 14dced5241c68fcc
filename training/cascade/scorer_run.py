"""``train_scorer``: load -> split -> fit an answer scorer -> AUC on validation and test -> save -> export.

What ``router-ml train`` runs when the config's ``[scorer] kind`` is set. The split is the routers'
(:func:`training.pipeline.prepare`: the same grouped, seeded split), so a router and a scorer trained
with the same ``--train-size`` and ``--seed`` share their train, validation and test records - what a
route-then-cascade policy needs. The run directory holds the scorer (``scorer.json`` + safetensors),
the resolved config, ``metrics.json``, the validation and test predictions (``predictions.jsonl``:
the cascade picks its thresholds on the validation ones) and the exported ``artifact/``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from router_ml.formats import VERSION_FIELD
from router_ml.pricing import PriceCatalog
from training.cascade.scorer import WEIGHTS_FILE, ScorerData, auc_report, cells, get_scorer, scorer_data
from training.checkpoint import check_out_dir
from training.config import TrainConfig, validate
from training.progress import scoped_by_progress_flag

__all__ = ["SCORER_CHECKPOINT_FORMAT", "train_scorer"]

log = logging.getLogger("router_ml.train")
SCORER_CHECKPOINT_FORMAT = "router-ml-scorer-checkpoint/1"
METRICS_FORMAT, METRICS_VERSION = "router-ml-scorer-metrics", 1


def _eval_rows(rows: np.ndarray, cap: int, seed: int) -> np.ndarray:
    if not cap or len(rows) <= cap:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, cap, replace=False))


@scoped_by_progress_flag
def train_scorer(config: TrainConfig, data: str | Path, *, out_dir: str | Path,
                 prices: str | Path | PriceCatalog | None = None, progress: bool = True,
                 tracking_uri: str | None = None, register: str | None = None, **load_options: Any) -> dict[str, Any]:
    """Train the answer scorer ``config.scorer`` names on ``data`` and return the run summary (the CLI's
    JSON line: ``val``/``test`` hold ``scorer_auc`` pooled and ``scorer_auc.<model>`` per model).

    >>> summary = train_scorer(load_config("training/configs/scorer_static.toml"), "responses.parquet",
    ...                        out_dir="models/scorer")                      # doctest: +SKIP
    """
    from training.pipeline import export_run, log_exported, prepare
    from training.tracking import Tracker

    validate(config)
    # found now, not after the fit; an interrupted run's weights (saved before the manifest) are replaced
    check_out_dir(out_dir, fmt=SCORER_CHECKPOINT_FORMAT, what="scorer",
                  partial=frozenset({WEIGHTS_FILE, "scorer.json"}))
    if config.scorer.kind == "encoder":  # settings its encoder cannot take, before the data is read
        from training.routers.neural import encoder_settings

        encoder_settings(config)
    started = time.perf_counter()
    prep = prepare(config, data, prices=prices, **load_options)
    table, split = prep.table, prep.split
    scored = scorer_data(table)
    fingerprint = table.fingerprint()
    scorer = get_scorer(config.scorer.kind)(config=config, models=table.models)
    log.info("loaded %d records (%s), split %s; fitting the %s answer scorer", len(table), prep.report.format,
             split.sizes(), config.scorer.kind)
    out_dir = Path(out_dir)
    tracker = Tracker(experiment=config.tracking.experiment, enabled=config.tracking.enabled,
                      tracking_uri=tracking_uri, run_name=f"scorer-{config.scorer.kind}")
    with tracker:
        tracker.log_params({**config.to_flat(), "data_fingerprint": fingerprint, "data.source": str(data),
                            "data.records": len(table), **{f"split.{k}": v for k, v in split.sizes().items()}})
        tracker.set_tags({"scorer": config.scorer.kind, "kind": "scorer", "data_fingerprint": fingerprint})
        fit_started = time.perf_counter()
        scorer.fit(scored, split.train, split.val)
        fit_seconds = time.perf_counter() - fit_started
        log.info("fitted in %.1fs; scoring the validation and test answers", fit_seconds)
        out_dir.mkdir(parents=True, exist_ok=True)
        scorer.save(out_dir)  # before scoring: an encoder's scoring takes minutes on a CPU, and may be interrupted
        report, predictions = {}, []
        score_started = time.perf_counter()
        for offset, (part, rows) in enumerate((("val", split.val), ("test", split.test))):
            row, model = cells(scored, _eval_rows(rows, config.scorer.eval_rows, config.data.seed + 2 + offset))
            scores = scorer.predict_cells(scored, row, model)
            report[part] = auc_report(scored, row, model, scores)
            predictions.append((part, row, model, scores))
        score_seconds = time.perf_counter() - score_started
        _save(out_dir, config, table, scored, fingerprint, tracker.run_id, report, predictions)
        tracker.log_metrics({f"{part}.{k}": v for part, values in report.items() for k, v in values.items()
                             if isinstance(v, int | float)} | {"fit_seconds": fit_seconds})
        tracker.log_artifacts(out_dir, "scorer")
        from training.cascade.scorer_export import export_scorer

        outputs = log_exported(tracker, out_dir, export_run(out_dir, export_scorer), register)
        summary = {
            "run_id": tracker.run_id,
            "kind": "scorer",
            "scorer": config.scorer.kind,
            "models": list(table.models),
            "data_fingerprint": fingerprint,
            "train_records": int(len(split.train)),
            "val_records": int(len(split.val)),
            "test_records": int(len(split.test)),
            "train_triples": getattr(scorer, "triples_", None) or int(len(cells(scored, split.train)[0])),
            "fit_seconds": round(fit_seconds, 2),
            "score_seconds": round(score_seconds, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
            "selection": getattr(scorer, "selection_", None),
            **outputs,
            **report,
        }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _save(out_dir: Path, config: TrainConfig, table: Any, scored: ScorerData, fingerprint: str,
          run_id: str | None, report: dict[str, Any], predictions: list) -> None:
    """The checkpoint's manifest, config, metrics and the validation/test predictions."""
    manifest = {"format": SCORER_CHECKPOINT_FORMAT, "kind": "scorer", "scorer": config.scorer.kind,
                "models": list(table.models), "mlflow_run_id": run_id, "data_fingerprint": fingerprint}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out_dir / "config.json").write_text(json.dumps(config.to_flat(), indent=1))
    (out_dir / "metrics.json").write_text(json.dumps({"format": METRICS_FORMAT, VERSION_FIELD: METRICS_VERSION,
                                                      **report}, indent=1))
    ids = table.columns.sample_id
    with open(out_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for part, row, model, scores in predictions:
            sample_ids = ids.take(row).to_list() if len(row) else []
            f.writelines(json.dumps({"split": part, "sample_id": sid, "row": int(r), "model": table.models[m],
                                     "score": round(float(s), 6)}) + "\n"
                         for sid, r, m, s in zip(sample_ids, row, model, scores, strict=True))
    # the held-out triples the exporter checks ONNX against torch on: a seeded sample of the test ones
    _, row, model, _ = predictions[-1]
    pick = _eval_rows(np.arange(len(row)), 300, config.data.seed)
    (out_dir / "parity_triples.json").write_text(json.dumps(
        [{"prompt": scored.prompts[int(row[k])], "model": scored.models[int(model[k])],
          "response": scored.responses[int(row[k]), int(model[k])]} for k in pick]))
