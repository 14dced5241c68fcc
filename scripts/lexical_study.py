"""Lexical features beside the static embeddings: what a logistic regression over the prompt's tokens adds.

The static featurizer averages 256-dimensional token embeddings, so a linear router over it has 256
weights per model. A logistic regression over the same tokens' TF-IDF vector (sublinear term
frequency, inverse document frequency from the training prompts, L2-normalised: scikit-learn's
``TfidfTransformer(sublinear_tf=True)``) has one weight per token of the WordPiece vocabulary (30,522)
and per model - far more capacity to recognise a prompt's words. This study measures, on the same
splits and metrics as ``router-ml train``:

- ``static``: the per-model logistic regression on the static features (``train``'s baseline);
- ``lexical``: the same regression on the TF-IDF of the static featurizer's own token ids (the same
  tokenizer and truncation as the ids an exported graph receives: the ``lexical`` candidate of
  ``router.kind = "auto"``, training/routers/lexical.py, C chosen from ``router.lexical_c``);
- ``mean``: the average of the two predictions (what a lexical member would add to an ensemble);
- ``sentence`` (with ``--sentence minilm``): the same regression on sentence embeddings - the plain
  alternative a user reaches for first.

Each representation's inverse regularisation strength C is chosen by ``--folds``-fold cross-validation
on train + validation by held-out AIQ (as ``router.kind = "auto"`` tunes its logistic regression; the
log loss prefers weaker penalties that route worse), then fitted there and scored once on the test
prompts. Prints one JSON object (per protocol: per seed and the mean over seeds).

    python scripts/lexical_study.py                                   # routellm, mmlu-pro, demo; seeds 0-4
    python scripts/lexical_study.py --protocol routellm --seeds 0
    python scripts/lexical_study.py --data table.parquet --sentence minilm   # --train-size 0.85 split
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router_ml.cli import bounded  # noqa: E402
from router_ml.policy import estimate_input_tokens  # noqa: E402
from training.config import load_config  # noqa: E402
from training.evaluation import HeldOut, score_predictions, scoreable_rows  # noqa: E402
from training.pipeline import config_featurizer, featurize_texts, prepare  # noqa: E402
from training.protocols import protocols  # noqa: E402
from training.routers.auto_choice import held_out_aiq  # noqa: E402
from training.routers.baselines import LogRegRouter  # noqa: E402
from training.routers.lexical import tfidf, token_counts  # noqa: E402
from training.sweep import seeds_arg  # noqa: E402

KEYS = ("aiq", "best_quality", "savings_at_iso_quality", "apgr", "cpt_50")
C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
#: every reported prediction, in print order (``sentence`` only with ``--sentence``)
REPORTED = ("static", "lexical", "mean", "sentence")


def studies() -> dict[str, dict]:
    """The protocols of the README's tables, plus the bundled demo data with ``train``'s default split."""
    out = dict(protocols())
    out["demo"] = {"data": ROOT / "data" / "demo" / "traffic.jsonl", "train_size": None, "exclude": None}
    return out


def choose_c(X, quality: np.ndarray, held: HeldOut, folds: int, seed: int) -> tuple[float, dict[str, float]]:
    """The C of :data:`C_GRID` with the best cross-validated AIQ on the training rows (the first
    ``len(held.quality)`` of ``X``), scored as ``router.kind = "auto"`` scores its candidates."""
    n = len(held.quality)
    order = np.random.default_rng(seed).permutation(n)
    scores = {}
    for c in C_GRID:
        pred = np.full((n, quality.shape[1]), np.nan)
        for k in range(folds):
            out, fit = order[k::folds], np.setdiff1d(order, order[k::folds])
            pred[out] = LogRegRouter(C=c).fit(X[fit], quality[fit]).predict(X[out])
        scores[str(c)] = held_out_aiq(pred, held)
    return float(max(C_GRID, key=lambda c: scores[str(c)])), scores


def run_seed(spec: dict, seed: int, folds: int, sentence: str | None = None) -> dict:
    """One seed's split of ``spec``'s data: each representation's regression, C, and test metrics."""
    overrides = [f"data.seed={seed}"] + ([f"data.train_size={spec['train_size']}"] if spec["train_size"] else [])
    config = load_config(ROOT / "training" / "configs" / "auto.toml", overrides)
    prep = prepare(config, spec["data"], **({"exclude": spec["exclude"]} if spec["exclude"] else {}))
    table, split = prep.table, prep.split
    X, _ = featurize_texts(config, table.texts, fingerprint=table.fingerprint(), cache_dir=None, progress=False)
    train = np.concatenate([split.train, split.val])
    test = scoreable_rows(table.quality, split.test, table.propensity)
    rows = np.concatenate([train, test])
    started = time.perf_counter()
    featurizer = config_featurizer(config)
    counts = token_counts(featurizer, [table.texts[int(i)] for i in rows])
    lexical, _ = tfidf(counts, np.arange(len(train)))
    features = {"static": np.asarray(X[rows], dtype=np.float32), "lexical": lexical}
    if sentence:  # a plain logistic regression on sentence embeddings, the alternative a user reaches for
        sentence_config = config.replace(**{"featurizer.name": sentence})
        S, _ = featurize_texts(sentence_config, table.texts, fingerprint=table.fingerprint(), cache_dir=None,
                               progress=False)
        features["sentence"] = np.asarray(S[rows], dtype=np.float32)
    quality = table.quality[rows]
    fit, scored = np.arange(len(train)), np.arange(len(train), len(rows))

    def held_out(part: np.ndarray) -> HeldOut:
        estimate = prep.cost_model.estimate(estimate_input_tokens([table.texts[int(i)] for i in part]))
        return HeldOut(quality=table.quality[part], cost=prep.cost[part], cost_est=estimate,
                       wtps=np.asarray(prep.cost_model.knob_grid), models=table.models, two_model=prep.two_model,
                       n_boot=0, seed=seed, refine=config.eval.knob_refine)

    held, held_train = held_out(test), held_out(train)
    preds, out = {}, {"train": int(len(train)), "test": int(len(test)), "models": len(table.models)}
    for rep in features:
        t0 = time.perf_counter()
        c, cv_aiq = choose_c(features[rep], quality, held_train, folds, seed)
        preds[rep] = LogRegRouter(C=c).fit(features[rep][fit], quality[fit]).predict(features[rep][scored])
        out[rep] = {"C": c, "cv_aiq": cv_aiq, "seconds": round(time.perf_counter() - t0, 1)}
    preds["mean"] = (preds["static"] + preds["lexical"]) / 2
    out.setdefault("mean", {})
    for rep, pred in preds.items():
        report = score_predictions(pred, held)
        out[rep].update({k: round(float(report[k]), 4) for k in KEYS if isinstance(report.get(k), int | float)})
    out["vocabulary_used"] = int((counts[: len(train)].sum(axis=0) > 0).sum())
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def summarise(per_seed: dict[int, dict]) -> dict:
    """Each representation's metrics averaged over the seeds."""
    out = {}
    for rep in REPORTED:
        if not all(rep in r for r in per_seed.values()):
            continue
        keys = [k for k in KEYS if all(k in r[rep] for r in per_seed.values())]
        out[rep] = {k: round(statistics.fmean(r[rep][k] for r in per_seed.values()), 4) for k in keys}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--protocol", choices=sorted(studies()), action="append",
                        help="default: routellm, mmlu-pro and demo")
    parser.add_argument("--seeds", type=seeds_arg, default="0-4", help="e.g. 0-4 or 0,2")
    parser.add_argument("--folds", type=bounded(int, 2), default=3, help="cross-validation folds choosing each C")
    parser.add_argument("--data", type=Path, help="a table of your own instead (--train-size 0.85 split)")
    parser.add_argument("--train-size", type=float, default=0.85)
    parser.add_argument("--sentence", metavar="FEATURIZER",
                        help="also a logistic regression on these sentence embeddings (a featurizer.name: "
                             "minilm, or a local model directory), reported as `sentence`")
    args = parser.parse_args(argv)
    chosen = {"table": {"data": args.data, "train_size": args.train_size, "exclude": None}} if args.data else {
        name: studies()[name] for name in (args.protocol or ["routellm", "mmlu-pro", "demo"])}
    result = {}
    for name, spec in chosen.items():
        per_seed = {seed: run_seed(spec, seed, args.folds, args.sentence) for seed in args.seeds}
        for seed, r in per_seed.items():
            print(f"{name} seed {seed}: " + ", ".join(
                f"{rep} (" + ", ".join(f"{k} {r[rep][k]}" for k in KEYS if k in r[rep]) + ")"
                for rep in REPORTED if rep in r),
                file=sys.stderr)
        result[name] = {"seeds": per_seed, "mean": summarise(per_seed)}
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
