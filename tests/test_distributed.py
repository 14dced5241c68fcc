"""Past one machine: `router-ml featurize --shard K/N` fans featurization out over independent
processes into the feature cache, and `torchrun` trains on that cache with two DDP processes.

What the tests prove:
- two featurize workers started together write exactly the cache entry one process would (same key,
  same bytes), and the last one to finish assembles it;
- `train` (one process and both torchrun ranks) finds that entry complete and rewrites nothing in
  the cache (the file's inode and mtime and the cache's listing are unchanged);
- a 2-process torchrun run (gloo on CPU) finishes, only rank 0 writes and prints, and its test AIQ
  lies inside the one-process run's 95% bootstrap interval.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from router_ml.errors import RouterMLError
from training.config import load_config
from training.featurizers import DEFAULT_SHARD_SIZE, distill_static, featurize, get_featurizer
from training.shards import featurize_shard, parse_shard, worker_shards

from .conftest import ROOT

CONFIG = ROOT / "training/configs/mlp_static.toml"
#: more than one cache shard (DEFAULT_SHARD_SIZE texts), so each of two workers has one to compute
RECORDS = 5000
#: small, converging settings: early stopping ends both runs at their best validation loss
TRAIN = ["--set", "eval.n_boot=100", "--set", "eval.baselines=random", "--set", "tracking.enabled=false",
         "--set", "router.hidden=128", "--quiet"]


def router_ml(*args) -> list[str]:
    return [sys.executable, "-m", "router_ml.cli", *map(str, args)]


def test_shard_arguments_and_worker_blocks():
    assert parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(RouterMLError, match="--shard expects K/N"):
            parse_shard(bad)
    n = 10 * DEFAULT_SHARD_SIZE + 7  # 11 cache shards over 4 workers: 2, 3, 3, 3, contiguous, covering all rows
    blocks = [worker_shards(n, k, 4) for k in range(4)]
    assert [len(b) for b in blocks] == [2, 3, 3, 3]
    flat = [s for b in blocks for s in b]
    assert flat == worker_shards(n, 0, 1) and flat[0][0] == 0 and flat[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(flat, flat[1:], strict=False))
    # fewer cache shards than workers: some have nothing to do
    assert worker_shards(100, 0, 2) == [] and worker_shards(100, 1, 2) == [(0, 100)]


@dataclass(frozen=True)
class Sharded:
    work: Path
    data: Path
    cache: Path
    outs: list[dict]


def _cache_state(cache: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(cache)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(cache.rglob("*"))}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Sharded:
    """5,000 demo records featurized by two `router-ml featurize` processes started together."""
    work = tmp_path_factory.mktemp("distributed")
    subprocess.run([sys.executable, ROOT / "scripts/make_demo_data.py", "--n", str(RECORDS), "--out-dir",
                    work / "data"], check=True, capture_output=True, timeout=300)
    data, cache = work / "data" / "traffic.jsonl", work / "features"
    distill_static()  # the model once, before the fan-out (as a cluster job would), not once per worker
    workers = [subprocess.Popen(router_ml("featurize", "--config", CONFIG, "--data", data, "--shard", f"{k}/2",
                                          "--cache-dir", cache, "--quiet"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=work)
               for k in range(2)]
    outs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return Sharded(work, data, cache, outs)


@pytest.mark.slow
def test_featurize_workers_fill_the_cache_one_process_would(sharded):
    first, second = sharded.outs
    assert first["rows"] == [0, DEFAULT_SHARD_SIZE] and second["rows"] == [DEFAULT_SHARD_SIZE, RECORDS]
    assert first["computed"] == second["computed"] == 1
    assert first["cache_entry"] == second["cache_entry"]
    assert first["complete"] or second["complete"]  # whichever finished last assembled the entry
    entry = Path(first["cache_entry"])
    assert sorted(p.name for p in entry.iterdir()) == ["features.npy", "meta.json"]  # assembled, shards consumed

    from training.data import load_traffic

    table, _ = load_traffic(sharded.data)
    featurizer = get_featurizer("static", max_tokens=256)
    reference = featurize(featurizer, table.texts, cache_dir=sharded.work / "one-process",
                          data_fingerprint=table.fingerprint(), progress=False)
    assert [p.name for p in (sharded.work / "one-process").iterdir()] == [entry.name]  # the same cache key
    assert np.array_equal(np.load(entry / "features.npy"), reference)

    # a rerun (a retried array task) computes nothing
    again = featurize_shard(load_config(CONFIG), sharded.data, shard=(1, 2), cache_dir=sharded.cache)
    assert again["computed"] == 0 and again["complete"] is True


@dataclass(frozen=True)
class Runs:
    one: dict
    two: dict
    two_dir: Path
    logs: Path
    before: dict
    after: dict


@pytest.fixture(scope="module")
def runs(sharded) -> Runs:
    """One-process and 2-process torchrun training on the fanned-out cache."""
    before = _cache_state(sharded.cache)
    common = ["--config", CONFIG, "--data", sharded.data, "--cache-dir", sharded.cache, *TRAIN]
    one = subprocess.run(router_ml("train", "--out", sharded.work / "one", *common), capture_output=True, text=True,
                         cwd=sharded.work, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    logs = sharded.work / "torchrun-logs"
    # --standalone: a local rendezvous on a free port; --redirects 3: each rank's stdout/stderr to its own file
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "--log-dir", logs, "--redirects", "3", "-m", "router_ml.cli", "train", "--out", sharded.work / "two",
                *common]
    two = subprocess.run(list(map(str, torchrun)), capture_output=True, text=True, cwd=sharded.work, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, (two.stderr[-3000:], [p.read_text()[-2000:] for p in logs.rglob("stderr.log")])
    rank0 = next(logs.rglob("attempt_0/0/stdout.log")).read_text()
    return Runs(json.loads(one.stdout.strip().splitlines()[-1]), json.loads(rank0.strip().splitlines()[-1]),
                sharded.work / "two", logs, before, _cache_state(sharded.cache))


@pytest.mark.slow
def test_train_finds_the_fanned_out_cache_complete(runs):
    assert runs.before and runs.after == runs.before  # nothing recomputed, rewritten or added by three processes


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(runs):
    # both ranks ran train; only rank 0 printed a summary and wrote the router
    assert runs.two and next(runs.logs.rglob("attempt_0/1/stdout.log")).read_text().strip() == ""
    assert (runs.two_dir / "weights.safetensors").is_file() and (runs.two_dir / "artifact" / "manifest.json").is_file()
    assert json.loads((runs.two_dir / "summary.json").read_text())["test"]["aiq"] == runs.two["test"]["aiq"]
    assert runs.two["data_fingerprint"] == runs.one["data_fingerprint"]
    assert runs.two["test_records"] == runs.one["test_records"]
    # DDP really shared the work: each rank saw half of every epoch, so the run is not a copy of the one-process run
    assert runs.two["test"]["aiq"] != runs.one["test"]["aiq"]
    low, high = runs.one["test"]["ci95"]["aiq"]
    assert low <= runs.two["test"]["aiq"] <= high, (runs.two["test"]["aiq"], (low, high))
