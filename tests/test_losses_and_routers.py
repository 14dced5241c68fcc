"""The losses and the torch routers on small synthetic problems whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import load_config
from training.losses import bradley_terry_loss, quality_loss, tradeoff_loss
from training.routers import KNNRouter, LogRegRouter, MFRouter, MLPRouter
from training.trainer import Batchable


def test_quality_loss_ignores_masked_cells():
    logits = torch.tensor([[0.0, 5.0]])
    q = torch.tensor([[1.0, 0.0]])
    full = quality_loss(logits, q, torch.tensor([[True, True]]))
    only_first = quality_loss(logits, q, torch.tensor([[True, False]]))
    assert only_first == pytest.approx(float(np.log(2)), abs=1e-6)
    assert full > only_first


def test_tradeoff_loss_prefers_the_choice_with_more_utility():
    q = torch.tensor([[1.0, 1.0]])      # both models answer well ...
    c = torch.tensor([[0.0, 1.0]])      # ... but the second costs 1 USD
    mask = torch.ones(1, 2, dtype=torch.bool)
    w = torch.tensor([10.0])            # utilities: cheap 1.0, dear 0.9
    says_cheap = tradeoff_loss(torch.tensor([[3.0, -3.0]]), q, c, c, mask, w, 0.05)
    says_dear = tradeoff_loss(torch.tensor([[-3.0, 3.0]]), q, c, c, mask, w, 0.05)
    assert says_cheap < 0.01 and says_dear > 0.9
    logits = torch.zeros(1, 2, requires_grad=True)
    tradeoff_loss(logits, q, c, c, mask, w, 0.5).backward()
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]   # push the cheap model up, the dear one down
    one_model = torch.tensor([[True, False]])
    assert tradeoff_loss(logits, q, c, c, one_model, w, 0.5) == 0


def test_bradley_terry_loss():
    strong = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    wrong = bradley_terry_loss(torch.tensor([3.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    assert strong < 0.1 < wrong


def _problem(n=800, d=8, seed=0, keep_one=False):
    """Model 0 is cheap and right when x[0] > 0; model 1 is dear and always right."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    quality = np.stack([(X[:, 0] > 0).astype(float), np.ones(n)], axis=1)
    cost = np.tile([0.001, 0.01], (n, 1))
    if keep_one:  # logged traffic: one model observed per prompt
        drop = rng.integers(0, 2, size=n)
        quality[np.arange(n), drop] = np.nan
    return X, quality, cost


@pytest.mark.parametrize("router_cls, keep_one", [(MLPRouter, False), (MLPRouter, True), (MFRouter, False)])
def test_torch_routers_learn_who_is_right(router_cls, keep_one):
    X, quality, cost = _problem(keep_one=keep_one)
    config = load_config(None, ["train.epochs=40", "train.patience=40", "router.hidden=32", "train.lr=3e-3"])
    train = Batchable(inputs=(X[:600],), quality=quality[:600], cost=cost[:600], cost_est=cost[:600])
    val = Batchable(inputs=(X[600:700],), quality=quality[600:700], cost=cost[600:700], cost_est=cost[600:700])
    router = router_cls(config=config, n_models=2, input_dim=X.shape[1]).fit(train, val, wtp_range=(1e-4, 1.0))
    pred = router.predict((X[700:],))
    assert pred.shape == (100, 2) and np.all((pred >= 0) & (pred <= 1))
    truth = X[700:, 0] > 0
    accuracy = np.mean((pred[:, 0] > 0.5) == truth)
    assert accuracy > (0.85 if keep_one else 0.9)
    assert len(router.history_) >= 1 and "val_loss" in router.history_[0]


def test_router_save_and_load_round_trip(tmp_path):
    X, quality, cost = _problem(n=200)
    config = load_config(None, ["train.epochs=3", "router.hidden=16"])
    data = Batchable(inputs=(X,), quality=quality, cost=cost, cost_est=cost)
    router = MLPRouter(config=config, n_models=2, input_dim=X.shape[1]).fit(data, wtp_range=(1e-4, 1.0))
    router.save(tmp_path)
    assert not list(tmp_path.glob("*.pt")) and (tmp_path / "weights.safetensors").exists()
    again = MLPRouter.load(tmp_path)
    np.testing.assert_array_equal(again.predict((X,)), router.predict((X,)))


def test_sklearn_baselines_learn_the_rule():
    X, quality, _ = _problem(n=600)
    for model in (KNNRouter(k=15), LogRegRouter()):
        pred = model.fit(X[:500], quality[:500]).predict(X[500:])
        assert np.mean((pred[:, 0] > 0.5) == (X[500:, 0] > 0)) > 0.85, type(model).__name__
