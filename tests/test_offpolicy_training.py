"""Off-policy training: completing the outcomes a log did not observe (training/offpolicy.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data import load_traffic, write_jsonl
from training.data.columns import is_blank
from training.offpolicy import complete_targets, factor_targets, fit_factor, min_full_records

from .conftest import DEMO, ROOT
from .test_pipeline import FAST, MLP_STATIC, cli


def _one_factor(n: int, loadings: np.ndarray, noise_sd: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    return z, 0.5 + z[:, None] * loadings[None, :] + rng.normal(scale=noise_sd, size=(n, len(loadings)))


def test_factor_analysis_recovers_the_loadings_of_one_factor_residuals():
    loadings = np.array([0.05, 0.08, 0.1, 0.12])
    _, quality = _one_factor(20_000, loadings, 0.05, seed=0)
    fitted, noise = fit_factor(quality - 0.5, seed=0)
    assert fitted == pytest.approx(loadings, abs=0.005)
    assert noise == pytest.approx(np.full(4, 0.05 ** 2), rel=0.1)


def test_least_squares_targets_carry_the_whole_factor_and_the_posterior_mean_shrinks_it():
    """With one model observed per record, ``E[target_m | z] = prior_m + lambda_m z`` (ridge 0): the
    regression a router fits on the targets learns the true difficulty effect; ridge 1 (the posterior
    mean) learns only the observation's reliability times it."""
    loadings = np.array([0.05, 0.08, 0.1, 0.12])
    z, quality = _one_factor(40_000, loadings, 0.05, seed=1)
    rng = np.random.default_rng(2)
    logged = np.full_like(quality, np.nan)
    chosen = rng.integers(0, 4, size=len(quality))
    logged[np.arange(len(quality)), chosen] = quality[np.arange(len(quality)), chosen]
    prior = np.full_like(quality, 0.5)
    slopes = {}
    for ridge in (0.0, 1.0):
        targets = factor_targets(logged, prior, loadings, np.full(4, 0.05 ** 2), ridge=ridge)
        kept = np.isfinite(logged)
        imputed = ~kept
        assert np.isfinite(targets).all() and ((targets[imputed] >= 0) & (targets[imputed] <= 1)).all()
        assert np.array_equal(targets[kept], logged[kept])  # observed outcomes are never changed
        slopes[ridge] = [np.polyfit(z[imputed[:, m]], targets[imputed[:, m], m], 1)[0] for m in range(4)]
    assert slopes[0.0] == pytest.approx(loadings, rel=0.08)
    assert all(s < 0.9 * lam for s, lam in zip(slopes[1.0], loadings, strict=True))


def test_completion_fills_only_partial_records_and_reports_what_it_did():
    loadings = np.array([0.1, 0.15, 0.2])
    _, quality = _one_factor(600, loadings, 0.1, seed=3)
    quality = np.clip(quality, 0, 1)
    partial = np.arange(200, 600)
    quality[partial[:, None], np.array([1, 2])[None, :]] = np.nan  # logged: model 0 only
    calls = []

    def fit_predict(train_rows, val_rows, predict_rows):  # a per-model mean "router"
        calls.append((len(train_rows), len(val_rows)))
        assert not set(train_rows) & set(val_rows) and set(train_rows) | set(val_rows) <= set(range(200))
        return np.tile(np.nanmean(quality[train_rows], axis=0), (len(predict_rows), 1))

    done = complete_targets(quality, np.arange(600), fit_predict=fit_predict, folds=4, seed=0, ridge=0.05)
    assert len(calls) == 4 and done.report["method"] == "impute"
    assert done.report["full_records"] == 200 and done.report["partial_records"] == 400
    assert done.report["imputed_cells"] == 800 == int(done.imputed.sum())
    assert np.isfinite(done.quality).all() and np.array_equal(done.quality[:200], quality[:200])
    assert np.array_equal(done.quality[partial, 0], quality[partial, 0])
    # a record whose model-0 outcome was above its prior gets targets above the prior for the others
    above = quality[partial, 0] > np.nanmean(quality[:200, 0])
    assert done.quality[partial[above], 1].mean() > done.quality[partial[~above], 1].mean() + 0.05


def test_of_several_first_stages_the_lowest_out_of_fold_brier_score_completes_the_log():
    """A first stage may offer several predictions per fold (the auto router's: logistic regression, MLP,
    their mean); the one that predicts the held-out full records best completes the log, and the
    report names it beside every stage's score."""
    loadings = np.array([0.1, 0.15, 0.2])
    _, quality = _one_factor(600, loadings, 0.1, seed=3)
    quality = np.clip(quality, 0, 1)
    partial = np.arange(200, 600)
    quality[partial[:, None], np.array([1, 2])[None, :]] = np.nan

    def fit_predict(train_rows, val_rows, predict_rows):
        mean = np.tile(np.nanmean(quality[train_rows], axis=0), (len(predict_rows), 1))
        return {"off": np.clip(mean + 0.3, 0, 1), "mean": mean, "flat": np.full_like(mean, 0.3)}

    done = complete_targets(quality, np.arange(600), fit_predict=fit_predict, folds=4, seed=0, ridge=0.05)
    scores = done.report["first_stage_candidates"]
    assert set(scores) == {"off", "mean", "flat"} and done.report["first_stage"] == "mean"
    assert scores["mean"] == min(scores.values()) == done.report["first_stage_brier"]
    alone = complete_targets(quality, np.arange(600), fit_predict=lambda *a: fit_predict(*a)["mean"], folds=4,
                             seed=0, ridge=0.05)
    assert np.array_equal(done.quality, alone.quality) and "first_stage" not in alone.report


def test_too_few_full_information_records_fall_back_to_masked_training_and_say_so():
    quality = np.full((300, 3), np.nan)
    quality[:, 0] = 1.0
    quality[:10] = 0.5
    done = complete_targets(quality, np.arange(300), fit_predict=lambda *a: pytest.fail("no first stage"),
                            folds=5, seed=0, ridge=0.05)
    assert done.report["method"] == "mask" and "10 records with every outcome" in done.report["note"]
    assert str(min_full_records(3)) in done.report["note"] and not done.imputed.any()


@pytest.mark.slow
def test_train_completes_a_simulated_log_and_full_information_trains_exactly_as_masked(tmp_path):
    """`router-ml train` on bootstrap + log completes the logged records (and says so in its summary; the
    same with the first stages fitted on worker processes);
    `loss.logged_targets=mask` does not; on full-information data both settings give the same weights."""
    table, _ = load_traffic(DEMO)
    full = write_jsonl(table.records[:1200], tmp_path / "full.jsonl")
    sim = tmp_path / "sim"
    cli("simulate-log", "--config", MLP_STATIC, "--data", full, "--out", sim, "--bootstrap", "300", "--logged", "600",
        "--explore-rate", "0.3", "--explore-seed", "0", "--seed", "0", "--quiet", *FAST,
        "--set", "tracking.enabled=false", "--set", "eval.baselines=random", cwd=tmp_path)
    both = tmp_path / "train.jsonl"
    both.write_text((sim / "bootstrap.jsonl").read_text() + (sim / "log.jsonl").read_text())
    common = ["--config", MLP_STATIC, "--set", "tracking.enabled=false", "--set", "eval.baselines=random", *FAST,
              "--quiet"]
    imputed = cli("train", "--data", both, "--out", tmp_path / "imputed", *common, cwd=tmp_path)
    report = imputed["logged_targets"]
    assert report["method"] == "impute" and report["full_records"] + report["partial_records"] == (
        imputed["train_records"] + imputed["val_records"])
    assert report["imputed_cells"] == report["partial_records"] * (len(table.models) - 1)
    assert imputed["propensity_weights"] is None  # mlp_static: no clip
    # the default router on the same completed log tries the lexical regression for its blend, never alone
    auto = cli("train", "--data", both, "--out", tmp_path / "auto", "--set", "tracking.enabled=false",
               "--set", "eval.baselines=random", *FAST, "--quiet", "--set", "router.lexical_min_records=0",
               "--set", "router.candidates=logreg,knn,lexical,ensemble", cwd=tmp_path)
    selection = auto["selection"]
    assert selection["completed_log"] is True and selection["chosen"] == "ensemble"
    assert "lexical" in selection["candidates"] and "lexical" not in selection.get("skipped", {})
    blend = selection["lexical_blend"]
    assert blend["kept"] == (blend["val_aiq"] >= blend["val_aiq_without"]) and blend["weight"] == 0.2
    # the folds' first stages fitted in two worker processes: the same completion, the same router
    parallel = cli("train", "--data", both, "--out", tmp_path / "parallel", *common, "--set", "train.workers=2",
                   cwd=tmp_path)

    def timeless(r):
        return {k: v for k, v in r.items() if k != "seconds"}
    assert timeless(parallel["logged_targets"]) == timeless(report)
    assert ((tmp_path / "parallel" / "weights.safetensors").read_bytes()
            == (tmp_path / "imputed" / "weights.safetensors").read_bytes())
    masked = cli("train", "--data", both, "--out", tmp_path / "masked", *common,
                 "--set", "loss.logged_targets=mask", "--set", "loss.propensity_clip=5", cwd=tmp_path)
    assert masked["logged_targets"] is None
    weighting = masked["propensity_weights"]  # one logged outcome per partial record of train + validation
    assert weighting["clip"] == 5 and weighting["weighted_outcomes"] == report["partial_records"]
    assert 0 < weighting["capped"] < weighting["weighted_outcomes"] and weighting["max_weight"] == 5
    for out in ("imputed", "masked"):  # both evaluate on the held-out full-information prompts
        scored = cli("evaluate", "--router", tmp_path / out, "--data", sim / "test.jsonl", "--json", "--quiet",
                     cwd=tmp_path)
        assert scored["test"]["estimator"] == "exact" and 0 < scored["test"]["aiq"] <= 1
    on_full = {}
    for setting in ("impute", "mask"):
        out = tmp_path / f"full-{setting}"
        summary = cli("train", "--data", full, "--out", out, *common, "--set", f"loss.logged_targets={setting}",
                      cwd=tmp_path)
        on_full[setting] = (out / "weights.safetensors").read_bytes()
        if setting == "impute":
            assert summary["logged_targets"]["note"].startswith("every record has every outcome")
    assert on_full["impute"] == on_full["mask"]
    assert json.loads((tmp_path / "imputed" / "config.json").read_text())["loss.logged_targets"] == "impute"


def test_logged_outcomes_weigh_their_clipped_inverse_propensity_and_imputed_cells_their_own_weight(tmp_path):
    """What the loss sees with `auto.toml`'s settings (propensity clip 5, imputed weight 0.5): a full-
    information record weighs 1 everywhere; a logged record's observed outcome min(1/p, 5); its imputed
    cells 0.5 - whatever their propensity column says."""
    from training.config import load_config
    from training.data.schema import Outcome, Record
    from training.offpolicy import Completion
    from training.pipeline import _batchable, propensity_weighting

    config = load_config(ROOT / "training" / "configs" / "auto.toml")
    assert (config.loss.propensity_clip, config.loss.imputed_weight) == (5.0, 0.5)
    records = [Record(prompt="both", outcomes={"a": Outcome(1.0, 0.1), "b": Outcome(0.0, 0.2)}),
               Record(prompt="explored", outcomes={"a": Outcome(0.0, 0.1, propensity=0.05)}),
               Record(prompt="exploited", outcomes={"b": Outcome(1.0, 0.2, propensity=0.8)})]
    table, _ = load_traffic(write_jsonl(records, tmp_path / "log.jsonl"))
    a, b = table.models.index("a"), table.models.index("b")
    imputed = ~np.isfinite(table.quality)
    completion = Completion(quality=np.where(imputed, 0.5, table.quality), imputed=imputed, report={})
    rows = np.arange(3)
    zeros = np.zeros((3, 2))
    data = _batchable((zeros,), rows, table, zeros, zeros, clip=config.loss.propensity_clip, completion=completion,
                      imputed_weight=config.loss.imputed_weight)
    expected = np.ones((3, 2))
    expected[1, a], expected[1, b] = 5.0, 0.5  # 1/0.05 = 20, clipped
    expected[2, b], expected[2, a] = 1.25, 0.5
    assert np.allclose(data.weights, expected) and np.array_equal(data.imputed, imputed)
    assert np.allclose(data.quality[imputed], 0.5)
    plain = _batchable((zeros,), rows[:1], table, zeros, zeros, clip=5.0, completion=completion, imputed_weight=0.5)
    assert plain.weights is None  # a full-information record alone: unweighted, as without the clip
    assert propensity_weighting(table, rows, 5.0) == {"clip": 5.0, "weighted_outcomes": 2, "capped": 1,
                                                      "mean_weight": 3.125, "max_weight": 5.0}
    assert propensity_weighting(table, rows, 0.0) is None and propensity_weighting(table, rows[:1], 5.0) is None
    assert is_blank(table.propensity) is False
    full, _ = load_traffic(write_jsonl(records[:1], tmp_path / "full.jsonl"))
    assert is_blank(full.propensity)  # no propensity logged: the clip copies none (training/pipeline.py)


def test_train_stops_before_featurizing_when_its_logged_test_split_cannot_be_scored(tmp_path):
    """A log whose test split never logged some model: `train` names that model and stops at once
    (before featurizing or fitting anything), instead of failing after the training it would lose."""
    from router_ml.errors import DataError
    from training.config import load_config
    from training.data import split_table
    from training.data.schema import Outcome, Record
    from training.pipeline import train_router

    records = [Record(prompt=f"logged prompt number {i}", outcomes={("a", "b")[i % 2]: Outcome(
        float(i % 3 == 0), 0.1, propensity=0.8)}) for i in range(60)]
    table, _ = load_traffic(write_jsonl(records, tmp_path / "probe.jsonl"))
    split = split_table(table, train_size=0.8, seed=0)
    train_only = int(split.train[0])  # "c" is logged on one training record only
    records[train_only] = Record(prompt=records[train_only].prompt,
                                 outcomes={"c": Outcome(1.0, 0.3, propensity=0.1)})
    data = write_jsonl(records, tmp_path / "log.jsonl")
    config = load_config(MLP_STATIC, ["data.train_size=0.8", "data.seed=0", "tracking.enabled=false"])
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"no outcome of \['c'\]") as err:
        train_router(config, data, out_dir=tmp_path / "out", cache_dir=cache, progress=False)
    assert "--train-size" in str(err.value) and f"{len(split.test)} logged records" in str(err.value)
    assert not (tmp_path / "out").exists() and not cache.exists()  # nothing featurized, nothing written
