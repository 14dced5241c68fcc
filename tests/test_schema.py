import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router_ml import PriceCatalog
from training.data import RecordError, build_record
from training.data.schema import coerce_propensity, coerce_quality


def test_valid_record_with_tokens_gets_cost_from_catalog():
    prices = PriceCatalog({"m": {"input_per_mtok": 2.0, "output_per_mtok": 10.0}})
    record = build_record(prompt="hi", outcomes={"m": {"quality": "True", "input_tokens": 100,
                                                         "output_tokens": 10.0}}, prices=prices)
    outcome = record.outcomes["m"]
    assert outcome.quality == 1.0 and outcome.output_tokens == 10
    assert outcome.cost == pytest.approx((100 * 2 + 10 * 10) / 1e6)


def test_logged_cost_wins_over_catalog():
    prices = PriceCatalog({"m": {"input_per_mtok": 2.0, "output_per_mtok": 10.0}})
    record = build_record(prompt="hi", outcomes={"m": {"quality": 0.5, "cost": 0.25, "input_tokens": 9}},
                          prices=prices)
    assert record.outcomes["m"].cost == 0.25


@pytest.mark.parametrize("kwargs, field, needle", [
    ({"outcomes": {"m": {"quality": 1}}}, "prompt", "prompt is missing"),
    ({"prompt": "  \n", "outcomes": {"m": {"quality": 1}}}, "prompt", "prompt is empty"),
    ({"prompt": "x", "outcomes": {"m": {"quality": 1.5}}}, "outcomes.m.quality", "in [0, 1]"),
    ({"prompt": "x", "outcomes": {"m": {"quality": "good"}}}, "outcomes.m.quality", "must be a number"),
    ({"prompt": "x", "outcomes": {"m": {"quality": float("inf")}}}, "outcomes.m.quality", "finite"),
    ({"prompt": "x", "outcomes": {"m": {"quality": 1, "cost": -0.1}}}, "outcomes.m.cost", ">= 0"),
    ({"prompt": "x", "outcomes": {"m": {"quality": 1, "cost": "cheap"}}}, "outcomes.m.cost", "number"),
    ({"prompt": "x", "outcomes": {"m": {"quality": 1, "input_tokens": 1.5}}}, "outcomes.m.input_tokens",
     "integer"),
    ({"prompt": "x", "outcomes": {"m": {"quality": 1, "colour": 3}}}, "outcomes.m", "unknown outcome keys"),
    ({"prompt": "x", "outcomes": {}}, "outcomes", "no outcome for any model"),
    ({"prompt": "x"}, "outcomes", "no outcome"),
    ({"prompt": "x", "messages": [{"role": "user", "content": "y"}], "outcomes": {"m": {"quality": 1}}},
     "prompt", "not both"),
    ({"messages": [{"content": "y"}], "outcomes": {"m": {"quality": 1}}}, "messages[0]", "role"),
    ({"messages": [{"role": "user"}], "outcomes": {"m": {"quality": 1}}}, "messages[0].content",
     "required for a 'user' message"),
    ({"prompt": "x", "preferences": [{"model_a": "a", "model_b": "a", "winner": "a"}]}, "preferences[0]",
     "two different models"),
    ({"prompt": "x", "preferences": [{"model_a": "a", "model_b": "b", "winner": "c"}]},
     "preferences[0].winner", "a, b or tie"),
    ({"prompt": "x", "timestamp": "yesterday", "outcomes": {"m": {"quality": 1}}}, "timestamp", "ISO 8601"),
    # epoch milliseconds and numbers past year 9999 were a ValueError/OverflowError traceback
    ({"prompt": "x", "timestamp": 1700000000000, "outcomes": {"m": {"quality": 1}}}, "timestamp",
     "epoch milliseconds? divide by 1000"),
    ({"prompt": "x", "timestamp": float("inf"), "outcomes": {"m": {"quality": 1}}}, "timestamp", "is not a date"),
    # a lone surrogate (JSON's "\ud83d": half an emoji) in any text was a UnicodeEncodeError when the table was built
    ({"prompt": "half \ud83d", "outcomes": {"m": {"quality": 1}}}, "prompt", "lone UTF-16 surrogate"),
    ({"prompt": "x", "task": "t\ud800", "outcomes": {"m": {"quality": 1}}}, "task", "lone UTF-16 surrogate"),
    ({"prompt": "x", "sample_id": "\udfff", "outcomes": {"m": {"quality": 1}}}, "sample_id", "lone UTF-16"),
    ({"prompt": "x", "metadata": {"k": ["\ud800"]}, "outcomes": {"m": {"quality": 1}}}, "metadata", "lone UTF-16"),
    ({"prompt": "x", "outcomes": {"m": {"quality": 1, "response": "r\udfff"}}}, "outcomes.m.response",
     "lone UTF-16"),
])
def test_invalid_fields_are_named(kwargs, field, needle):
    with pytest.raises(RecordError) as info:
        build_record(**kwargs)
    assert info.value.field == field
    assert needle in info.value.reason


def test_preference_only_record_and_chat_text():
    record = build_record(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
                          preferences=[{"model_a": "a", "model_b": "b", "winner": "model_b"}],
                          timestamp=0)
    assert record.text == "q"
    assert record.preferences[0].winner == "b"
    assert record.timestamp == "1970-01-01T00:00:00+00:00"


@given(st.one_of(st.floats(allow_nan=True), st.integers(), st.text(max_size=8), st.booleans()))
def test_quality_is_in_unit_interval_or_rejected(value):
    as_number = float(value) if isinstance(value, int | float) else None
    try:
        quality = coerce_quality(value, "q")
    except RecordError as exc:
        assert exc.field == "q"
        # a number in [0, 1] is never rejected (so a parser that rejects everything fails here)
        assert as_number is None or not 0.0 <= as_number <= 1.0
    else:
        assert 0.0 <= quality <= 1.0 and not math.isnan(quality)
        if as_number is not None:
            assert quality == as_number


@pytest.mark.parametrize("value, expected", [(0, 0.0), (1, 1.0), (0.25, 0.25), ("0.5", 0.5), (True, 1.0),
                                             ("true", 1.0), ("False", 0.0)])
def test_quality_accepts_numbers_in_the_unit_interval_and_booleans(value, expected):
    assert coerce_quality(value, "q") == expected


RULE = "propensity must be in (0, 1]: the probability that the logging policy chose this model"


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), True, False, "abc", "", "0",
                                   [0.5]])
def test_a_bad_propensity_is_named_with_its_rule(value):
    with pytest.raises(RecordError) as info:
        build_record(prompt="x", outcomes={"gpt-4": {"quality": 1, "propensity": value}})
    assert info.value.field == "outcomes.gpt-4.propensity"
    assert RULE in info.value.reason


@pytest.mark.parametrize("value, expected", [(1, 1.0), (0.25, 0.25), ("0.5", 0.5), (1e-9, 1e-9), (None, None)])
def test_propensity_in_the_half_open_unit_interval_or_unknown(value, expected):
    record = build_record(prompt="x", outcomes={"m": {"quality": 1, "propensity": value}})
    assert record.outcomes["m"].propensity == expected
    assert ("propensity" in record.outcomes["m"].to_dict()) == (expected is not None)


@given(st.one_of(st.floats(allow_nan=True), st.integers(-3, 3), st.text(max_size=8), st.booleans()))
def test_propensity_is_in_half_open_unit_interval_or_rejected(value):
    as_number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    try:
        propensity = coerce_propensity(value, "p")
    except RecordError as exc:
        assert exc.field == "p" and RULE in exc.reason
        assert as_number is None or not 0.0 < as_number <= 1.0
    else:
        assert 0.0 < propensity <= 1.0
        if as_number is not None:
            assert propensity == as_number


@pytest.mark.parametrize("value, hinted", [(7, True), ("8.5", True), (1.5, True), (-0.5, False)])
def test_a_quality_above_one_says_how_to_map_a_score_on_another_scale(value, hinted):
    with pytest.raises(RecordError) as caught:
        coerce_quality(value, "outcomes.m.quality")
    assert "quality must be in [0, 1]" in caught.value.reason
    assert ("(score - lowest) / (highest - lowest)" in caught.value.reason) is hinted
