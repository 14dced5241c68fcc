import numpy as np
import pytest

from router_ml import PriceCatalog
from router_ml.policy import CostModel, choose, estimate_input_tokens, knob_grid


def test_knob_moves_from_cheapest_to_best():
    quality = np.array([[0.2, 0.6, 0.9], [0.8, 0.8, 0.9]])
    cost = np.array([[1.0, 2.0, 10.0], [1.0, 2.0, 10.0]])
    assert choose(quality, cost, 0.0).tolist() == [0, 0]
    assert choose(quality, cost, np.inf).tolist() == [2, 2]
    # w = 20 USD per quality unit: row 0 utilities 0.15, 0.5, 0.4 -> model 1; row 1: 0.75, 0.7, 0.4 -> 0
    assert choose(quality, cost, 20.0).tolist() == [1, 0]


def test_ties_go_to_the_cheaper_model():
    assert choose(np.array([[0.9, 0.9]]), np.array([[5.0, 1.0]]), np.inf).tolist() == [1]
    with pytest.raises(ValueError, match="willingness_to_pay"):
        choose(np.zeros((1, 2)), np.zeros((1, 2)), -1.0)


def test_knob_grid_spans_zero_to_inf():
    grid = knob_grid([0.001, 0.01], points=11)
    assert grid[0] == 0 and np.isinf(grid[-1]) and len(grid) == 11
    assert np.all(np.diff(grid[1:-1]) > 0)
    assert grid[1] == pytest.approx(0.0001) and grid[-2] == pytest.approx(100.0)


def test_cost_model_from_prices_reprices_without_retraining():
    prices = PriceCatalog({"a": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                           "b": {"input_per_mtok": 10.0, "output_per_mtok": 20.0}})
    model = CostModel.from_prices(prices, ["a", "b"], {"a": 100.0, "b": 50.0})
    est = model.estimate(np.array([1000.0]))
    assert est.tolist() == [[pytest.approx((1000 * 1 + 100 * 2) / 1e6), pytest.approx((1000 * 10 + 50 * 20) / 1e6)]]
    assert CostModel.from_dict(model.to_dict()) == model
    assert estimate_input_tokens(["abcd", "abcde", ""]).tolist() == [1, 2, 0]


def test_prices_and_output_tokens_that_are_not_finite_non_negative_numbers_are_refused_by_name():
    """A NaN or infinite price once became a NaN utility, which argmax takes for the best model; a negative
    one made the dearest model look free."""
    from router_ml import CatalogError
    from router_ml.pricing import ModelPrice

    good = PriceCatalog({m: {"input_per_mtok": 1.0, "output_per_mtok": 2.0} for m in ("a", "b")})
    tokens = {"a": 100, "b": 100}
    assert CostModel.from_prices(good, ["a", "b"], {"a": np.int64(100), "b": 100.0}).fixed_usd == (2e-4, 2e-4)
    for bad in (float("nan"), float("inf"), -100, "100", None):
        with pytest.raises(ValueError, match=r"expected output tokens of model 'b' must be a finite number >= 0"):
            CostModel.from_prices(good, ["a", "b"], {**tokens, "b": bad})
    with pytest.raises(ValueError, match="model 'b'"):
        CostModel.from_prices(good, ["a", "b"], {"a": 100})
    for bad in (float("nan"), float("inf"), -50.0):
        with pytest.raises(CatalogError, match=r"ModelPrice: 'input_per_mtok' must be finite and >= 0"):
            ModelPrice(bad, 1.0)
    with pytest.raises(ValueError, match=r"cost model: model 'b': fixed_usd must be a finite number >= 0"):
        CostModel(("a", "b"), (1.0, float("nan")), (0.0, 0.0))
    with pytest.raises(ValueError, match="cost model: 1 per_input_token_usd values for 2 models"):
        CostModel(("a", "b"), (1.0, 1.0), (0.0,))


def test_choose_refuses_a_nan_score_or_cost_instead_of_choosing_it():
    costs = np.array([[1.0, 2.0, 3.0]])
    assert choose(np.array([[0.1, 0.9, 0.7]]), costs, 5.0).tolist() == [1]
    with pytest.raises(ValueError, match=r"choose: quality is NaN \(row 0, model 0\)"):
        choose(np.array([[np.nan, 0.9, 0.7]]), costs, 5.0)  # argmax once returned [0]
    with pytest.raises(ValueError, match=r"choose: cost is NaN \(row 0, model 2\)"):
        choose(np.array([[0.1, 0.9, 0.7]]), np.array([[1.0, 2.0, np.nan]]), 5.0)
