"""The self-selecting router (``router.kind = "auto"``): its heads against the scikit-learn baselines
they replace, the selection on real demo files, and every candidate kind through the ONNX export
into the torch-free runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import ConfigError, TrainConfig, load_config
from training.data import load_traffic
from training.routers.baselines import KNNRouter, LogRegRouter
from training.routers.distill import MIXED
from training.routers.heads import (
    KNNHead,
    apply_platt,
    build_head,
    expected_calibration_error,
    fit_logreg,
    fit_platt,
    knn_projection,
)

from .conftest import ROOT, demo_head


def _synthetic(n: int = 400, d: int = 16, m: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    truth = 1 / (1 + np.exp(-(X @ rng.normal(size=(d, m)))))
    quality = (rng.random((n, m)) < truth).astype(float)
    quality[rng.random((n, m)) < 0.1] = np.nan  # some outcomes not logged
    return X, quality


def _sigmoid_of(head, X) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(head(torch.as_tensor(X))).numpy()


def test_logreg_head_matches_scikit_learn_logistic_regression():
    X, quality = _synthetic()
    quality[:, 2] = np.where(np.isnan(quality[:, 2]), np.nan, 1.0)  # a constant model predicts its constant
    for C in (0.1, 1.0):
        ours = _sigmoid_of(fit_logreg(X, quality, C), X[:50])
        theirs = LogRegRouter(C=C).fit(X, quality).predict(X[:50])
        assert np.abs(ours - theirs).max() < 2e-3, C
    assert np.allclose(ours[:, 2], 1.0, atol=1e-5)


def test_logreg_and_knn_heads_weigh_each_cell_as_the_torch_candidates_do():
    """Completed logged records: an imputed cell weighs loss.imputed_weight in the logistic regression
    and kNN too - weight 0 is a missing outcome, weight 1 an outcome, and in between lies between."""
    X, quality = _synthetic()
    full = np.nan_to_num(quality, nan=0.0)
    imputed = np.isnan(quality)
    weights = np.where(imputed, 0.0, 1.0)
    as_missing = _sigmoid_of(fit_logreg(X, quality, 1.0), X[:50])
    # the same objective summed in another order: L-BFGS stops at its tolerance a little apart (1.3e-4 on an
    # AVX2-only CPU, under 1e-4 on others), against a 0.36 gap between the two meanings checked below
    assert np.abs(_sigmoid_of(fit_logreg(X, full, 1.0, weights=weights), X[:50]) - as_missing).max() < 1e-3
    as_outcome = _sigmoid_of(fit_logreg(X, full, 1.0), X[:50])
    assert np.abs(_sigmoid_of(fit_logreg(X, full, 1.0, weights=np.ones_like(full)), X[:50]) - as_outcome).max() < 1e-4
    half = _sigmoid_of(fit_logreg(X, full, 1.0, weights=np.where(imputed, 0.5, 1.0)), X[:50])
    gap = np.abs(as_outcome - as_missing)
    assert gap.max() > 0.01  # the imputed zeros matter
    between = (half - np.minimum(as_missing, as_outcome) > -1e-3) & (np.maximum(as_missing, as_outcome) - half > -1e-3)
    assert between[gap > 0.01].mean() > 0.95
    # kNN the same way: a weighted mean of its neighbours' targets
    knn_missing = KNNHead(X, quality, 10)(torch.as_tensor(X[:50]))
    knn_zero = KNNHead(X, full, 10, weights)(torch.as_tensor(X[:50]))
    assert torch.allclose(knn_zero, knn_missing, atol=1e-5)
    assert torch.allclose(KNNHead(X, full, 10, np.ones_like(full))(torch.as_tensor(X[:50])),
                          KNNHead(X, full, 10)(torch.as_tensor(X[:50])), atol=1e-6)


def test_knn_head_matches_the_knn_baseline_and_gives_the_prior_without_features():
    X, quality = _synthetic(n=300)
    queries = np.random.default_rng(1).normal(size=(40, X.shape[1])).astype(np.float32)
    head = KNNHead(X, quality, 25)
    assert np.abs(_sigmoid_of(head, queries) - KNNRouter(k=25).fit(X, quality).predict(queries)).max() < 1e-5
    grid = head.predict_grid(queries, [5, 25])
    assert np.allclose(grid[25], _sigmoid_of(head, queries), atol=1e-5)
    assert not np.allclose(grid[5], grid[25])
    empty = _sigmoid_of(head, np.zeros((1, X.shape[1]), np.float32))[0]  # no token known: every key ties
    assert np.allclose(empty, np.nanmean(quality, axis=0), atol=1e-5)


def test_knn_search_in_the_stored_prompts_top_directions():
    """``dims``: similarities through the keys' top singular directions - exact where the stored prompts
    span no more directions (any query: its part outside their span adds nothing to a dot product with
    them), a close approximation otherwise, and no projection where it would not make the search cheaper."""
    rng = np.random.default_rng(4)
    low_rank = (rng.normal(size=(200, 3)) @ rng.normal(size=(3, 40))).astype(np.float32)  # 3 directions of 40
    quality = (rng.random((200, 2)) < 0.6).astype(float)
    queries = rng.normal(size=(30, 40)).astype(np.float32)
    full, projected = KNNHead(low_rank, quality, 15), KNNHead(low_rank, quality, 15, dims=8)
    assert full.dims == 0 and projected.dims == 8 and tuple(projected.keys.shape) == (200, 8)
    np.testing.assert_allclose(projected._similarities(torch.as_tensor(queries))[0].numpy(),
                               full._similarities(torch.as_tensor(queries))[0].numpy(), atol=1e-5)
    X, quality = _synthetic(n=600, d=64)
    spectrum = (0.93 ** np.arange(64)).astype(np.float32)  # features' variance falls off, as embeddings' does
    X, queries = X * spectrum, np.random.default_rng(5).normal(size=(100, 64)).astype(np.float32) * spectrum
    approx = KNNHead(X, quality, 50, dims=32)
    sims, exact = (h._similarities(torch.as_tensor(queries))[0].numpy() for h in (approx, KNNHead(X, quality, 50)))
    assert 0 < np.abs(sims - exact).max() < 0.1 and np.corrcoef(sims.ravel(), exact.ravel())[0, 1] > 0.99
    overlap = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(np.argsort(-sims, axis=1)[:, :50],
                                                                  np.argsort(-exact, axis=1)[:, :50], strict=True)])
    assert overlap > 0.9
    assert knn_projection(X, 0) is None and knn_projection(X, 64) is None  # off, or every direction kept
    assert knn_projection(X[:40], 32) is None  # 32 x (40 + 64) >= 40 x 64: two products cost more than one
    assert knn_projection(X, 32).shape == (64, 32)


def test_platt_calibration_refits_in_float64_where_the_float32_line_search_overflows(monkeypatch):
    """L-BFGS's strong-Wolfe line search once extrapolated past float32's range fitting a Platt scaling
    (RuntimeError: value cannot be converted to type float without overflow); the fit is then redone in
    float64 instead of failing the run."""
    rng = np.random.default_rng(3)
    pred = rng.random((300, 2))
    quality = (rng.random((300, 2)) < pred).astype(float)
    step = torch.optim.LBFGS.step

    def overflowing(self, closure):
        if self.param_groups[0]["params"][0].dtype == torch.float32:
            raise RuntimeError("value cannot be converted to type float without overflow")
        return step(self, closure)

    expected = fit_platt(pred, quality)
    monkeypatch.setattr(torch.optim.LBFGS, "step", overflowing)
    scale, shift = fit_platt(pred, quality)
    assert scale.dtype == np.float32 and np.isfinite(scale).all() and np.isfinite(shift).all()
    np.testing.assert_allclose(scale, expected[0], atol=1e-3)
    np.testing.assert_allclose(shift, expected[1], atol=1e-3)


def test_platt_calibration_lowers_the_calibration_error_of_squashed_predictions():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=2.0, size=(3000, 2))
    quality = (rng.random((3000, 2)) < 1 / (1 + np.exp(-z))).astype(float)
    squashed = 1 / (1 + np.exp(-(0.3 * z - 0.5)))  # right order, far too timid and shifted
    before = expected_calibration_error(squashed, quality)
    after = expected_calibration_error(apply_platt(squashed, *fit_platt(squashed, quality)), quality)
    assert before > 0.1 and after < 0.03  # the noise floor here: 0.017 for the true probabilities


def test_saved_spec_rebuilds_every_head_with_its_weights():
    X, quality = _synthetic()
    spec = {"type": "mean", "members": [{"type": "calibrated", "base": {"type": "logreg"}},
                                        {"type": "knn", "records": 50, "k": 7},
                                        {"type": "knn", "records": 300, "k": 9, "dims": 6},
                                        {"type": "mlp", "hidden": 8, "layers": 1, "dropout": 0.0}]}
    from training.routers.heads import Calibrated, MeanHead
    from training.routers.neural import MLPHead

    projected = KNNHead(X[:300], quality[:300], 9, dims=6)
    assert projected.dims == 6
    original = MeanHead([Calibrated(fit_logreg(X, quality, 1.0), 3), KNNHead(X[:50], quality[:50], 7), projected,
                         MLPHead(X.shape[1], 3, 8, 1, 0.0)]).eval()
    rebuilt = build_head(json.loads(json.dumps(spec)), X.shape[1], 3)
    rebuilt.load_state_dict(original.state_dict())
    assert np.allclose(_sigmoid_of(rebuilt.eval(), X[:20]), _sigmoid_of(original, X[:20]), atol=1e-6)
    with pytest.raises(ValueError, match="unknown head type 'forest'"):
        build_head({"type": "forest"}, 4, 2)


def test_the_exported_ensemble_mixes_probabilities_without_logit_round_trips(tmp_path):
    """The graph takes a mixing head's probabilities directly (``probabilities``): the numbers of
    sigmoid(head) - the training forward's - with one sigmoid for all calibrated members and no logit
    (Log) left but the one a calibrated group blend needs; MF's export form is the same function."""
    import onnx
    import onnxruntime as ort

    from training.export import _export_onnx
    from training.routers.heads import Calibrated, MeanHead, probabilities
    from training.routers.neural import GroupBlend, MFHead, MLPHead

    X, quality = _synthetic()
    torch.manual_seed(0)
    members = [Calibrated(fit_logreg(X, quality, 1.0), 3), Calibrated(MFHead(16, 3, 4, 0.0), 3),
               Calibrated(GroupBlend(MLPHead(16, 3, 8, 1, 0.0), 16, torch.rand(4, 3), 0.5), 3),
               KNNHead(X[:50], quality[:50], 7)]
    for m in members[:3]:
        m.scale.uniform_(0.5, 2.0)
        m.shift.uniform_(-1.0, 1.0)
    head = MeanHead(members).eval()
    want = _sigmoid_of(head, X[:40])
    with torch.no_grad():
        np.testing.assert_allclose(probabilities(head, torch.as_tensor(X[:40])).numpy(), want, atol=1e-6)

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, x):
            return probabilities(self.head, x)

    path = tmp_path / "mean.onnx"
    _export_onnx(Graph(), path, {"x": torch.as_tensor(X[:2])}, {"x": {0: "batch"}})
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # GroupBlend's sigmoid, its logit under Platt scaling (two Logs), the calibrated block's one sigmoid
    assert ops.count("Sigmoid") == 2 and ops.count("Log") == 2 and "Shape" not in ops, ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": X[:40]})[0], want, atol=1e-5)


def test_auto_settings_are_validated_with_the_key_named(tmp_path):
    assert load_config(ROOT / "training/configs/auto.toml").router.kind == "auto"
    with pytest.raises(ConfigError, match=r"router.candidates\[1\].*unknown candidate 'forest'"):
        load_config(ROOT / "training/configs/auto.toml", ["router.candidates=mlp,forest"])
    with pytest.raises(ConfigError, match=r"router.knn_k\[0\].*whole number"):
        load_config(ROOT / "training/configs/auto.toml", ["router.knn_k=2.5"])
    with pytest.raises(ConfigError, match="router.groups: the auto router tries"):
        load_config(ROOT / "training/configs/auto.toml", ["router.groups=task"])
    with pytest.raises(ConfigError, match="router.auto_pick"):
        load_config(ROOT / "training/configs/auto.toml", ["router.candidates=mlp,logreg", "router.auto_pick=knn"])
    with pytest.raises(ConfigError, match="router.auto_encoder: expected one of cuda, always, never"):
        load_config(ROOT / "training/configs/auto.toml", ["router.auto_encoder=gpu"])
    with pytest.raises(ConfigError, match="the ensemble averages"):  # the encoder is not averaged in
        load_config(ROOT / "training/configs/auto.toml", ["router.candidates=logreg,encoder,ensemble"])
    with pytest.raises(ConfigError, match="the ensemble averages"):  # nor the lexical regression: blended after
        load_config(ROOT / "training/configs/auto.toml", ["router.candidates=logreg,lexical,ensemble"])
    with pytest.raises(ConfigError, match="router.ensemble_members: empty, and router.candidates lists the ensemble"):
        load_config(ROOT / "training/configs/auto.toml", ["router.ensemble_members="])
    with pytest.raises(ConfigError, match=r"router.ensemble_members\[1\]: expected one of mlp, mf, groups, logreg"):
        load_config(ROOT / "training/configs/auto.toml", ["router.ensemble_members=mlp,lexical"])
    with pytest.raises(ConfigError, match="router.candidates: the ensemble averages the candidates of "
                                          r"router.ensemble_members \(mlp, logreg\)"):
        load_config(ROOT / "training/configs/auto.toml", ["router.candidates=logreg,knn,ensemble",
                                                          "router.ensemble_members=mlp,logreg"])
    with pytest.raises(ConfigError, match=r"router.knn_dims.*>= 0"):
        load_config(ROOT / "training/configs/auto.toml", ["router.knn_dims=-1"])
    with pytest.raises(ConfigError, match=r"router.lexical_blend.*\[0, 1\)"):
        load_config(ROOT / "training/configs/auto.toml", ["router.lexical_blend=1"])
    with pytest.raises(ConfigError, match=r"router.lexical_c\[0\]"):
        load_config(ROOT / "training/configs/auto.toml", ["router.lexical_c=0"])
    with pytest.raises(ConfigError, match="router.ensemble_confidence.*between 0 and 1"):
        load_config(ROOT / "training/configs/auto.toml", ["router.ensemble_confidence=1.5"])
    # the fixed margin it replaced: named in a file or --set, a pointer to the new key; in a checkpoint
    # saved before (its config.json), dropped
    with pytest.raises(ConfigError, match="--set: router.ensemble_margin was replaced by router.ensemble_confidence"):
        load_config(ROOT / "training/configs/auto.toml", ["router.ensemble_margin=0.002"])
    old = tmp_path / "old.toml"
    old.write_text('[router]\nkind = "auto"\nensemble_margin = 0.002\n')
    with pytest.raises(ConfigError, match=r"old.toml: router.ensemble_margin was replaced by router.ensemble_conf"):
        load_config(old)
    saved = {**load_config(ROOT / "training/configs/auto.toml").to_flat(), "router.ensemble_margin": 0.002}
    assert TrainConfig.from_flat(saved).router.ensemble_confidence == 0.95


def _cheap_and_dear(rng, n: int, accuracy: tuple[float, float], *, knobs: int):
    """``n`` held-out prompts of a cheap model (cost 1) and a dear one (cost 10) answering correctly with
    these ``accuracy`` rates: the outcomes and the :class:`HeldOut` the selection scores candidates on."""
    from training.evaluation import HeldOut

    quality = (rng.random((n, 2)) < np.array(accuracy)).astype(float)
    cost = np.tile([1.0, 10.0], (n, 1))
    return quality, HeldOut(quality=quality, cost=cost, cost_est=cost, wtps=np.geomspace(0.1, 1000, knobs),
                            models=("cheap", "dear"), n_boot=0)


def test_the_paired_bootstrap_counts_the_resamples_one_router_routes_better_on():
    """How ``auto`` decides that a single candidate beats the ensemble beyond noise."""
    from training.routers.auto_choice import paired_wins

    rng = np.random.default_rng(0)
    n = 300
    quality, held = _cheap_and_dear(rng, n, (0.5, 0.8), knobs=16)
    knows = quality * 0.9 + 0.05  # predicts each outcome: sends a prompt to the cheap model when it suffices
    guesses = np.tile([0.5, 0.8], (n, 1)) + rng.normal(0, 0.01, (n, 2))  # the prior, with noise
    assert paired_wins(knows, guesses, held, seed=0) == 1.0
    assert paired_wins(guesses, knows, held, seed=0) == 0.0
    assert paired_wins(guesses, guesses, held, seed=0) == 0.0  # a tie is no win
    barely = guesses.copy()
    barely[:2] = knows[:2]  # right on 2 prompts of 300: better on most resamples, not beyond noise
    share = paired_wins(barely, guesses, held, seed=0, n_boot=100)
    assert share == paired_wins(barely, guesses, held, seed=0, n_boot=100)  # seeded
    assert 0.5 < share < 0.95
    barely[:20] = knows[:20]  # on 20: on every resample
    assert paired_wins(barely, guesses, held, seed=0, n_boot=100) == 1.0


def test_where_every_model_costs_the_same_candidates_are_scored_by_the_quality_they_route_to():
    """No cost range, no AIQ (self-hosted models priced at 0): the selection scores the routed quality
    instead of leaving every candidate at -inf and the choice to the tie-break order."""
    from training.evaluation import HeldOut
    from training.routers import AutoRouter
    from training.routers.auto_choice import held_out_aiq, paired_wins, without_cost_range

    rng = np.random.default_rng(0)
    n = 300
    quality = (rng.random((n, 2)) < np.array([0.5, 0.8])).astype(float)
    free = np.zeros((n, 2))
    held = HeldOut(quality=quality, cost=free, cost_est=free, wtps=np.geomspace(0.1, 1000, 16),
                   models=("a", "b"), n_boot=0)
    assert without_cost_range(held)
    knows = quality * 0.9 + 0.05
    guesses = np.tile([0.5, 0.8], (n, 1)) + rng.normal(0, 0.01, (n, 2))  # always b
    assert held_out_aiq(knows, held) == round(float(quality.max(axis=1).mean()), 6)  # the better of the two
    assert held_out_aiq(guesses, held) == round(float(quality[:, 1].mean()), 6)
    assert paired_wins(knows, guesses, held, seed=0) == 1.0 and paired_wins(guesses, knows, held, seed=0) == 0.0
    priced = HeldOut(quality=quality, cost=np.tile([1.0, 10.0], (n, 1)), cost_est=np.tile([1.0, 10.0], (n, 1)),
                     wtps=np.geomspace(0.1, 1000, 16), models=("a", "b"), n_boot=0)
    assert not without_cost_range(priced) and held_out_aiq(knows, priced) != held_out_aiq(knows, held)

    X, quality = _synthetic(n=400)
    quality = np.nan_to_num(quality, nan=0.0)
    config = load_config(ROOT / "training/configs/auto.toml", {**FAST, "router.candidates": ["logreg", "knn",
                                                                                            "ensemble"]})
    from training.trainer import Batchable

    def part(rows):
        same = np.full((len(rows), 3), 0.2, np.float32)
        return Batchable(inputs=(X,), quality=quality[rows].astype(np.float32), cost=same, cost_est=same,
                         rows=np.asarray(rows))

    router = AutoRouter(config=config, n_models=3, input_dim=X.shape[1]).fit(part(np.arange(300)),
                                                                            part(np.arange(300, 350)),
                                                                            wtp_range=(0.01, 100.0))
    selection = router.selection_
    assert selection["picked_by"] == "held-out best quality (every model costs the same: no AIQ)"
    scores = [entry["val_aiq"] for entry in selection["candidates"].values()]
    assert all(0 < v <= 1 for v in scores) and len(set(scores)) > 1, selection["candidates"]


def test_the_encoder_candidate_takes_its_fine_tuning_from_its_own_config_and_the_split_from_the_run(tmp_path):
    from training.routers.auto_encoder import encoder_candidate_config

    auto = load_config(ROOT / "training/configs/auto.toml", ["data.seed=7", "data.val_size=0.2", "train.device=cpu"])
    candidate = encoder_candidate_config(auto)
    packaged = load_config(ROOT / "training/configs/encoder_fast.toml")
    assert (candidate.router.kind, candidate.router.encoder_layers, candidate.train.lr, candidate.train.epochs) == \
        ("encoder", packaged.router.encoder_layers, packaged.train.lr, packaged.train.epochs)
    assert (candidate.data.seed, candidate.data.val_size, candidate.train.device) == (7, 0.2, "cpu")
    assert candidate.featurizer == auto.featurizer and candidate.eval == auto.eval
    wrong = tmp_path / "mlp.toml"
    wrong.write_text('[router]\nkind = "mlp"\n')
    for value, message in ((str(tmp_path / "missing.toml"), "no config at"), ("no_such_config", "no config at"),
                           (str(wrong), "needs a config with router.kind")):
        with pytest.raises(ConfigError, match=f"router.auto_encoder_config.*{message}"):
            encoder_candidate_config(auto.replace(**{"router.auto_encoder_config": value}))


# --- end to end on demo files: each candidate kind exported and run by the runtime -----------------

FAST = {"train.epochs": 8, "eval.n_boot": 0, "eval.knob_points": 21, "router.hidden": 64,
        "router.knn_k": ["5", "25"], "router.logreg_c": ["0.1", "1"]}


@pytest.fixture(scope="module")
def demo_800(tmp_path_factory):
    return demo_head(tmp_path_factory, 800)


def _train(tmp_path, data, **overrides):
    from training.pipeline import train_router

    config = load_config(ROOT / "training/configs/auto.toml", {**FAST, **overrides})
    return train_router(config, data, out_dir=tmp_path / "router", progress=False,
                        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_the_training_commands_default_to_the_auto_config():
    """Without --config, train / simulate-log / sweep / featurize read auto.toml (the default router);
    TrainConfig() in code stays the plain MLP building block."""
    from router_ml.cli import build_parser
    from training.cli import DEFAULT_CONFIG as CLI_DEFAULT
    from training.config import DEFAULT_CONFIG, TrainConfig, packaged_config

    assert Path(CLI_DEFAULT) == DEFAULT_CONFIG == packaged_config("auto") == ROOT / "training/configs/auto.toml"
    parser = build_parser()
    for command in (["train", "--out", "o"], ["simulate-log", "--out", "o"], ["sweep", "--out", "o"], ["featurize"]):
        args = parser.parse_args([command[0], "--data", "d.jsonl", *command[1:]])
        assert args.config == CLI_DEFAULT, command
    assert load_config(CLI_DEFAULT).router.kind == "auto" and TrainConfig().router.kind == "mlp"


@pytest.mark.slow
def test_train_without_a_config_selects_itself(tmp_path, demo_800):
    """`router-ml train --data D --out O`, as a new user runs it: the auto router, its selection printed."""
    import subprocess
    import sys

    sets = [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in FAST.items()]
    sets += ["router.candidates=logreg,knn,ensemble", "tracking.enabled=false", "eval.baselines=random,knn,logreg"]
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", "train", "--data", str(demo_800), "--out",
                          str(tmp_path / "r"), "--quiet", *[a for s in sets for a in ("--set", s)]],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["router"] == "auto"
    assert set(summary["selection"]["candidates"]) >= {"logreg", "knn"}
    assert summary["selection"]["chosen"] in {"logreg", "knn", "ensemble"}


def _runtime_matches_training(summary, data):
    """The exported artifact's ``Router.predict`` equals the training-side predictions (test_predictions)."""
    from router_ml import Router

    table, _ = load_traffic(data)
    lines = (Path(summary["out"]) / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    got = Router.load(summary["artifact"]).predict([table.texts[r["row"]] for r in rows])
    assert np.abs(got - np.array([r["quality_hat"] for r in rows])).max() < 1e-4


@pytest.mark.slow
def test_a_router_trained_on_routerbench_cells_routes_the_cells_and_their_text_alike(tmp_path, demo_800):
    """RouterBench's files hold every prompt as ``str(list_of_turns)``. Trained on such a table, the
    router learns from the text (the data layer reads each cell as user turns), and the exported
    artifact's ``Router.predict`` on the table's own cells - as a re-scoring script passes them - gives
    exactly the predictions ``train`` scored its test split with, as it does on the plain text."""
    import pandas as pd

    from router_ml import Router

    table, _ = load_traffic(demo_800)
    cells = [str([t]) if i % 3 else str(["You are a helpful assistant.", t]) for i, t in enumerate(table.texts)]
    wide = {"sample_id": [f"s{i}" for i in range(len(table))], "prompt": cells}
    for j, model in enumerate(table.models):
        wide[model], wide[f"{model}|total_cost"] = table.quality[:, j], table.cost[:, j]
    path = tmp_path / "routerbench.parquet"
    pd.DataFrame(wide).to_parquet(path)
    summary = _train(tmp_path, path, **{"router.candidates": ["logreg"], "router.cv_below": 0, "data.val_size": 0.2,
                                        "tracking.enabled": False})
    loaded, _ = load_traffic(path)
    assert list(loaded.texts) == list(table.texts)  # the router learnt from the text, not from the cells
    rows = [json.loads(line) for line in (Path(summary["out"]) / "test_predictions.jsonl").read_text().splitlines()]
    router = Router.load(summary["artifact"])
    expected = np.array([r["quality_hat"] for r in rows])
    from_cells = router.predict([cells[r["row"]] for r in rows])
    assert np.abs(from_cells - expected).max() < 1e-4
    np.testing.assert_array_equal(from_cells, router.predict([table.texts[r["row"]] for r in rows]))
    assert router.route(cells[1]) == router.route(table.texts[1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "mf", "groups", "logreg", "knn"])
def test_each_candidate_kind_exports_to_one_graph_the_runtime_runs(tmp_path, demo_800, kind):
    # val 20% of 560 = 112 prompts: selected on the validation split, not cross-validated
    summary = _train(tmp_path, demo_800, **{"router.candidates": [kind], "router.cv_below": 0,
                                            "data.val_size": 0.2, "tracking.enabled": False})
    selection = summary["selection"]
    assert selection["chosen"] == kind and selection["mode"] == "validation split"
    assert summary["export"]["fp32_max_abs_diff"] < 1e-4, summary["export"]
    entry = selection["candidates"][kind]
    assert entry["val_aiq"] == max(entry["val_aiq_uncalibrated"], entry["val_aiq_calibrated"])
    assert entry["ece_calibrated"] <= entry["ece_uncalibrated"] + 0.01  # Platt scaling, fitted on these predictions
    if kind == "knn":  # 560 stored prompts: searched in 128 directions (router.knn_dims), exported as such
        assert '"dims": 128' in (Path(summary["out"]) / "router.json").read_text(encoding="utf-8")
    _runtime_matches_training(summary, demo_800)


@pytest.mark.slow
def test_a_kept_group_blend_exports_to_the_same_graph_the_runtime_runs(tmp_path, demo_800):
    """A near-constant logistic regression picked, the demo's task blended in: the blend is kept, logged to
    MLflow, saved in router.json's spec and exported with the group classifier and table inside the one
    ONNX graph."""
    summary = _train(tmp_path, demo_800, **{"router.candidates": ["logreg", "groups"], "router.auto_pick": "logreg",
                                            "router.logreg_c": ["0.0001"], "router.calibrate": False})
    blend = summary["selection"]["group_blend"]
    assert blend["field"] == "task" and blend["val_aiq"] > blend["val_aiq_without"]
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["run_id"])
    assert run.data.params["selection.group_blend"] == f"task x {blend['weight']:g}"
    assert run.data.metrics["selection.group_blend.val_aiq"] == pytest.approx(blend["val_aiq"])
    info = json.loads((Path(summary["out"]) / "router.json").read_text())
    assert info["spec"]["type"] == "groups" and info["spec"]["base"]["type"] == "logreg"
    assert summary["export"]["fp32_max_abs_diff"] < 1e-4, summary["export"]
    _runtime_matches_training(summary, demo_800)


@pytest.mark.slow
def test_a_kept_lexical_blend_exports_to_the_graph_the_runtime_runs_and_reloads(tmp_path, demo_800):
    """The lexical regression (cross-validated: 560 records, 56 validation prompts) blended into the chosen
    ensemble where that routes at least as well held out: the token-id head inside the one ONNX graph, the
    runtime's predictions equal to train's, and the saved checkpoint rebuilds the same mix."""
    from training.routers import TorchRouter
    from training.saved import load_saved

    summary = _train(tmp_path, demo_800, **{"router.candidates": ["logreg", "knn", "lexical", "ensemble"],
                                            "router.auto_pick": "ensemble", "router.lexical_c": ["0.3", "3"],
                                            "router.lexical_min_records": 500})
    selection = summary["selection"]
    assert selection["mode"] == "5-fold cross-validation" and "skipped" not in selection
    entry = selection["candidates"]["lexical"]
    assert entry["C"] in (0.3, 3.0) and set(entry["grid"]) == {"0.3", "3.0"}
    assert entry["grid"][str(entry["C"])] == max(entry["grid"].values())
    assert selection["candidates"]["ensemble"]["members"] == ["logreg", "knn"]  # blended in, not averaged
    blend = selection["lexical_blend"]
    assert blend["weight"] == 0.2 and blend["kept"] and blend["val_aiq"] >= blend["val_aiq_without"]
    import mlflow

    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["run_id"])
    assert run.data.params["selection.lexical_blend"] == "x 0.2"
    assert run.data.metrics["selection.lexical_blend.val_aiq"] == pytest.approx(blend["val_aiq"])
    assert run.data.metrics["selection.lexical.val_aiq"] == pytest.approx(entry["val_aiq"])
    spec = json.loads((Path(summary["out"]) / "router.json").read_text())["spec"]
    assert spec["type"] == "lexical_mix" and spec["weight"] == pytest.approx(0.2)
    assert spec["base"]["type"] == "mean" and len(spec["base"]["members"]) == 2
    assert summary["export"]["fp32_max_abs_diff"] < 1e-4, summary["export"]
    _runtime_matches_training(summary, demo_800)
    table, _ = load_traffic(demo_800)
    rows = [json.loads(line) for line in (Path(summary["out"]) / "test_predictions.jsonl").read_text().splitlines()]
    texts = [table.texts[r["row"]] for r in rows]
    reloaded = load_saved(summary["out"]).predict(texts)
    loaded = TorchRouter.load(summary["out"])
    assert loaded.reads_tokens and loaded.predict_batch == 128  # (batch, T, T) pairs of ids: smaller batches
    assert np.abs(reloaded - np.array([r["quality_hat"] for r in rows])).max() < 1e-5


@pytest.mark.slow
def test_a_distilled_router_is_one_mlp_fitted_to_the_chosen_head_and_scored_beside_it(tmp_path, demo_800):
    """router.distill: the kept ensemble replaced by one MLP fitted to its predictions - the checkpoint, the
    graph the runtime runs and the test figures are the student's, close to the head it replaced, and the
    replaced head is scored on the same test prompts. By default the kept lexical blend stays over the student,
    which imitates the ensemble under it on the training prompts and on mixed ones; with
    ``router.distill_lexical = false`` the student imitates the whole head (token ids included): 11 nodes."""
    import mlflow
    import onnx

    from training.pipeline import train_router

    overrides = {**FAST, "router.candidates": ["logreg", "knn", "lexical", "ensemble"], "router.auto_pick": "ensemble",
                 "router.lexical_c": ["0.3"], "router.lexical_min_records": 500, "eval.n_boot": 50}
    (tmp_path / "teacher").mkdir()
    teacher = _train(tmp_path / "teacher", demo_800, **overrides)
    assert teacher["selection"]["lexical_blend"]["kept"]  # the replaced head reads token ids
    teacher_spec = json.loads((Path(teacher["out"]) / "router.json").read_text())["spec"]
    teacher_graph = onnx.load(teacher["artifact"] + "/router.onnx").graph
    mlp = {"type": "mlp", "hidden": FAST["router.hidden"], "layers": 1, "dropout": 0.0}
    for under_words in (True, False):
        out = tmp_path / f"router_{under_words}"
        config = load_config(ROOT / "training/configs/auto.toml",
                             {**overrides, "router.distill": True, "router.distill_lexical": under_words})
        summary = train_router(config, demo_800, out_dir=out, progress=False,
                               tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        distilled = summary["selection"]["distilled"]
        assert distilled["replaced"] == "ensemble" and distilled["replaced_spec"] == "lexical_mix"
        if under_words:  # the blend as chosen, the ensemble under it replaced; mixed prompts beside the training ones
            assert distilled["student"] == {**teacher_spec, "base": mlp}
            assert distilled["kept_lexical_blend"] == teacher_spec["weight"]
            assert distilled["mixed_prompts"] == MIXED * distilled["fit_records"]
        else:  # the whole head reads token ids: nothing to mix
            assert distilled["student"] == mlp and distilled["kept_lexical_blend"] is None
            assert distilled["mixed_prompts"] == 0
        assert distilled["stop_records"] > 0 and distilled["mean_abs_difference_stop"] < 0.05
        info = json.loads((out / "router.json").read_text())
        assert info["spec"] == distilled["student"] and info["selection"]["distilled"] == distilled
        replaced = summary["test"]["distilled_from"]
        # the same selection, the same split: the replaced head is the teacher run's router, on the same prompts
        assert replaced["aiq"] == pytest.approx(teacher["test"]["aiq"], abs=1e-9)
        diff = replaced["student_minus_replaced"]
        assert diff["aiq"] == pytest.approx(summary["test"]["aiq"] - replaced["aiq"])
        assert diff["ci95"]["aiq"][0] <= diff["aiq"] <= diff["ci95"]["aiq"][1]
        assert abs(diff["aiq"]) < 0.02
        graph = onnx.load(summary["artifact"] + "/router.onnx").graph
        if under_words:
            assert len(graph.node) < len(teacher_graph.node), (len(graph.node), len(teacher_graph.node))
        else:
            assert len(graph.node) <= 25 and 2 * len(graph.node) < len(teacher_graph.node), (
                len(graph.node), len(teacher_graph.node))
        assert summary["export"]["fp32_max_abs_diff"] < 1e-4, summary["export"]
        _runtime_matches_training(summary, demo_800)
        run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["run_id"])
        words = f" under the lexical blend x {teacher_spec['weight']:g}" if under_words else ""
        assert run.data.params["selection.distilled"] == "ensemble -> mlp" + words
        assert run.data.metrics["distilled_from.aiq"] == pytest.approx(replaced["aiq"])
    with pytest.raises(ConfigError, match="router.distill"):
        load_config(ROOT / "training/configs/mlp_static.toml", {"router.distill": True})


def test_the_student_starts_from_the_heads_own_mlp_of_its_shape():
    """The distilled MLP starts from the first MLP of its shape inside the head it imitates (here the MLP under a
    calibrated group blend of an ensemble), and from a fresh initialisation where the head has none."""
    from training.routers.auto_parts import member_config
    from training.routers.distill import _Student
    from training.routers.heads import Calibrated, MeanHead
    from training.routers.neural import GroupBlend, MLPHead

    X, quality = _synthetic()
    torch.manual_seed(0)
    inner = MLPHead(16, 3, 8, 1, 0.3)
    head = MeanHead([Calibrated(fit_logreg(X, quality, 1.0), 3), MLPHead(16, 3, 4, 1, 0.3),
                     Calibrated(GroupBlend(inner, 16, torch.rand(4, 3), 0.5), 3)])
    auto = load_config(ROOT / "training/configs/auto.toml")
    for hidden, want in ((8, inner), (4, head.members[1]), (16, None)):
        config = member_config(auto, "mlp", **{"router.hidden": hidden, "router.dropout": 0.0})
        module = _Student(config=config, n_models=3, input_dim=16, start=head).build_module()
        state = module.state_dict()
        if want is None:  # no MLP of that width: the usual random start
            assert state["net.0.weight"].shape == (16, 16)
        else:
            assert all(torch.equal(v, want.state_dict()[k]) for k, v in state.items())
            assert module.net[2].p == 0.0  # the student's own (no) dropout, not the member's


def test_mixed_prompts_lie_between_training_prompts_at_their_norm_with_the_heads_targets():
    """``mixed_prompts``: MIXED seeded points per training prompt (none past MIXED_CAP), each on the segment from
    one prompt's features toward another's at the first one's norm, labelled by the teacher; the training
    prompts first, unchanged."""
    import training.routers.distill as distill
    from training.trainer import Batchable

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6)).astype(np.float32)
    X[:20] /= np.linalg.norm(X[:20], axis=1, keepdims=True)  # unit rows and longer ones
    quality = rng.uniform(size=(40, 3)).astype(np.float32)
    part = Batchable(inputs=(X,), quality=quality, cost=np.ones((40, 3)), cost_est=np.ones((40, 3)))
    calls = []

    def teacher(features):
        calls.append(len(features))
        return features[:, :3] ** 2

    both, n = distill.mixed_prompts(part, teacher, seed=3)
    assert n == MIXED * 40 == len(both) - 40 and calls == [n]
    assert np.array_equal(both.inputs[0][:40], X) and np.array_equal(both.quality[:40], quality)
    mixed = both.inputs[0][40:]
    assert np.allclose(both.quality[40:], mixed[:, :3] ** 2)
    norms = np.linalg.norm(mixed, axis=1)
    assert np.all(np.isclose(norms[:, None], np.linalg.norm(X, axis=1)[None, :], rtol=1e-5).any(axis=1))
    # each on the plane of two training prompts: rank 2 with some pair (checked for a few)
    for row in mixed[:5]:
        assert any(np.linalg.matrix_rank(np.stack([X[i], X[j], row]), tol=1e-4) <= 2
                   for i in range(40) for j in range(40) if i != j)
    again, _ = distill.mixed_prompts(part, teacher, seed=3)
    assert np.array_equal(again.inputs[0], both.inputs[0])  # seeded
    cap = distill.MIXED_CAP
    try:  # past the cap the training prompts alone, untouched (a large set stays windowed, never copied)
        distill.MIXED_CAP = MIXED * 40 - 1
        assert distill.mixed_prompts(part, teacher, seed=3) == (part, 0) and len(calls) == 2
    finally:
        distill.MIXED_CAP = cap


@pytest.mark.slow
def test_the_lexical_candidate_alone_and_where_it_is_not_tried(tmp_path, demo_800):
    alone = _train(tmp_path / "alone", demo_800, **{"router.candidates": ["lexical"], "router.lexical_min_records": 0,
                                                    "tracking.enabled": False})
    assert alone["selection"]["chosen"] == "lexical"
    spec = json.loads((Path(alone["out"]) / "router.json").read_text())["spec"]
    assert spec["type"] == "lexical_mix" and spec["base"] is None
    assert alone["export"]["fp32_max_abs_diff"] < 1e-4, alone["export"]
    _runtime_matches_training(alone, demo_800)
    # validated on a split of 112 prompts (not cross-validated): tried on cross-validated data only
    split = _train(tmp_path / "split", demo_800, **{"router.candidates": ["logreg", "lexical"], "router.cv_below": 0,
                                                    "router.lexical_min_records": 0, "data.val_size": 0.2,
                                                    "tracking.enabled": False})
    assert split["selection"]["chosen"] == "logreg" and "router.cv_below" in split["selection"]["skipped"]["lexical"]
    # and not on fewer train + validation records than router.lexical_min_records (560 < 1,000 by default)
    small = _train(tmp_path / "small", demo_800, **{"router.candidates": ["logreg", "knn", "lexical", "ensemble"],
                                                    "tracking.enabled": False})
    assert "lexical_blend" not in small["selection"] and "lexical" not in small["selection"]["candidates"]
    assert "560 train + validation records (< router.lexical_min_records = 1000)" in small["selection"]["skipped"][
        "lexical"]


@pytest.mark.slow
def test_auto_cross_validates_small_data_logs_every_candidate_and_exports_the_ensemble(tmp_path, demo_800):
    import mlflow

    summary = _train(tmp_path, demo_800, **{"router.candidates": ["logreg", "knn", "mlp", "ensemble"],
                                            "router.auto_pick": "ensemble"})
    selection = summary["selection"]
    # 560 train + validation records (56 validation prompts: too few to pick on) -> 5-fold CV over all
    assert selection["mode"] == "5-fold cross-validation" and selection["scored_records"] == 560
    assert selection["chosen"] == "ensemble" and selection["candidates"]["ensemble"]["members"] == ["logreg", "knn",
                                                                                                    "mlp"]
    assert set(selection["candidates"]["knn"]["grid"]) == {"5", "25"}
    assert summary["export"]["fp32_max_abs_diff"] < 1e-4
    _runtime_matches_training(summary, demo_800)
    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["run_id"])
    assert run.data.params["selection.chosen"] == "ensemble"
    for name in ("logreg", "knn", "mlp", "ensemble"):
        assert run.data.metrics[f"selection.{name}.val_aiq"] == pytest.approx(selection["candidates"][name]["val_aiq"])
    assert "selection.knn.ece" in run.data.metrics
    # the saved checkpoint rebuilds the same head: re-scoring it gives the same predictions
    from training.routers import TorchRouter

    assert TorchRouter.load(summary["out"]).selection_["chosen"] == "ensemble"

    # the default knob is chosen on the 560 training records' out-of-fold predictions and the test split
    from router_ml.policy import CostModel, estimate_input_tokens, wtp_from_json
    from training.evaluation import read_metrics_file
    from training.export import _default_willingness

    metrics = read_metrics_file(Path(summary["out"]) / "metrics.json")
    knob, test_n = metrics["knob_curve"], summary["test_scored"]
    assert summary["default_knob_prompts"] == {"prompts": 560 + test_n, "held_out_training_prompts": 560,
                                               "test_prompts": test_n}
    manifest = json.loads((Path(summary["artifact"]) / "manifest.json").read_text())
    assert wtp_from_json(manifest["policy"]["willingness_to_pay"]) == _default_willingness(knob)
    # at knob 0 each prompt goes to the model the cost model prices lowest: the curve's first point is
    # that model's mean quality over every training and test prompt, the test curve's over the test alone
    table, _ = load_traffic(demo_800)
    cost_model = CostModel.from_dict(json.loads((Path(summary["out"]) / "cost_model.json").read_text()))
    cheapest = cost_model.estimate(estimate_input_tokens(table.texts)).argmin(axis=1)
    assert knob["willingness_to_pay"][0] == 0.0 and len(table) == 560 + test_n
    assert knob["quality"][0] == pytest.approx(table.quality[np.arange(len(table)), cheapest].mean())
    assert metrics["curve"]["quality"][0] != pytest.approx(knob["quality"][0])


def test_the_ensemble_averages_only_router_ensemble_members_and_leaves_the_others_candidates(tmp_path, demo_800):
    import onnx

    summary = _train(tmp_path, demo_800, **{"router.candidates": ["logreg", "knn", "mf", "ensemble"],
                                            "router.ensemble_members": ["logreg", "mf"],
                                            "router.auto_pick": "ensemble", "tracking.enabled": False})
    candidates = summary["selection"]["candidates"]
    assert candidates["ensemble"]["members"] == ["logreg", "mf"] and "val_aiq" in candidates["knn"]  # still tried
    # the exported graph holds no kNN search: no stored prompts, no TopK
    ops = {n.op_type for n in onnx.load(str(Path(summary["artifact"]) / "router.onnx")).graph.node}
    assert "TopK" not in ops, ops
    assert summary["export"]["fp32_max_abs_diff"] < 1e-4
    _runtime_matches_training(summary, demo_800)


@pytest.mark.slow  # fine-tunes a tiny encoder six times: five folds and the final fit
def test_the_encoder_candidate_is_cross_validated_beside_the_heads_and_exports_as_an_encoder_when_chosen(
        tmp_path, demo_800, tiny_encoder):
    encoder_toml = tmp_path / "tiny_encoder.toml"
    encoder_toml.write_text(f'[router]\nkind = "encoder"\nencoder = "{tiny_encoder}"\nmax_length = 24\n\n'
                            '[train]\nepochs = 1\nbatch_size = 16\nlr = 5e-4\n')
    summary = _train(tmp_path, demo_800, **{"router.candidates": ["logreg", "knn", "encoder", "ensemble"],
                                            "router.auto_encoder": "always",
                                            "router.auto_encoder_config": str(encoder_toml),
                                            "router.auto_pick": "encoder", "tracking.enabled": False})
    selection = summary["selection"]
    assert selection["mode"] == "5-fold cross-validation" and selection["scored_records"] == 560
    assert selection["chosen"] == "encoder" and selection["picked_by"] == "router.auto_pick"
    entry = selection["candidates"]["encoder"]
    assert np.isfinite(entry["val_aiq"]) and entry["calibrated"] is False and entry["seconds"] > 0
    assert selection["candidates"]["ensemble"]["members"] == ["logreg", "knn"]  # the encoder reads other inputs
    assert "skipped" not in selection
    # the run went on as the encoder's: its checkpoint, its export (tokenizer + encoder graph), its test scores
    assert summary["router"] == "auto"
    info = json.loads((Path(summary["out"]) / "router.json").read_text())
    assert info["kind"] == "encoder" and info["config"]["router.encoder"] == str(tiny_encoder)
    assert summary["export"]["fp32_max_abs_diff"] < 1e-4, summary["export"]
    _runtime_matches_training(summary, demo_800)


def _batchable(X, quality, rows, *, weights=None, groups=None, imputed=None, propensity=None):
    from training.trainer import Batchable

    cost = np.tile(np.array([0.1, 1.0, 3.0], np.float32), (len(rows), 1))
    return Batchable(inputs=(X,), quality=quality[rows].astype(np.float32), cost=cost, cost_est=cost,
                     groups=None if groups is None else groups[rows],
                     weights=None if weights is None else weights[rows], rows=np.asarray(rows),
                     imputed=None if imputed is None else imputed[rows],
                     propensity=None if propensity is None else propensity[rows])


def test_completed_log_keeps_groups_only_where_the_group_estimate_adds_to_its_mlp():
    from training.routers.auto_choice import completed_log_choice

    def report(**scores):
        return {name: {"val_aiq": value} for name, value in scores.items()}

    better = report(mlp=0.70, groups=0.71, logreg=0.73, ensemble=0.72)  # logreg leads: the leak's favourite
    assert completed_log_choice(better) == "groups" and better["groups"]["beats_its_mlp"] is True
    worse = report(mlp=0.71, groups=0.70, ensemble=0.69)
    assert completed_log_choice(worse) == "ensemble" and worse["groups"]["beats_its_mlp"] is False
    tied = report(mlp=0.71, groups=0.71, ensemble=0.69)
    assert completed_log_choice(tied) == "ensemble"  # the blend must add something
    assert completed_log_choice(report(groups=0.9, ensemble=0.5)) == "ensemble"  # no MLP to compare
    assert completed_log_choice(report(mlp=0.7, logreg=0.8, ensemble=0.6)) == "ensemble"
    assert completed_log_choice(report(logreg=0.8)) is None  # neither: the usual rule decides


def test_auto_router_selects_in_memory_and_scores_only_records_without_imputed_cells():
    from training.routers import AutoRouter
    from training.routers.auto import FirstStages

    X, quality = _synthetic(n=700)
    quality = np.nan_to_num(quality, nan=0.0)
    weights = np.ones_like(quality, dtype=np.float32)
    weights[:150, 0] = 0.5  # 150 training records carry an imputed cell: never scored
    groups = np.array(["a", "b"] * 350)
    config = load_config(ROOT / "training/configs/auto.toml", {**FAST, "router.candidates": ["logreg", "knn", "groups",
                                                                                            "lexical"],
                                                               "router.lexical_min_records": 0, "train.epochs": 3})
    imputed = weights < 1
    train = _batchable(X, quality, np.arange(0, 500), weights=weights, groups=groups, imputed=imputed)
    val = _batchable(X, quality, np.arange(500, 560), weights=weights, groups=groups, imputed=imputed)  # 60 < 100: CV
    router = AutoRouter(config=config, n_models=3, input_dim=X.shape[1]).fit(train, val, wtp_range=(0.01, 100.0))
    selection = router.selection_
    assert selection["mode"] == "5-fold cross-validation" and selection["scored_records"] == 560 - 150
    assert set(selection["candidates"]) == {"logreg", "knn", "groups"}
    assert "text is not at hand" in selection["skipped"]["lexical"]  # features alone: no token ids to count
    assert selection["chosen"] == max(selection["candidates"], key=lambda c: selection["candidates"][c]["val_aiq"])
    assert router.predict((X[600:],)).shape == (100, 3)
    # its held-out predictions, which the default knob is chosen on, cover the same records: those whose
    # every outcome was observed, never an imputed cell (the table rows of the split)
    rows, pred = router.heldout_
    assert np.array_equal(np.sort(rows), np.arange(150, 560)) and pred.shape == (410, 3)
    assert np.isfinite(pred).all() and ((pred >= 0) & (pred <= 1)).all()
    # with completed logged records in the pool (at least a tenth of the cells imputed) the scores tune each
    # candidate only - the first stage that completed them saw the scored records too: without a group field
    # the ensemble is kept, and nothing is Platt-scaled; a few imputed cells (the 150 above: 9% of the cells)
    # do not count
    wide = config.replace(**{"router.candidates": ["logreg", "knn", "lexical", "ensemble"],
                             "router.ensemble_confidence": 0.0})
    assert router.selection_["completed_log"] is False
    logged = np.zeros_like(imputed)
    logged[:400, 1:] = True  # 400 records with one observed outcome of 3: 48% of the cells imputed
    log_train = _batchable(X, quality, np.arange(0, 500), weights=np.where(logged, 0.5, 1.0).astype(np.float32),
                           imputed=logged)
    log_val = _batchable(X, quality, np.arange(500, 560), imputed=logged)
    completed = AutoRouter(config=wide, n_models=3, input_dim=X.shape[1]).fit(log_train, log_val,
                                                                              wtp_range=(0.01, 100.0))
    assert completed.selection_["completed_log"] is True and completed.selection_["chosen"] == "ensemble"
    assert "text is not at hand" in completed.selection_["skipped"]["lexical"]  # tried on logs, given the text
    off = config.replace(**{"router.candidates": ["logreg", "knn", "lexical", "ensemble"],
                            "router.lexical_on_logs": False})
    without = AutoRouter(config=off, n_models=3, input_dim=X.shape[1]).fit(log_train, log_val, wtp_range=(0.01, 100.0))
    assert without.selection_["skipped"]["lexical"] == ("completed logged records train the candidates and "
                                                        "router.lexical_on_logs is false")
    assert completed.selection_["picked_by"] == "the completed-log default"
    assert completed.selection_["calibrated"] is False and "beats_ensemble" not in completed.selection_["candidates"][
        "logreg"]
    # where the data names groups, the one thing those scores decide is whether the group estimate adds to
    # the MLP it blends (the same MLP, the same leak): then the group-informed candidate, else the ensemble;
    # and still no group blend on top
    grouped = config.replace(**{"router.candidates": ["mlp", "logreg", "knn", "groups", "ensemble"],
                                "router.ensemble_confidence": 0.0})
    g_train = _batchable(X, quality, np.arange(0, 500), weights=np.where(logged, 0.5, 1.0).astype(np.float32),
                         groups=groups, imputed=logged)
    g_val = _batchable(X, quality, np.arange(500, 560), groups=groups, imputed=logged)
    with_groups = AutoRouter(config=grouped, n_models=3, input_dim=X.shape[1]).fit(g_train, g_val,
                                                                                  wtp_range=(0.01, 100.0))
    sel = with_groups.selection_
    cands = sel["candidates"]
    assert sel["completed_log"] is True and sel["picked_by"] == "the completed-log default"
    assert cands["groups"]["beats_its_mlp"] == (cands["groups"]["val_aiq"] > cands["mlp"]["val_aiq"])
    assert sel["chosen"] == ("groups" if cands["groups"]["beats_its_mlp"] else "ensemble")
    assert "group_blend" not in sel and "beats_ensemble" not in cands["groups"]
    assert with_groups.predict((X[600:],)).shape == (100, 3)
    # without them, the ensemble is kept unless the best single candidate beats it on
    # router.ensemble_confidence of the paired bootstrap resamples
    plain_train = _batchable(X, quality, np.arange(0, 500))
    plain_val = _batchable(X, quality, np.arange(500, 560))
    for confidence in (0.0, 0.95, 1.0):
        wide = config.replace(**{"router.candidates": ["logreg", "knn", "ensemble"],
                                 "router.ensemble_confidence": confidence})
        picked = AutoRouter(config=wide, n_models=3, input_dim=X.shape[1]).fit(plain_train, plain_val,
                                                                               wtp_range=(0.01, 100.0))
        assert picked.selection_["completed_log"] is False
        scores = picked.selection_["candidates"]
        best = max(scores, key=lambda c: scores[c]["val_aiq"])
        if best == "ensemble":
            assert picked.selection_["chosen"] == "ensemble"
            continue
        wins = scores[best]["beats_ensemble"]
        assert 0.0 <= wins <= 1.0 and "beats_ensemble" not in scores["ensemble"]
        assert picked.selection_["chosen"] == (best if wins >= confidence else "ensemble")
        if confidence == 0.0:
            assert picked.selection_["chosen"] == best
    # the encoder candidate needs a CUDA device by default, and the prompts (which the pipeline hands over)
    for mode, reason in (("cuda", "no CUDA device"), ("always", "prompts were not given"), ("never", "never")):
        if mode == "cuda" and torch.cuda.is_available():
            continue
        quick = config.replace(**{"router.candidates": ["logreg", "encoder"], "router.auto_encoder": mode})
        skipped = AutoRouter(config=quick, n_models=3, input_dim=X.shape[1]).fit(train, val, wtp_range=(0.01, 100.0))
        assert reason in skipped.selection_["skipped"]["encoder"] and set(skipped.selection_["candidates"]) == {
            "logreg"} and skipped.winner_ is None
    # logged records' targets are completed by three cheap first stages (the best by out-of-fold Brier
    # score: training/offpolicy.py), not by five selections: the baseline's logistic regression, the MLP
    # and their mean
    assert AutoRouter.first_stage is FirstStages
    stage = FirstStages(config=config, n_models=3, input_dim=X.shape[1]).fit(train, val, wtp_range=(0.01, 100.0))
    baseline = LogRegRouter(C=1.0).fit(X[:560], quality[:560]).predict(X[:50])
    stages = stage.predict_stages((X[:50],))
    assert set(stages) == {"logreg", "mlp", "mean"} and np.abs(stages["logreg"] - baseline).max() < 2e-3
    assert np.abs(stages["mlp"] - baseline).max() > 0.01  # a different model...
    assert np.allclose(stages["mean"], (stages["logreg"] + stages["mlp"]) / 2)  # ...and the average of both


def test_scored_on_imputed_cells_auto_tunes_each_candidate_but_keeps_the_ensemble():
    """Completed logged records with fewer than 100 full records among the held-out ones: the imputed
    cells are scored (hyperparameters), but they are the first stage's guesses - here a logistic
    regression's own predictions, which a logistic regression candidate "leads" on - so no single
    candidate is picked over the average, and none is Platt-scaled to them."""
    from training.routers import AutoRouter

    X, quality = _synthetic(n=600)
    quality = np.nan_to_num(quality, nan=0.0)
    imputed = np.zeros_like(quality, dtype=bool)
    imputed[60:] = np.arange(3)[None, :] != np.random.default_rng(2).integers(0, 3, (540, 1))  # one outcome each
    guesses = _sigmoid_of(fit_logreg(X[:60], quality[:60], 1.0), X)
    completed = np.where(imputed, guesses, quality)
    weights = np.where(imputed, 0.5, 1.0).astype(np.float32)
    config = load_config(ROOT / "training/configs/auto.toml", {
        **FAST, "router.candidates": ["logreg", "knn", "ensemble"], "router.ensemble_confidence": 0.0})

    def fit(mask, calibrate=True):
        train = _batchable(X, completed, np.arange(0, 540), weights=weights, imputed=mask)
        val = _batchable(X, completed, np.arange(540, 600), weights=weights, imputed=mask)
        router = AutoRouter(config=config.replace(**{"router.calibrate": calibrate}), n_models=3,
                            input_dim=X.shape[1])
        return router.fit(train, val, wtp_range=(0.01, 100.0)).selection_

    as_outcomes = fit(None)  # the guesses taken for outcomes: the leader is picked, and Platt scaling tried
    leader = max(as_outcomes["candidates"], key=lambda c: as_outcomes["candidates"][c]["val_aiq"])
    assert leader != "ensemble" and as_outcomes["chosen"] == leader and as_outcomes["scored_on"] == "outcomes"
    assert as_outcomes["calibrated"] and "val_aiq_calibrated" in as_outcomes["candidates"]["logreg"]
    selection = fit(imputed)
    assert selection["scored_records"] == 600 and selection["scored_on"].startswith("outcomes and imputed")
    assert selection["calibrated"] is False
    assert not any("val_aiq_calibrated" in e or e.get("calibrated") for e in selection["candidates"].values())
    scores = {c: (e["val_aiq"], e.get("C"), e.get("k")) for c, e in selection["candidates"].items()}
    uncalibrated = fit(None, calibrate=False)  # the same scores and tuning as on outcomes without Platt scaling
    assert scores == {c: (e["val_aiq"], e.get("C"), e.get("k")) for c, e in uncalibrated["candidates"].items()}
    assert selection["chosen"] == "ensemble"  # but a lead on guesses picks nothing
    assert uncalibrated["chosen"] == leader and "beats_ensemble" not in selection["candidates"][leader]


def test_on_masked_logged_records_auto_scores_the_full_records_or_says_why_it_cannot():
    """Logged records left partial (loss.logged_targets = "mask"): the candidates are compared on the
    records with every outcome when there are enough; with none, and a model the held-out records never
    observed, a clear error instead of a crash in the scoring."""
    from router_ml.errors import RouterMLError
    from training.routers import AutoRouter

    X, quality = _synthetic(n=700)
    quality = np.nan_to_num(quality, nan=0.0)
    chosen = np.random.default_rng(1).choice([1, 2], size=len(quality))  # the logging router never chose model 0
    logged = np.full_like(quality, np.nan)
    logged[np.arange(len(quality)), chosen] = quality[np.arange(len(quality)), chosen]
    config = load_config(ROOT / "training/configs/auto.toml", {**FAST, "router.candidates": ["logreg", "knn"]})
    mixed = np.concatenate([quality[:200], logged[200:]])  # 200 full records, then the log
    train, val = _batchable(X, mixed, np.arange(0, 500)), _batchable(X, mixed, np.arange(500, 560))
    router = AutoRouter(config=config, n_models=3, input_dim=X.shape[1]).fit(train, val, wtp_range=(0.01, 100.0))
    assert router.selection_["scored_records"] == 200
    only_log = _batchable(X, logged, np.arange(0, 500)), _batchable(X, logged, np.arange(500, 560))
    with pytest.raises(RouterMLError, match=r"observe no outcome of model index \[0\].*logged_targets"):
        AutoRouter(config=config, n_models=3, input_dim=X.shape[1]).fit(*only_log, wtp_range=(0.01, 100.0))


def test_on_a_log_alone_auto_scores_the_candidates_by_the_logged_propensities():
    """No record with every outcome and nothing imputed: the candidates are scored on the logged outcomes,
    weighted by the logging policy's propensities where the data has them (a prompt-dependent policy makes
    exposure weights biased), and the report says which."""
    from training.routers import AutoRouter

    X, quality = _synthetic(n=700)
    quality = np.nan_to_num(quality, nan=0.0)
    rng = np.random.default_rng(1)
    greedy = np.where(X[:, 0] > 0, 2, 1)  # the logging router looked at the prompt
    explore = rng.random(len(X)) < 0.3
    chosen = np.where(explore, rng.integers(0, 3, len(X)), greedy)
    rows = np.arange(len(X))
    logged, propensity = np.full_like(quality, np.nan), np.full_like(quality, np.nan)
    logged[rows, chosen] = quality[rows, chosen]
    propensity[rows, chosen] = np.where(chosen == greedy, 1 - 0.3 + 0.3 / 3, 0.3 / 3)
    config = load_config(ROOT / "training/configs/auto.toml", {**FAST, "router.candidates": ["logreg", "knn"]})
    selections = {}
    for name, p in (("propensities", propensity), ("none", None)):
        train, val = (_batchable(X, logged, np.arange(0, 500), propensity=p),
                      _batchable(X, logged, np.arange(500, 560), propensity=p))
        router = AutoRouter(config=config, n_models=3, input_dim=X.shape[1]).fit(train, val, wtp_range=(0.01, 100.0))
        selections[name] = router.selection_
    assert selections["propensities"]["scored_on"] == "logged outcomes, weighted by their propensities"
    assert selections["none"]["scored_on"] == "logged outcomes, by exposure weights"
    weighted, exposure = (selections[k]["candidates"]["logreg"]["val_aiq"] for k in ("propensities", "none"))
    assert weighted != exposure  # the same predictions, scored with other weights


def test_a_knn_head_measures_the_gap_at_its_kth_neighbour():
    keys = np.array([[1.0, 0.0], [0.8, 0.6], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)  # one key twice
    quality = np.ones((4, 2))
    x = torch.tensor([[1.0, 0.0]])
    # similarities to x: 1.0, 0.8, 0.8, 0.0 - the 2nd and 3rd are the same key, a tie at k = 2
    assert KNNHead(keys, quality, 2).rank_gap(x) == 0.0
    assert KNNHead(keys, quality, 1).rank_gap(x) == pytest.approx(0.2, abs=1e-6)
    assert KNNHead(keys, quality, 3).rank_gap(x) == pytest.approx(0.8, abs=1e-6)
    # the smallest over the rows: [0, 1] has similarities 1.0, 0.6, 0.6, 0.0, a gap of 0.6 at k = 3
    assert KNNHead(keys, quality, 3).rank_gap(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.6, abs=1e-6)
    assert KNNHead(keys, quality, 4).rank_gap(x) == float("inf")  # nothing beyond the k-th to trade places with


def test_fp32_parity_allows_a_top_k_graph_a_rare_neighbour_swap_and_nothing_more():
    from training.export import ExportError, check_fp32

    expected = np.full((1000, 3), 0.5)
    swapped = expected.copy()
    swapped[7, 1] += 1 / 400  # one prompt's 400th neighbour traded places with the 401st
    assert check_fp32(expected, expected + 1e-6, discrete=False, routes_changed=0.0) == {
        "fp32_max_abs_diff": pytest.approx(1e-6)}
    with pytest.raises(ExportError, match="ONNX differs from torch by 2.50e-03"):
        check_fp32(expected, swapped, discrete=False, routes_changed=0.0)
    report = check_fp32(expected, swapped, discrete=True, routes_changed=0.001)
    assert report["fp32_prompts_over_tolerance"] == 0.001 and report["fp32_routes_changed"] == 0.001
    many = expected.copy()
    many[:20, 0] += 0.01  # 2% of prompts: more than float rounding explains
    with pytest.raises(ExportError, match="on 2.0% of prompts"):
        check_fp32(expected, many, discrete=True, routes_changed=0.0)
    with pytest.raises(ExportError, match="changes 1.5% of routes"):
        check_fp32(expected, swapped, discrete=True, routes_changed=0.015)
    # the same 2%, each at a tie of the k-th neighbour (a long prompt's features carry more rounding): explained
    tied = np.zeros(1000, dtype=bool)
    tied[:20] = True

    def gaps(rows):  # torch's k-th-neighbour gap of the differing prompts: 0 at a tie
        assert set(rows) == set(range(20))  # asked for the differing prompts only
        return np.where(tied[rows], 0.0, 1.0)

    report = check_fp32(expected, many, discrete=True, routes_changed=0.0, rank_gaps=gaps)
    assert report["fp32_prompts_over_tolerance"] == report["fp32_prompts_at_a_tie"] == 0.02
    tied[:10] = False  # half of them without a tie: 1% unexplained is the limit, still allowed
    half = check_fp32(expected, many, discrete=True, routes_changed=0.0, rank_gaps=gaps)
    assert half["fp32_prompts_at_a_tie"] == 0.01
    tied[10] = False
    with pytest.raises(ExportError, match=r"on 2.0% of prompts \(1.1% without a tie at the k-th neighbour\)"):
        check_fp32(expected, many, discrete=True, routes_changed=0.0, rank_gaps=gaps)
    with pytest.raises(ExportError, match="changes 1.5% of routes"):  # ties or not, routes may not move
        check_fp32(expected, many, discrete=True, routes_changed=0.015, rank_gaps=lambda rows: np.zeros(len(rows)))


def _grouped(n: int = 600, seed: int = 0):
    """Features that say the group only weakly (x0), outcomes decided by the group: model 0 answers group
    'a', model 1 group 'b', model 2 both half the time. Four group fields: ``task`` (the truth),
    ``metadata.same`` (task's groups under other names), ``metadata.id`` (a group per 3 records) and
    ``metadata.sparse`` (on a fifth of the records)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    X[:, 0] += 1.5 * (2 * g - 1)
    p = np.stack([np.where(g == 0, 0.9, 0.1), np.where(g == 1, 0.9, 0.1), np.full(n, 0.5)], axis=1)
    quality = (rng.random((n, 3)) < p).astype(float)
    fields = [("task", "U8"), ("metadata.same", "U8"), ("metadata.id", "U8"), ("metadata.sparse", "U8")]
    groups = np.empty(n, dtype=fields)
    groups["task"] = np.where(g == 0, "a", "b")
    groups["metadata.same"] = np.where(g == 0, "x", "y")
    groups["metadata.id"] = (np.arange(n) // 3).astype(str)
    groups["metadata.sparse"] = np.where(np.arange(n) % 5 == 0, groups["task"], "")
    return X, quality, groups


def test_group_fields_are_screened_and_their_held_out_estimates_never_see_the_held_out_records():
    """Validation mode: each tried field's group estimate on the validation split is fitted on the train
    split alone (before, the groups candidate's classifier and group means were fitted on train +
    validation and then scored on validation); a field that repeats another's groups, one with a group
    per few records and one on a fifth of the records are not tried."""
    from training.routers import AutoRouter
    from training.routers.auto import _Selection
    from training.routers.neural import GroupFit

    X, quality, groups = _grouped()
    config = load_config(ROOT / "training/configs/auto.toml",
                         {**FAST, "router.candidates": ["logreg", "groups"], "router.cv_below": 0, "train.epochs": 3})
    train = _batchable(X, quality, np.arange(0, 450), groups=groups)
    val = _batchable(X, quality, np.arange(450, 600), groups=groups)  # 150 >= 100: the validation split
    router = AutoRouter(config=config, n_models=3, input_dim=X.shape[1])
    selection = _Selection(router, train, val, (0.01, 100.0), None)
    assert list(selection.group_fields) == ["task"]
    _, _, report = selection.run()
    assert report["mode"] == "validation split" and report["candidates"]["groups"]["field"] == "task"
    expected = GroupFit.fit(X[:450], quality[:450], groups["task"][:450]).mixture(X[450:])
    assert np.allclose(selection.mixtures["task"][450:], expected)
    leaky = GroupFit.fit(X, quality, groups["task"]).mixture(X[450:])
    assert not np.allclose(selection.mixtures["task"][450:], leaky)
    assert report["group_blend"]["fields"] == {"task": 2}


def test_cross_validation_on_worker_processes_selects_and_fits_exactly_as_in_this_process():
    """``train.workers = 2``: every candidate on every fold fitted in two spawned worker processes gives the
    same held-out predictions, group estimates, report and final head as one process; automatic (0) stays
    in this process on 600 records."""
    from training.routers import AutoRouter
    from training.routers.auto import _Selection

    X, quality, groups = _grouped()
    config = load_config(ROOT / "training/configs/auto.toml", {**FAST, "train.epochs": 3})
    train = _batchable(X, quality, np.arange(0, 540), groups=groups)
    val = _batchable(X, quality, np.arange(540, 600), groups=groups)  # 60 < 100: cross-validation
    runs = {}
    for workers in (0, 2):
        router = AutoRouter(config=config.replace(**{"train.workers": workers}), n_models=3, input_dim=X.shape[1])
        selection = _Selection(router, train, val, (0.01, 100.0), None)
        tasks = len(selection._part_tasks())
        assert tasks == 5 and selection.workers(5 * tasks) == (1 if workers == 0 else 2)  # task, mlp, mf, logreg, knn
        module, spec, report = selection.run()
        with torch.no_grad():
            routed = module(torch.as_tensor(X)).numpy()
        runs[workers] = (selection, spec, report, routed)
    (one, spec1, report1, routed1), (two, spec2, report2, routed2) = runs[0], runs[2]

    def without_seconds(x):
        if isinstance(x, dict):
            return {k: without_seconds(v) for k, v in x.items() if k != "seconds"}
        return x
    assert report1["mode"] == "5-fold cross-validation" and set(report1["candidates"]) >= {"mlp", "mf", "groups"}
    assert without_seconds(report1) == without_seconds(report2) and spec1 == spec2
    assert np.array_equal(one.heldout[0], two.heldout[0]) and np.array_equal(one.heldout[1], two.heldout[1])
    assert np.array_equal(one.mixtures["task"], two.mixtures["task"]) and np.isfinite(one.mixtures["task"]).all()
    assert np.array_equal(routed1, routed2)
    assert report2["candidates"]["mlp"]["seconds"] > 0  # the workers' fit times come back
    # the final fits that read the pool alone run on a worker beside this process's torch finals: the same heads
    final = two._start_pool_finals({"logreg": 0.3, "knn": 7})
    for family, param in (("knn", 7), ("logreg", 0.3)):  # read back in another order than started
        (there, spec_there), (here, spec_here) = final(family, param), two._final(family, param)
        assert spec_there == spec_here and there.state_dict().keys() == here.state_dict().keys()
        assert all(torch.equal(there.state_dict()[k], here.state_dict()[k]) for k in here.state_dict())


def test_the_group_blend_is_kept_where_it_routes_better_and_is_what_the_router_predicts():
    """A router that cannot see the groups (a logistic regression at C = 1e-4: near constant; the groups
    candidate listed, which switches group-informed routing on, and the logistic regression picked) blended
    with p(group | x) @ group means: validation keeps the blend, the saved head computes exactly
    (1 - w) * router + w * estimate with the estimate refitted on train + validation, and its spec names
    the field and weight. The test pins the fixed knob grid (``eval.knob_refine = 0``): swept over its own
    tie points, the near-constant router's tiny differences rank the prompts as well as the blend does
    (held-out AIQ 0.860 either way, against 0.764 on the fixed grid), and nothing is left for the blend to add."""
    from training.routers import AutoRouter
    from training.routers.neural import GroupFit

    X, quality, groups = _grouped()
    config = load_config(ROOT / "training/configs/auto.toml",
                         {**FAST, "router.candidates": ["logreg", "groups"], "router.auto_pick": "logreg",
                          "router.logreg_c": ["0.0001"], "router.cv_below": 0, "router.calibrate": False,
                          "train.epochs": 3, "eval.knob_refine": 0})
    train = _batchable(X, quality, np.arange(0, 450), groups=groups)
    val = _batchable(X, quality, np.arange(450, 600), groups=groups)
    router = AutoRouter(config=config, n_models=3, input_dim=X.shape[1]).fit(train, val, wtp_range=(0.01, 100.0))
    blend = router.selection_["group_blend"]
    assert blend["field"] == "task" and blend["val_aiq"] > blend["val_aiq_without"] + 0.05
    assert blend["beats_unblended"] >= config.router.ensemble_confidence  # kept beyond noise only
    assert set(blend["grid"]) == {"task x 0.25", "task x 0.5"} and blend["val_aiq"] == max(blend["grid"].values())
    w = blend["weight"]
    assert router.spec_["type"] == "groups" and router.spec_["field"] == "task" and router.spec_["weight"] == w
    plain = _sigmoid_of(fit_logreg(X, quality, 0.0001), X)
    estimate = GroupFit.fit(X, quality, groups["task"]).mixture(X)
    assert np.abs(router.predict((X,)) - ((1 - w) * plain + w * estimate)).max() < 1e-4
    # rebuilt from its spec (a saved router.json), the head holds the same numbers
    rebuilt = build_head(router.spec_, X.shape[1], 3)
    rebuilt.load_state_dict(router.module_.state_dict())
    assert np.abs(_sigmoid_of(rebuilt.eval(), X) - router.predict((X,))).max() < 1e-6
    # without the stage, or without group fields, nothing is blended
    off = AutoRouter(config=config.replace(**{"router.group_blend": []}), n_models=3, input_dim=X.shape[1])
    off.fit(train, val, wtp_range=(0.01, 100.0))
    assert "group_blend" not in off.selection_ and off.spec_["type"] == "logreg"


def test_metadata_keys_name_the_text_and_integer_fields(tmp_path):
    from training.config import TrainConfig
    from training.routers.auto_groups import auto_group_fields, auto_group_labels

    path = tmp_path / "t.jsonl"
    rows = [{"prompt": f"p{i}", "task": "t1" if i % 2 else "t2", "outcomes": {"a": {"quality": 1.0}},
             "metadata": {"app": f"app{i % 3}", "tier": i % 2, "score": 0.5, "nested": {"k": 1},
                          **({"late": "yes"} if i == 5 else {})}} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, _ = load_traffic(path)
    assert table.metadata_keys() == ["app", "late", "tier"]
    config = TrainConfig().replace(**{"router.kind": "auto"})
    assert auto_group_fields(config, table) == ["task", "metadata.app", "metadata.late", "metadata.tier"]
    labels = auto_group_labels(config, table)
    assert labels.dtype.names == ("task", "metadata.app", "metadata.tier")  # 'late' names one group
    assert labels["metadata.app"][:4].tolist() == ["app0", "app1", "app2", "app0"]
    assert auto_group_labels(config.replace(**{"router.auto_groups": ["task"]}), table).dtype.names == ("task",)
    assert auto_group_labels(config.replace(**{"router.candidates": ["logreg", "knn"]}), table) is None


def test_a_variant_keeps_its_platt_scaling_only_where_that_routes_better_held_out():
    """``auto_choice.score_variant``: the scaling is fitted, reported either way, and kept only when its
    held-out AIQ beats the raw predictions'; without ``calibrate`` nothing is fitted."""
    from training.routers.auto_choice import held_out_aiq, score_variant

    rng = np.random.default_rng(0)
    n = 400
    quality, held = _cheap_and_dear(rng, n, (0.55, 0.85), knobs=32)
    informed = np.clip(quality * 0.6 + 0.2 + rng.normal(0, 0.05, (n, 2)), 0.01, 0.99)
    # the cheap model's scores squeezed toward 0.5: right in rank, wrong in level against the dear one's
    squeezed = informed.copy()
    squeezed[:, 0] = 0.5 + (squeezed[:, 0] - 0.5) * 0.1 - 0.3
    kept = {}
    for name, raw in (("informed", informed), ("squeezed", squeezed)):
        pred, platt, entry = score_variant(raw, quality, held, calibrate=True)
        assert entry["val_aiq_uncalibrated"] == held_out_aiq(raw, held)
        assert entry["val_aiq"] == max(entry["val_aiq_uncalibrated"], entry["val_aiq_calibrated"])
        if entry["calibrated"]:
            assert entry["val_aiq_calibrated"] > entry["val_aiq_uncalibrated"] and platt is not None
            assert np.allclose(pred, apply_platt(raw, *platt)) and entry["ece"] == entry["ece_calibrated"]
        else:
            assert platt is None and pred is raw and entry["ece"] == entry["ece_uncalibrated"]
        kept[name] = entry["calibrated"]
    assert kept["squeezed"]  # the level is what routing across models reads, and Platt restores it
    assert not kept["informed"]  # already in level: the scaling routes the same, and a tie keeps the raw scores
    pred, platt, entry = score_variant(squeezed, quality, held, calibrate=False)
    assert pred is squeezed and platt is None and set(entry) == {"val_aiq", "ece", "calibrated"}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"router.candidates": ["lexical"]}, r"router.kind = auto: every candidate in router.candidates was skipped "
                                         r"\(lexical: 560 train \+ validation records"),
    ({"router.candidates": ["mlp", "logreg", "lexical"], "router.auto_pick": "lexical"},
     r"router.auto_pick = 'lexical': that candidate is not fitted on this data \(560 train \+ validation records"),
])
def test_a_candidate_pinned_or_left_that_is_skipped_on_this_data_is_an_error_before_any_fit(tmp_path, demo_800,
                                                                                             overrides, message):
    """Nothing left to fit was a max() of an empty sequence; a pinned candidate that was skipped was passed over
    for the best held-out AIQ without a word."""
    from router_ml.errors import RouterMLError

    with pytest.raises(RouterMLError, match=message):
        _train(tmp_path, demo_800, **overrides, **{"tracking.enabled": False})
    assert not (tmp_path / "router").exists()
