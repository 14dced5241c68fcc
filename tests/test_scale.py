"""Training at volume: the feature matrix read from disk, the streamed (windowed, sharded) epochs,
the memory and step budgets, and scripts/bench_scale.py at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.config import load_config
from training.featurizers import FeatureMatrix, as_feature_matrix
from training.routers import MLPRouter
from training.trainer import Batchable, _batches, epoch_windows, window_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def matrix(tmp_path) -> tuple[np.ndarray, Path]:
    X = np.random.default_rng(0).normal(size=(10_000, 6)).astype(np.float32)
    path = tmp_path / "features.npy"
    np.save(path, X)
    return X, path


def test_feature_matrix_reads_rows_like_the_array(matrix):
    X, path = matrix
    F = FeatureMatrix(path)
    assert F.shape == X.shape and len(F) == len(X)
    rows = np.array([9999, 3, 3, 4100, 0, 8191, 8192])  # any order, repeats, across shard bounds
    np.testing.assert_array_equal(F[rows], X[rows])
    np.testing.assert_array_equal(F[17:5000], X[17:5000])
    np.testing.assert_array_equal(F[::-3], X[::-3])
    np.testing.assert_array_equal(F[X[:, 0] > 1], X[X[:, 0] > 1])
    np.testing.assert_array_equal(F[42], X[42])
    np.testing.assert_array_equal(np.asarray(F), X)
    assert isinstance(as_feature_matrix(np.load(path, mmap_mode="r")), FeatureMatrix)
    assert as_feature_matrix(X) is X
    with pytest.raises(IndexError):
        F[np.array([10_000])]


def test_one_process_whose_split_fits_keeps_the_old_order():
    rows = np.arange(0, 3000, 2)
    windows, count = epoch_windows(rows, np.random.default_rng(5), window=len(rows))
    assert count == len(rows) and len(windows) == 1
    np.testing.assert_array_equal(windows[0], np.random.default_rng(5).permutation(len(rows)))


def test_windows_hold_whole_shards_within_the_budget():
    rows = np.sort(np.random.default_rng(1).choice(100_000, 30_000, replace=False))
    windows, count = epoch_windows(rows, np.random.default_rng(0), window=5000, shard_rows=1000)
    assert count == len(rows)
    assert all(len(w) <= 5000 for w in windows) and len(windows) >= 6
    np.testing.assert_array_equal(np.sort(np.concatenate(windows)), np.arange(len(rows)))
    for w in windows:  # a shard is never split between windows
        shards = set((rows[w] // 1000).tolist())
        assert all(not shards & set((rows[v] // 1000).tolist()) for v in windows if v is not w)


def test_ranks_read_disjoint_shards_and_take_the_same_number_of_records():
    rows = np.arange(200_000)
    parts = [epoch_windows(rows, np.random.default_rng(7), window=30_000, rank=r, world=2,
                           local_rng=np.random.default_rng([7, r])) for r in (0, 1)]
    taken = [np.concatenate(w) for w, _ in parts]
    assert parts[0][1] == parts[1][1] == min(len(t) for t in taken)
    assert not set(taken[0].tolist()) & set(taken[1].tolist())
    assert len(taken[0]) + len(taken[1]) == len(rows)
    for r, t in enumerate(taken):
        assert set((rows[t] // 4096 % 2).tolist()) == {r}
    small, count = epoch_windows(np.arange(500), np.random.default_rng(0), window=10_000, rank=1, world=2)
    assert count > 0 and len(np.concatenate(small)) > 0  # a small split is cut finer so every rank trains


def test_batches_follow_the_concatenated_windows(matrix):
    X, path = matrix
    data = Batchable(inputs=(FeatureMatrix(path),), quality=np.zeros((4000, 2)), cost=np.zeros((4000, 2)),
                     cost_est=np.zeros((4000, 2)), rows=np.arange(0, 8000, 2))
    windows = [np.arange(0, 1000), np.arange(3000, 3050), np.arange(1000, 3000)]
    batches = list(_batches(data, windows, 128, 10_000))
    order = np.concatenate(windows)
    np.testing.assert_array_equal(np.concatenate([b for b, _ in batches]), order)
    assert [len(b) for b, _ in batches[:-1]] == [128] * (len(batches) - 1)
    for positions, (x,) in batches:
        np.testing.assert_array_equal(x, X[data.rows[positions]])
    limited = list(_batches(data, windows, 128, 1100))
    assert sum(len(b) for b, _ in limited) == 1100


def _problem(n=20_000, d=64):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    quality = np.stack([(X[:, 0] > 0).astype(float), np.ones(n)], axis=1)
    return X, quality, np.tile([0.001, 0.01], (n, 1))


@pytest.mark.slow  # two small fits
def test_streamed_training_from_disk_learns_like_training_in_memory(tmp_path):
    X, quality, cost = _problem()
    np.save(tmp_path / "X.npy", X)
    F = FeatureMatrix(tmp_path / "X.npy")
    train, val, test = np.arange(0, 15_000), np.arange(15_000, 17_000), np.arange(17_000, 20_000)

    def fit(inputs, memory_mb, extra=()):
        config = load_config(None, ["train.epochs=4", "router.hidden=32", "train.lr=3e-3",
                                    f"train.memory_mb={memory_mb}", *extra])
        parts = [Batchable(inputs=(inputs,), quality=quality[r], cost=cost[r], cost_est=cost[r], rows=r)
                 for r in (train, val)]
        router = MLPRouter(config=config, n_models=2, input_dim=X.shape[1]).fit(*parts, wtp_range=(1e-4, 1.0))
        return router, np.mean((router.predict((X[test],))[:, 0] > 0.5) == (X[test, 0] > 0))

    memory, in_memory = fit(X, 256)
    tiny = 1  # MiB: fewer records than one shard (4096), so each window is one shard, read from disk
    assert window_rows(Batchable(inputs=(F,), quality=quality, cost=cost, cost_est=cost), tiny) < 4096
    streamed, from_disk = fit(F, tiny)
    assert in_memory > 0.9 and from_disk > 0.9
    assert all(h["records"] == len(train) for h in streamed.history_)  # every record once an epoch
    capped, _ = fit(F, tiny, ["train.max_steps=30"])
    assert capped.history_[-1]["steps"] == 30 and len(capped.history_) == 1
    # the same split in memory and from disk, one window each: the very same training
    same, _ = fit(F, 256)
    np.testing.assert_allclose(same.predict((X[test],)), memory.predict((X[test],)), atol=1e-6)


@pytest.mark.slow  # two tiny end-to-end trains in subprocesses
def test_bench_scale_reports_every_size_and_stage(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_scale.py"), "--sizes", "500,1000", "--runs", "1",
         "--work-dir", str(tmp_path), "--set", "train.epochs=2", "--set", "eval.n_boot=5",
         "--set", "eval.baselines=random,best-single"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert set(report["sizes"]) == {"500", "1000"}
    for n, size in report["sizes"].items():
        assert size["records"] == int(n) and Path(size["data"]).is_file()
        for stage in ("inspect", "train"):
            assert size[stage]["seconds"] > 0 and size[stage]["records_per_s"] > 0
            assert size[stage]["peak_rss_mb"] > 10
        train = size["train"]
        assert 0 < train["aiq"] <= 1 and len(train["aiqs"]) == 1
        assert 0 < train["peak_rss_after_load_mb"] <= train["peak_rss_mb"] * 1.05
        assert train["rss_growth_after_load_mb"] is not None
        assert max(v or 0 for v in train["peak_rss_by_stage_mb"].values()) > 0
        assert {"load", "featurize", "fit", "evaluate"} <= set(train["stages"])
    assert report["scaling"]["smallest"] == 500 and report["scaling"]["largest"] == 1000
    assert report["scaling"]["growth_ratio"] > 0
    assert Path(report["png"]).stat().st_size > 10_000
    with open(report["sizes"]["500"]["data"]) as f:  # at most 99,999 records: make_demo_data.py's own set
        first = json.loads(f.readline())
    assert first["sample_id"] == "demo-00001"


def test_released_fields_cost_nothing_and_refuse_to_be_read():
    from router_ml.errors import RouterMLError
    from training.data import load_traffic

    table, _ = load_traffic(Path(__file__).parent.parent / "data" / "demo" / "traffic.jsonl")
    fingerprint, quality = table.fingerprint(), table.quality.copy()
    assert table.latency_s.nbytes > 0
    table.release(*type(table).RELEASABLE)
    assert table.fingerprint() == fingerprint                      # taken before, kept
    assert table.columns.latency_s.strides == (0, 0)               # a blank: no memory
    assert table.columns.input_tokens.strides == (0, 0)
    np.testing.assert_array_equal(table.quality, quality)          # what training reads stays
    assert table.texts[0] and table.columns.sample_id[0]
    with pytest.raises(RouterMLError, match="released"):
        assert table.latency_s is None
    with pytest.raises(RouterMLError, match="released"):
        assert table[0] is None
    with pytest.raises(RouterMLError, match="released"):
        table.subset([0, 1])[0]
    with pytest.raises(RouterMLError, match="only"):
        table.release("quality")


def test_block_column_means_match_nanmean_and_full_costs_are_not_copied():
    from training.costs import column_means, observed_costs
    from training.data import TrafficTable
    from training.data.schema import Outcome, Record

    rng = np.random.default_rng(0)
    m = rng.random((200_000, 3))
    m[rng.random(m.shape) < 0.3] = np.nan
    m[:, 2] = np.nan
    rows = rng.choice(len(m), 150_000, replace=False)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning):
        expected = np.nanmean(m[rows], axis=0)
    np.testing.assert_allclose(column_means(m, rows), expected, rtol=1e-12)
    assert np.isnan(column_means(m)[2])

    records = [Record(prompt=f"p{i}", outcomes={"a": Outcome(quality=1.0, cost=0.1 * i),
                                                 "b": Outcome(quality=0.0, cost=1.0)}) for i in range(1, 9)]
    table = TrafficTable(records)
    cost = observed_costs(table, np.arange(6))
    assert np.shares_memory(cost, table.columns.cost) and not cost.flags.writeable
    partial = TrafficTable([*records, Record(prompt="q", outcomes={"a": Outcome(quality=1.0)})])
    filled = observed_costs(partial, np.arange(9))
    assert not np.shares_memory(filled, partial.columns.cost) and np.isfinite(filled).all()


def test_validation_forward_passes_stay_within_the_chunk(monkeypatch):
    """Validation runs the module over at most VALIDATION_CHUNK records at a time, whatever the memory
    window (one pass over a whole window held a GB of activations at 10M records)."""
    import torch

    from training import trainer

    X, quality, cost = _problem()
    config = load_config(None, ["train.epochs=1", "router.hidden=8", "train.max_steps=2"])
    parts = [Batchable(inputs=(X,), quality=quality[r], cost=cost[r], cost_est=cost[r], rows=r)
             for r in (np.arange(0, 1000), np.arange(1000, 3500))]
    seen: list[int] = []
    real_loss = trainer._batch_loss

    def recording(module, data, index, inputs, *args, **kwargs):
        if not module.training:
            seen.append(len(index))
        return real_loss(module, data, index, inputs, *args, **kwargs)

    monkeypatch.setattr(trainer, "VALIDATION_CHUNK", 1000)
    monkeypatch.setattr(trainer, "_batch_loss", recording)
    torch.manual_seed(0)
    MLPRouter(config=config, n_models=2, input_dim=X.shape[1]).fit(*parts, wtp_range=(1e-4, 1.0))
    assert seen == [1000, 1000, 500]  # every validation record once, in chunks of at most 1,000
