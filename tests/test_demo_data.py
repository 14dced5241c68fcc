"""The bundled demo data is what its generator makes, and it is valid, priced traffic."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from router_ml import PriceCatalog
from training.data import load_traffic, split_table

from .conftest import DEMO, ROOT


def test_generator_reproduces_the_committed_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--out-dir", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    for name in ("traffic.jsonl", "prices.toml"):
        assert (tmp_path / name).read_bytes() == (DEMO.parent / name).read_bytes(), name


def test_demo_traffic_is_valid_and_priced_by_the_catalog():
    table, report = load_traffic(DEMO)
    assert report.rejected == 0 and len(table) >= 3000 and len(table.models) >= 4
    assert not np.isnan(table.quality).any() and not np.isnan(table.cost).any()
    prices = PriceCatalog.load(DEMO.parent / "prices.toml")
    assert set(prices) == set(table.models)
    for record in table.records[:200]:
        for model, outcome in record.outcomes.items():
            expected = prices.cost(model, input_tokens=outcome.input_tokens, output_tokens=outcome.output_tokens)
            assert outcome.cost == float(f"{expected:.10g}")
    # a router has something to learn: the cheapest model is much cheaper and much worse
    mean_q, mean_c = np.nanmean(table.quality, axis=0), np.nanmean(table.cost, axis=0)
    assert mean_c.max() / mean_c.min() > 50 and mean_q.max() - mean_q.min() > 0.3
    # and the oracle is far cheaper than the best single model at no loss of quality
    best = int(np.argmax(mean_q))
    oracle_q = table.quality.max(axis=1)
    assert oracle_q.mean() >= mean_q[best]
    split = split_table(table, train_size=0.7, seed=0)
    assert len(split.train) + len(split.val) == 2800
