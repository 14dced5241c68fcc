"""The real public data sets load with the counts and statistics they are known to have."""

from __future__ import annotations

import pytest

from training.data import load_traffic, split_table

pytestmark = pytest.mark.slow

GPT4, MIXTRAL = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


def test_routellm_mmlu(shared_data):
    root = shared_data / "routellm-mmlu"
    table, report = load_traffic(root / "responses")
    assert report.format == "routellm" and len(table) == 14042 and set(table.models) == {GPT4, MIXTRAL}
    summary = table.summary()
    assert summary["mean_quality"][GPT4] == pytest.approx(0.806, abs=1e-3)
    assert summary["mean_quality"][MIXTRAL] == pytest.approx(0.681, abs=1e-3)
    clean, report = load_traffic(root / "responses", exclude=root / "contaminated_prompts.jsonl")
    assert len(clean) == 14037 and report.excluded == 5
    split = split_table(clean, train_size=1500, val_size=0, seed=0)
    assert len(split.train) == 1500 and len(split.test) == 14037 - 1500


def test_mmlu_pro_29(shared_data):
    table, report = load_traffic(shared_data / "mmlu-pro-29" / "mmlu_pro_29.parquet")
    assert report.format == "wide" and len(table) == 12032 and len(table.models) == 29
    summary = table.summary()
    assert summary["coverage"]["DeepSeek-Coder-V2"] == pytest.approx(0.86, abs=5e-3)
    assert summary["mean_quality"]["gemini-1.5-pro-002"] == pytest.approx(0.70, abs=0.01)
    assert all(v is not None and v > 0 for v in summary["mean_cost"].values())
