"""The losses and the torch routers on small synthetic problems whose answer is known."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from router_ml.errors import RouterMLError
from training.config import load_config
from training.losses import bradley_terry_loss, quality_loss, tradeoff_loss
from training.routers import EncoderRouter, KNNRouter, LogRegRouter, MFRouter, MLPRouter, TorchRouter
from training.routers.neural import ROUTER_JSON_VERSION
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


@pytest.mark.slow  # trains three routers for 40 epochs
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


def _saved_mlp(tmp_path):
    """An untrained (seeded) MLP router saved to ``tmp_path``: the round trip needs weights, not good ones."""
    X, _, _ = _problem(n=50)
    router = MLPRouter(config=load_config(None, ["router.hidden=16"]), n_models=2, input_dim=X.shape[1])
    torch.manual_seed(0)
    router.module_ = router.build_module().eval()
    router.save(tmp_path)
    return router, X


def test_router_save_and_load_round_trip(tmp_path):
    router, X = _saved_mlp(tmp_path)
    assert not list(tmp_path.glob("*.pt")) and (tmp_path / "weights.safetensors").exists()
    again = MLPRouter.load(tmp_path)
    np.testing.assert_array_equal(again.predict((X,)), router.predict((X,)))
    assert again.config == router.config


def test_router_json_carries_a_version_that_load_checks(tmp_path):
    router, X = _saved_mlp(tmp_path)
    path = tmp_path / "router.json"
    info = json.loads(path.read_text())
    assert info["format_version"] == ROUTER_JSON_VERSION == 1
    # a checkpoint from before versioning has version 1's layout and still loads
    path.write_text(json.dumps({k: v for k, v in info.items() if k != "format_version"}))
    np.testing.assert_array_equal(TorchRouter.load(tmp_path).predict((X,)), router.predict((X,)))
    path.write_text(json.dumps({**info, "format_version": 2}))
    with pytest.raises(RouterMLError, match=re.escape(f"{path}: router checkpoint format version 2; this router-ml "
                                                      "reads version 1 - upgrade router-ml")):
        TorchRouter.load(tmp_path)
    path.write_text(json.dumps({**info, "kind": "forest"}))
    with pytest.raises(RouterMLError, match="unknown router kind 'forest'"):
        TorchRouter.load(tmp_path)
    path.unlink()
    with pytest.raises(RouterMLError, match="not a router checkpoint"):
        TorchRouter.load(tmp_path)


def test_sklearn_baselines_learn_the_rule():
    X, quality, _ = _problem(n=600)
    for model in (KNNRouter(k=15), LogRegRouter()):
        pred = model.fit(X[:500], quality[:500]).predict(X[500:])
        assert np.mean((pred[:, 0] > 0.5) == (X[500:, 0] > 0)) > 0.85, type(model).__name__


# --- the encoder router reads a prompt exactly as the exported runtime does ----------------------

MAX_LENGTH = 24  # 22 text tokens between [CLS] and [SEP]: the first 16 and the last 6 of a longer prompt
DECIDES = "which model should answer this?"  # 6 tokens, what decides the route, at the end
PROMPTS = {
    "short": "Sum 17 and 25.",
    "at the limit": "word " * 22,
    "one over": "word " * 22 + "last",
    "decisive end": "context " * 60 + DECIDES,
    "past max_chars": "context " * 300 + DECIDES,  # 2,400 characters > 32 * 24: the text is clipped first
    "lone surrogate": "\ud800 context " + "context " * 40 + DECIDES,
    "empty": "",
}


def _tokens(tiny_encoder, ids, mask):
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tiny_encoder / "tokenizer.json"))
    return [[vocab.id_to_token(int(i)) for i in row[m == 1]] for row, m in zip(ids, mask, strict=True)]


def test_encoder_tokenize_keeps_head_and_tail_between_the_special_tokens(tiny_encoder):
    """Training's ids for prompts shorter than, at and over ``max_length``: head + tail, not right truncation."""
    router = EncoderRouter(config=load_config(None, ["router.kind=encoder", f"router.encoder={tiny_encoder}",
                                                     f"router.max_length={MAX_LENGTH}"]), n_models=2)
    assert router.input_limits() == {"max_tokens": 22, "head": 16, "max_chars": 32 * MAX_LENGTH}
    ids, mask = router.tokenize(list(PROMPTS.values()))
    assert ids.shape == mask.shape == (len(PROMPTS), MAX_LENGTH) and ids.dtype == mask.dtype == np.int64
    rows = dict(zip(PROMPTS, _tokens(tiny_encoder, ids, mask), strict=True))
    assert rows["short"] == ["[CLS]", "sum", "17", "and", "25", ".", "[SEP]"]
    assert rows["at the limit"] == ["[CLS]", *["word"] * 22, "[SEP]"]
    assert rows["one over"] == ["[CLS]", *["word"] * 15, "word", *["word"] * 5, "last", "[SEP]"]
    decides = ["which", "model", "should", "answer", "this", "?"]
    for name in ("decisive end", "past max_chars", "lone surrogate"):
        assert rows[name] == ["[CLS]", *rows[name][1:17], *decides, "[SEP]"], name
    # sanitize made the surrogate U+FFFD (tokenizers refuses a lone surrogate), which BERT's normaliser drops
    assert rows["decisive end"][1:17] == rows["lone surrogate"][1:17] == ["context"] * 16
    assert rows["empty"] == ["[CLS]", "[SEP]"]
    np.testing.assert_array_equal(mask, np.arange(MAX_LENGTH) < mask.sum(axis=1, keepdims=True))  # then padding
    assert (ids[mask == 0] == 0).all()  # [PAD]


@pytest.mark.slow  # fine-tunes and exports a tiny encoder router
def test_encoder_training_ids_and_predictions_equal_the_exported_runtime(tiny_encoder, tiny_encoder_run):
    """The ids training and evaluation feed the encoder (``tokenize``) are the ids the exported
    artifact feeds its ONNX session, and ``Router.predict`` equals the torch router on them."""
    from router_ml import Router

    router = TorchRouter.load(tiny_encoder_run.checkpoint)
    runtime = Router.load(tiny_encoder_run.artifact)
    texts = [*PROMPTS.values(), *tiny_encoder_run.held_out]
    ids, mask = router.tokenize(texts)
    for i, text in enumerate(texts):
        runtime_ids, runtime_mask = runtime.encode(text)
        np.testing.assert_array_equal(ids[i, :mask[i].sum()], runtime_ids, err_msg=repr(text[:60]))
        assert mask[i].sum() == len(runtime_ids) and runtime_mask.all()
    assert (mask.sum(axis=1) == MAX_LENGTH).sum() >= 4  # the long prompts were clipped, to the same ids
    np.testing.assert_allclose(runtime.predict(texts), router.predict((ids, mask)), atol=1e-4)
    expected = ["[CLS]", *["context"] * 16, "which", "model", "should", "answer", "this", "?", "[SEP]"]
    assert _tokens(tiny_encoder, runtime.encode(PROMPTS["decisive end"])[0][None], np.ones((1, MAX_LENGTH)))[0] == \
        expected


def test_quality_loss_weights_observed_cells_and_propensity_weights_are_clipped():
    import torch

    from training.losses import quality_loss
    from training.pipeline import propensity_loss_weights

    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    quality = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    plain = quality_loss(logits, quality, mask)
    assert torch.allclose(quality_loss(logits, quality, mask, torch.ones(2, 2)), plain)  # unit weights: the same
    per_cell = torch.nn.functional.binary_cross_entropy_with_logits(logits, quality, reduction="none")
    weights = torch.tensor([[4.0, 9.0], [1.0, 1.0]])  # the unobserved cell's weight is ignored
    expected = (4 * per_cell[0, 0] + per_cell[1, 0] + per_cell[1, 1]) / 6
    assert torch.allclose(quality_loss(logits, quality, mask, weights), expected)
    propensity = np.array([[0.5, np.nan], [0.01, np.nan], [np.nan, np.nan]])
    w = propensity_loss_weights(propensity, clip=20.0)
    np.testing.assert_allclose(w, [[2.0, 1.0], [20.0, 1.0], [1.0, 1.0]])  # 1/0.01 = 100, clipped to 20
    assert propensity_loss_weights(propensity, clip=0.0) is None  # off: masked training
    assert propensity_loss_weights(np.full((2, 2), np.nan), clip=20.0) is None  # full-information data
