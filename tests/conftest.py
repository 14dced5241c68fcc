"""Shared fixtures: paths to the bundled demo data and to ../shared/data when it is present."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEMO = ROOT / "data" / "demo" / "traffic.jsonl"
TRAIN_RECORDS = 800


def strict_json(text: str):
    """``json.loads`` that fails on NaN and infinities: what the commands print must be strict JSON."""
    def reject(constant: str):
        raise AssertionError(f"not strict JSON: {constant} in {text[:200]}...")

    return json.loads(text, parse_constant=reject)


def demo_head(tmp_path_factory, n: int) -> Path:
    """The first ``n`` demo records written as a canonical JSONL file (a quicker set to train on)."""
    from training.data import load_traffic, write_jsonl

    table, _ = load_traffic(DEMO)
    path = tmp_path_factory.mktemp("demo") / "demo.jsonl"
    write_jsonl(table.records[:n], path)
    return path


@pytest.fixture
def shared_data() -> Path:
    """The real public routing data beside the checkout; tests using it skip, saying so, if absent."""
    if not SHARED.is_dir():
        pytest.skip(f"real routing data not found at {SHARED}")
    return SHARED


#: fixtures that distil, train or fine-tune: every test that uses one is marked slow (pytest_collection_modifyitems)
TRAINING_FIXTURES = frozenset({"trained", "tiny_encoder_run"})


def pytest_collection_modifyitems(config, items):
    # the `slow` marker stays honest as tests are added: using a training fixture makes a test slow
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    # The suite is offline by design: nothing may reach a model or dataset hub.
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session", autouse=True)
def cache_root(tmp_path_factory) -> Path:
    """One router-ml cache for the whole session (subprocesses inherit it), so the static model is
    distilled at most once per pytest process and nothing lands in the user's ~/.cache. Where the
    user's cache holds the static model already (the quickstart's training distils it), the session
    starts with a copy - the same files, since the cache key hashes the source model and the settings -
    instead of each pytest-xdist worker distilling its own (about 90 s on 2 cores, both at once)."""
    from training.featurizers import distilled_static

    root = tmp_path_factory.mktemp("router-ml-cache")
    static = distilled_static()  # in $ROUTER_ML_CACHE or ~/.cache/router-ml: read, never written
    if static is not None:
        shutil.copytree(static, root / "static" / static.name)
        assert distilled_static(cache_dir=root) == root / "static" / static.name
    previous = os.environ.get("ROUTER_ML_CACHE")
    os.environ["ROUTER_ML_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("ROUTER_ML_CACHE", None)
    else:
        os.environ["ROUTER_ML_CACHE"] = previous


@dataclass(frozen=True)
class Trained:
    checkpoint: Path
    artifact: Path
    held_out: list[str]  # demo prompts after the training subset: never seen in training or validation


@pytest.fixture(scope="session")
def trained(tmp_path_factory, cache_root) -> Trained:
    """One small static-MLP router, trained in-process on the first 800 demo records and exported once per
    session (the runtime and serving tests share it)."""
    from training.config import load_config
    from training.data import load_traffic, write_jsonl
    from training.export import export_router
    from training.pipeline import train_router

    root = tmp_path_factory.mktemp("runtime")
    table, _ = load_traffic(DEMO)
    data = write_jsonl(table.records[:TRAIN_RECORDS], root / "train.jsonl")
    config = load_config(ROOT / "training/configs/mlp_static.toml",
                         ["train.epochs=10", "eval.n_boot=0", "eval.baselines=random", "tracking.enabled=false"])
    train_router(config, data, out_dir=root / "checkpoint", progress=False)
    export_router(root / "checkpoint", root / "artifact")
    return Trained(root / "checkpoint", root / "artifact", list(table.texts[TRAIN_RECORDS:TRAIN_RECORDS + 400]))


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A tiny random BERT checkpoint (2 layers, 32 wide) with the packaged MiniLM's tokenizer: an encoder
    router's starting point without a download (seeded, so the same each run). The tokenizer is
    copied, not built from ``vocab.txt``: under transformers 5 ``BertTokenizerFast(vocab_file=...)``
    ignores the file and maps every word to [UNK]."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from training.featurizers import minilm_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_run(tmp_path_factory, tiny_encoder) -> Trained:
    """An encoder router fine-tuned from :func:`tiny_encoder` for one epoch on 240 demo records (its
    baselines on the tiny encoder's own sentence features: no static distillation), then exported."""
    from training.config import load_config
    from training.data import load_traffic, write_jsonl
    from training.pipeline import train_router

    root = tmp_path_factory.mktemp("encoder-run")
    table, _ = load_traffic(DEMO)
    data = write_jsonl(table.records[:240], root / "train.jsonl")
    config = load_config(ROOT / "training/configs/encoder.toml",
                         [f"router.encoder={tiny_encoder}", "router.max_length=24", f"featurizer.name={tiny_encoder}",
                          "featurizer.max_tokens=64", "train.epochs=1", "eval.n_boot=0", "eval.baselines=random",
                          "tracking.enabled=false"])
    summary = train_router(config, data, out_dir=root / "checkpoint", progress=False)
    assert summary["artifact"], summary["export"]
    return Trained(root / "checkpoint", Path(summary["artifact"]), list(table.texts[240:300]))
