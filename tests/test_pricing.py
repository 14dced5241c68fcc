import pytest

from router_ml import CatalogError, PriceCatalog, routed_text
from router_ml.messages import message_problem


def test_catalog_loads_toml_and_json(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('["org/model-a"]\ninput_per_mtok = 1.5\noutput_per_mtok = 6\n')
    json_ = tmp_path / "p.json"
    json_.write_text('{"org/model-a": {"input_per_mtok": 1.5, "output_per_mtok": 6}}')
    for path in (toml, json_):
        catalog = PriceCatalog.load(path)
        assert list(catalog) == ["org/model-a"]
        assert catalog.cost("org/model-a", input_tokens=1_000_000, output_tokens=500_000) == 4.5


@pytest.mark.parametrize("body, needle", [
    ('{"m": {"input_per_mtok": -1, "output_per_mtok": 1}}', "'input_per_mtok' must be finite and >= 0"),
    ('{"m": {"input_per_mtok": "x", "output_per_mtok": 1}}', "'input_per_mtok' must be a number"),
    ('{"m": 3}', "model 'm': expected a table"),
    ('[1, 2]', "must map model names"),
    ('{"m": ', "not a valid JSON/TOML"),
])
def test_catalog_errors_name_file_and_field(tmp_path, body, needle):
    path = tmp_path / "prices.json"
    path.write_text(body)
    with pytest.raises(CatalogError, match="prices.json") as info:
        PriceCatalog.load(path)
    assert needle in str(info.value)


def test_missing_model_says_what_to_do():
    catalog = PriceCatalog({"a": {"input_per_mtok": 1, "output_per_mtok": 1}})
    with pytest.raises(CatalogError, match="no price for model 'b'; add it"):
        catalog["b"]


def test_a_model_the_catalog_does_not_price_is_not_in_it_and_keeps_its_outcome_without_a_cost(tmp_path):
    from training.data import load_traffic

    catalog = PriceCatalog({"a": {"input_per_mtok": 1, "output_per_mtok": 2}})
    assert "a" in catalog and "b" not in catalog  # a membership test, not the lookup's error
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "q", "outcomes": {"a": {"quality": 1, "input_tokens": 10, "output_tokens": 5}, '
                    '"b": {"quality": 0, "input_tokens": 10}}}\n')
    table, _ = load_traffic(path, prices=catalog)
    assert table[0].outcomes["a"].cost == 20 / 1e6 and table[0].outcomes["b"].cost is None


def test_a_catalog_that_prices_some_models_of_a_table_without_costs_names_the_others():
    import numpy as np

    from router_ml import DataError
    from training.costs import observed_costs
    from training.data import Outcome, Record, TrafficTable

    table = TrafficTable([Record(prompt=f"q{i}", outcomes={m: Outcome(quality=1.0) for m in "abc"}) for i in range(4)])
    catalog = PriceCatalog({"a": {"input_per_mtok": 1, "output_per_mtok": 2}})
    with pytest.raises(DataError, match=r"no price for \['b', 'c'\]: add them"):
        observed_costs(table, np.arange(4), catalog)


def test_a_model_without_any_cost_is_priced_by_the_catalog_or_the_catalog_named(tmp_path):
    """Rule 3 of training.costs: where other models log costs and one logs none, the catalog prices it; a
    catalog without it (or with it under another name) was told to "give a price catalog", which it had."""
    import numpy as np

    from router_ml import DataError
    from training.costs import observed_costs
    from training.data import Outcome, Record, TrafficTable

    records = [Record(prompt="q" * (4 * (i + 1)), outcomes={"a": Outcome(quality=1.0, cost=0.5),
                                                            "frontier-xl": Outcome(quality=1.0)}) for i in range(4)]
    table = TrafficTable(records)
    catalog = PriceCatalog({"a": {"input_per_mtok": 1, "output_per_mtok": 2},
                            "frontier-xl": {"input_per_mtok": 1e6, "output_per_mtok": 0}}, source="prices.toml")
    cost = observed_costs(table, np.arange(4), catalog)
    np.testing.assert_allclose(cost[:, 1], [1.0, 2.0, 3.0, 4.0])  # 1 USD per input token, i + 1 tokens each
    np.testing.assert_allclose(cost[:, 0], 0.5)
    misspelt = PriceCatalog({"a": {"input_per_mtok": 1, "output_per_mtok": 2},
                             "frontier-XL": {"input_per_mtok": 1, "output_per_mtok": 2}}, source="prices.toml")
    with pytest.raises(DataError, match=r"model 'frontier-xl' has outcomes but no cost anywhere; the price catalog "
                                        r"prices.toml has no price for it \(it prices 'frontier-XL': the same model"):
        observed_costs(table, np.arange(4), misspelt)


def test_shared_catalog_loads(shared_data):
    catalog = PriceCatalog.load(shared_data / "mmlu-pro-29" / "prices.json")
    assert len(catalog) == 29


def test_routed_text_rule():
    assert routed_text([{"role": "system", "content": "sys"}, {"role": "user", "content": "one"},
                        {"role": "assistant", "content": "reply"}, {"role": "user", "content": "two"}]) == "two"
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "here"}]
    assert routed_text([{"role": "user", "content": parts}]) == "look\nhere"
    assert routed_text([{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\nb"
    # an assistant turn of tool calls has no content (the chat API allows it there only)
    tools = [{"role": "user", "content": "weather?"},
             {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
             {"role": "tool", "tool_call_id": "c1", "content": "sunny"}, {"role": "user", "content": "and then?"}]
    assert message_problem(tools) is None and routed_text(tools) == "and then?"
    # bytes content was read as a list of parts (of ints) and routed as the empty prompt; a string failed on .get
    with pytest.raises(TypeError, match="message content must be a string or a list of parts, not bytes"):
        routed_text([{"role": "user", "content": b"hi"}])
    with pytest.raises(TypeError, match="messages must be a list of {'role', 'content'} objects, not str"):
        routed_text("hello")
    assert message_problem([{"role": "tool", "tool_call_id": "c1"}]) == (
        "messages[0].content", "required for a 'tool' message: a string or a list of content parts (only an "
        "assistant's may be left out)")


def test_a_listed_prompt_is_read_in_linear_time_and_a_list_of_more_than_max_turns_strings_stays_text():
    """A 5 MB request of a million one-letter strings once took 2.5 s and 1.1 GB in ast.literal_eval."""
    import tracemalloc

    from router_ml.messages import MAX_TURNS, list_turns, prompt_text

    turns = ["You are terse.", "it's \"quoted\"\nand \\ escaped", "\ud800 \x00 é"]
    assert list_turns(str(turns)) == turns and prompt_text(str(turns)) == turns[-1]
    assert list_turns(str(["t"] * MAX_TURNS)) == ["t"] * MAX_TURNS
    assert list_turns(str(["t"] * (MAX_TURNS + 1))) is None
    for not_a_list in ("[citation needed]", '["double"]', "['a','b']", "['a', 'b'] ", "['\\x41']", "['a', 3]"):
        assert list_turns(not_a_list) is None, not_a_list
    adversarial = "[" + "'a', " * 1_000_000 + "'b']"
    tracemalloc.start()
    try:
        assert prompt_text(adversarial) == adversarial
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing parsed past MAX_TURNS strings: once a gigabyte of syntax tree
    long = str(["x" * 1_000_000, "y" * 1_000_000])
    assert prompt_text(long) == "y" * 1_000_000
