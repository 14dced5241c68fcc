"""Featurizers on real models: the distilled static table, the packaged MiniLM and a tiny DistilBERT.

The static model is distilled once per test session (about 40 s on 2 cores) into a cache under
pytest's temporary directory; everything else reuses it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import training.featurizers as featurizers
from router_ml.errors import RouterMLError
from training.featurizers import (
    Featurizer,
    FeaturizerError,
    StaticFeaturizer,
    TransformerFeaturizer,
    distill_static,
    distilled_static,
    feature_cache_key,
    featurize,
    get_featurizer,
    head_tail,
    minilm_path,
)

PROMPTS = [
    "What is the capital of France?",
    "Name the capital city of France.",
    "Write a Python function that sorts a list of integers.",
    "Implement quicksort in Python.",
    "Translate 'good morning' into German.",
    "Summarize the plot of Hamlet in three sentences.",
    "Prove that the square root of 2 is irrational.",
    "Give me a recipe for banana bread.",
]
TEXTS = [f"{PROMPTS[i % len(PROMPTS)]} (variant {i}) " + "extra context " * (i % 7) for i in range(45)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="session")
def static_dir(cache_root) -> Path:
    return distill_static(cache_dir=cache_root)


@pytest.fixture(scope="module")
def static(static_dir) -> StaticFeaturizer:
    return StaticFeaturizer(model_dir=static_dir)


@pytest.fixture(scope="module")
def tiny_static_dir(tmp_path_factory) -> Path:
    """A model2vec-shaped directory without distilling: MiniLM's tokenizer and a seeded random 32-d
    table. Enough for everything but the embeddings' meaning (caching, truncation, pooling, pickling)."""
    import shutil

    from safetensors.numpy import save_file

    path = tmp_path_factory.mktemp("tiny-static")
    shutil.copyfile(minilm_path() / "tokenizer.json", path / "tokenizer.json")
    vocab = len((minilm_path() / "vocab.txt").read_text(encoding="utf-8").splitlines())
    table = np.random.default_rng(0).normal(size=(vocab, 32)).astype(np.float32)
    save_file({"embeddings": table}, str(path / "model.safetensors"))
    (path / "config.json").write_text('{"model_type": "model2vec", "normalize": true}')
    return path


@pytest.fixture(scope="module")
def tiny_static(tiny_static_dir) -> StaticFeaturizer:
    return StaticFeaturizer(model_dir=tiny_static_dir)


@pytest.fixture(scope="module")
def minilm() -> TransformerFeaturizer:
    return get_featurizer("minilm", device="cpu")


class Counting(Featurizer):
    """Delegates to another featurizer, counting the texts it transforms and failing on demand."""

    name = "counting"

    def __init__(self, inner: Featurizer, *, fail_on_call: int | None = None):
        self.inner, self.fail_on_call = inner, fail_on_call
        self.calls = self.texts = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def transform(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        self.texts += len(texts)
        return self.inner.transform(texts, batch_size=batch_size)


# --- the package surface -------------------------------------------------------------------------


def test_all_is_sorted_and_complete():
    assert list(featurizers.__all__) == sorted(featurizers.__all__)
    for name in featurizers.__all__:
        assert hasattr(featurizers, name), name
    public = {n for n, v in vars(featurizers).items() if not n.startswith("_") and not isinstance(v, type(sys))}
    assert public <= set(featurizers.__all__), public - set(featurizers.__all__)


def test_import_is_cheap():
    code = ("import sys, training.featurizers; print([m for m in ('torch', 'transformers', 'datasets', "
            "'model2vec', 'tokenizers', 'sentence_transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_spec_lists_the_choices(tmp_path):
    with pytest.raises(FeaturizerError, match="minilm, static") as info:
        get_featurizer("bag-of-words")
    assert isinstance(info.value, RouterMLError) and isinstance(info.value, ValueError)
    with pytest.raises(FeaturizerError, match="existing local model directory"):
        get_featurizer(str(tmp_path / "nope"))
    with pytest.raises(FeaturizerError, match="no config.json"):
        get_featurizer(str(tmp_path)).identity()
    with pytest.raises(FeaturizerError, match="bad option"):
        get_featurizer("static", pooling="max")


def test_head_tail_rule():
    assert head_tail(list(range(10)), max_tokens=10, head=7) == list(range(10))
    assert head_tail(list(range(10)), max_tokens=4, head=3) == [0, 1, 2, 9]
    assert head_tail(list(range(10)), max_tokens=4, head=4) == [0, 1, 2, 3]
    assert head_tail(list(range(10)), max_tokens=4, head=0) == [6, 7, 8, 9]
    assert featurizers.default_head(256) == 192
    with pytest.raises(FeaturizerError, match="head"):
        StaticFeaturizer(max_tokens=8, head=9)


def test_the_rules_with_special_tokens_and_on_text():
    from router_ml.truncation import clip_tokens, prepare_text

    cls, sep = 101, 102
    assert clip_tokens([cls, 1, 2, 3, sep], max_tokens=3, head=2, special=True) == [cls, 1, 2, 3, sep]
    assert clip_tokens([cls, *range(1, 11), sep], max_tokens=4, head=3, special=True) == [cls, 1, 2, 3, 10, sep]
    assert clip_tokens([cls, sep], max_tokens=4, head=3, special=True) == [cls, sep]
    assert clip_tokens(list(range(10)), max_tokens=4, head=3, special=False) == [0, 1, 2, 9]
    with pytest.raises(ValueError, match="special tokens"):
        clip_tokens([cls], max_tokens=4, head=3, special=True)
    assert prepare_text("a" * 6 + "b" * 6, 8) == "aaaaaa\nbb"  # 3/4 head, 1/4 tail of the characters
    # a lone surrogate's three UTF-8 bytes each become U+FFFD, as in the runtime (the same function)
    assert prepare_text("ok \ud800", 8) == "ok " + "\ufffd" * 3 and prepare_text("short", 8) == "short"


# --- static ------------------------------------------------------------------------------------


@pytest.mark.slow  # distils the static model
def test_distillation_is_cached(cache_root, static_dir, monkeypatch, tmp_path):
    import model2vec.distill

    def no_distill(**kwargs):
        raise AssertionError("distilled again")

    monkeypatch.setattr(model2vec.distill, "distill", no_distill)
    assert distill_static(cache_dir=cache_root) == static_dir
    assert distilled_static(cache_dir=cache_root) == static_dir
    assert distilled_static(cache_dir=tmp_path) is None and not any(tmp_path.iterdir())  # looks, never writes
    (tmp_path / "static" / static_dir.name).mkdir(parents=True)  # a directory without the model's files
    assert distilled_static(cache_dir=tmp_path) is None
    assert [p.name for p in (cache_root / "static").iterdir()] == [static_dir.name]  # no temp dirs left
    monkeypatch.setenv("ROUTER_ML_CACHE", str(cache_root))
    assert get_featurizer("static").model_dir == static_dir
    assert isinstance(get_featurizer(str(static_dir)), StaticFeaturizer)


@pytest.mark.slow  # distils the static model
def test_static_features_are_deterministic_and_match_numpy(static, static_dir):
    X = static.transform(TEXTS)
    assert X.shape == (len(TEXTS), 256) and X.dtype == np.float32 and static.dim == 256
    np.testing.assert_array_equal(X, static.transform(TEXTS))
    np.testing.assert_array_equal(X, StaticFeaturizer(model_dir=static_dir).transform(TEXTS))
    np.testing.assert_array_equal(X[3:4], static.transform(TEXTS[3:4]))  # rows do not depend on the batch

    table = static.embedding_table
    assert table.dtype == np.float32 and table.shape[1] == 256
    expected = np.stack([table[ids].mean(axis=0) for ids in static.token_ids(TEXTS)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(X, expected, atol=1e-6)
    assert static.normalize is True  # model2vec.distill writes normalize: true
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-6)


@pytest.mark.slow  # distils the static model
def test_static_tokenizer_file_reproduces_token_ids(static):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(static.tokenizer_path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encodings = tokenizer.encode_batch(PROMPTS, add_special_tokens=False)
    ids = [[i for i in enc.ids if i != static.unk_id] for enc in encodings]
    assert ids == static.token_ids(PROMPTS)
    assert all(ids)


@pytest.mark.slow  # distils the static model
def test_static_agrees_with_model2vec(static, static_dir):
    from model2vec import StaticModel

    reference = StaticModel.from_pretrained(static_dir).encode(PROMPTS)
    np.testing.assert_allclose(static.transform(PROMPTS), reference.astype(np.float32), atol=2e-3)


def test_static_head_tail_truncation_keeps_start_and_end(tiny_static_dir):
    text = " ".join(f"{w}" for w in ["alpha", "beta", "gamma", "delta"] * 100) + " so what is the answer?"
    full = StaticFeaturizer(model_dir=tiny_static_dir, max_tokens=100_000).token_ids([text])[0]
    assert len(full) > 400
    featurizer = StaticFeaturizer(model_dir=tiny_static_dir)
    kept = featurizer.token_ids([text])[0]
    assert (featurizer.max_tokens, featurizer.head, featurizer.tail) == (256, 192, 64)
    assert kept == full[:192] + full[-64:]
    small = StaticFeaturizer(model_dir=tiny_static_dir, max_tokens=8, head=5)
    assert small.token_ids([text])[0] == full[:5] + full[-3:]

    # Two long prompts that differ only at the end: plain right truncation cannot tell them apart.
    pair = [text, text.replace("so what is the answer?", "translate it into French.")]
    a, b = featurizer.transform(pair)
    assert not np.allclose(a, b)
    a, b = StaticFeaturizer(model_dir=tiny_static_dir, head=256).transform(pair)
    np.testing.assert_array_equal(a, b)


def test_static_empty_or_unknown_text_is_zero(tiny_static_dir):
    for normalize in (True, False):
        featurizer = StaticFeaturizer(model_dir=tiny_static_dir, normalize=normalize)
        X = featurizer.transform(["", "   \n\t", "\u2603\u2603", "hello"])
        assert not X[:3].any()
        assert np.linalg.norm(X[3]) > 0
        assert featurizer.token_ids(["", "\u2603"]) == [[], []]


def test_static_normalize_flag(tiny_static_dir, tiny_static):
    raw = StaticFeaturizer(model_dir=tiny_static_dir, normalize=False).transform(PROMPTS)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), tiny_static.transform(PROMPTS),
                               atol=1e-6)
    assert StaticFeaturizer(model_dir=tiny_static_dir, normalize=False).identity() != tiny_static.identity()


@pytest.mark.slow  # distils the static model
def test_static_similar_prompts_are_closer(static):
    france, france2, code, code2, recipe = static.transform([PROMPTS[i] for i in (0, 1, 2, 3, 7)])
    assert cosine(france, france2) > cosine(france, code)
    assert cosine(france, france2) > cosine(france, recipe)
    assert cosine(code, code2) > cosine(code, recipe)


def test_static_pickles_without_its_table(tiny_static):
    import pickle

    tiny_static.transform(["load it"])
    data = pickle.dumps(tiny_static)
    assert len(data) < 10_000
    np.testing.assert_array_equal(pickle.loads(data).transform(PROMPTS), tiny_static.transform(PROMPTS))


# --- featurize: the cache ------------------------------------------------------------------------


def test_featurize_caches_and_hits(tiny_static, tmp_path):
    counting = Counting(tiny_static)
    X = featurize(counting, TEXTS, cache_dir=tmp_path, shard_size=10, progress=False)
    np.testing.assert_array_equal(X, tiny_static.transform(TEXTS))
    assert counting.calls == 5 and counting.texts == len(TEXTS)
    entry = tmp_path / feature_cache_key(tiny_static, TEXTS)
    assert sorted(p.name for p in entry.iterdir()) == ["features.npy", "meta.json"]  # shards are cleaned up

    again = featurize(counting, TEXTS, cache_dir=tmp_path, shard_size=10, progress=False)
    np.testing.assert_array_equal(again, X)
    assert counting.calls == 5  # nothing recomputed
    assert again.flags.writeable
    mapped = featurize(counting, TEXTS, cache_dir=tmp_path, progress=False, mmap=True)
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    np.testing.assert_array_equal(mapped, X)


def test_featurize_key_follows_data_and_identity(tiny_static, tiny_static_dir, tmp_path):
    featurize(tiny_static, TEXTS, cache_dir=tmp_path, data_fingerprint="table-a", progress=False)
    featurize(tiny_static, TEXTS, cache_dir=tmp_path, data_fingerprint="table-b", progress=False)
    featurize(tiny_static, TEXTS, cache_dir=tmp_path, progress=False)
    featurize(tiny_static, TEXTS[::-1], cache_dir=tmp_path, progress=False)
    featurize(StaticFeaturizer(model_dir=tiny_static_dir, max_tokens=128), TEXTS, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.iterdir())) == 5


def test_featurize_default_cache_dir(tiny_static, tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTER_ML_CACHE", str(tmp_path))
    featurize(tiny_static, PROMPTS, data_fingerprint="abc", progress=False)
    key = feature_cache_key(tiny_static, PROMPTS, data_fingerprint="abc")
    assert (tmp_path / "features" / key / "features.npy").is_file()


def test_a_cache_location_that_is_a_file_is_named_and_left_alone(tiny_static, tmp_path, monkeypatch):
    """--cache-dir (or ROUTER_ML_CACHE) naming a data file was a bare '[Errno 20] Not a directory'."""
    data = tmp_path / "traffic.jsonl"
    data.write_text('{"prompt": "x"}\n')
    with pytest.raises(FeaturizerError, match=r"feature cache .*traffic\.jsonl: exists and is not a directory"):
        featurize(tiny_static, PROMPTS, cache_dir=data, progress=False)
    monkeypatch.setenv("ROUTER_ML_CACHE", str(data))
    with pytest.raises(FeaturizerError, match=r"ROUTER_ML_CACHE=.*traffic\.jsonl: the cache root exists and is not"):
        featurize(tiny_static, PROMPTS, data_fingerprint="abc", progress=False)
    assert data.read_text() == '{"prompt": "x"}\n'
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", "featurize", "--data", str(data), "--cache-dir",
                          str(data)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert f"argument --cache-dir: {data} exists and is not a directory" in out.stderr


def test_featurize_resumes_an_interrupted_run(tiny_static, tmp_path):
    expected = tiny_static.transform(TEXTS)
    with pytest.raises(KeyboardInterrupt):
        featurize(Counting(tiny_static, fail_on_call=3), TEXTS, cache_dir=tmp_path, shard_size=10, progress=False)
    entry = tmp_path / feature_cache_key(tiny_static, TEXTS)
    assert sorted(p.name for p in entry.glob("*.npy")) == ["shard-0000000000-0000000010.npy",
                                                          "shard-0000000010-0000000020.npy"]
    assert not list(entry.glob(".*"))  # no temporary files left behind

    resumed = Counting(tiny_static)
    X = featurize(resumed, TEXTS, cache_dir=tmp_path, shard_size=10, progress=False)
    assert resumed.texts == len(TEXTS) - 20
    np.testing.assert_array_equal(X, expected)

    # A damaged final file is recomputed, not trusted.
    (entry / "features.npy").write_bytes(b"not an array")
    again = Counting(tiny_static)
    np.testing.assert_array_equal(featurize(again, TEXTS, cache_dir=tmp_path, progress=False), expected)
    assert again.texts == len(TEXTS)


def test_featurize_num_proc_matches_one_process(tiny_static, tmp_path):
    one = featurize(tiny_static, TEXTS, cache_dir=tmp_path / "one", shard_size=8, progress=False)
    two = featurize(tiny_static, TEXTS, cache_dir=tmp_path / "two", shard_size=8, num_proc=2, progress=False)
    np.testing.assert_array_equal(one, two)


def test_featurize_edge_cases(tiny_static, minilm, tmp_path):
    assert featurize(tiny_static, [], cache_dir=tmp_path, progress=False).shape == (0, 32)
    with pytest.raises(FeaturizerError, match="one process"):
        featurize(minilm, PROMPTS, cache_dir=tmp_path, num_proc=2, progress=False)
    with pytest.raises(FeaturizerError, match="not one string"):
        featurize(tiny_static, "a single prompt", cache_dir=tmp_path, progress=False)


# --- transformer encoders ------------------------------------------------------------------------


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    sentences = PROMPTS[:3]
    X = minilm.transform(sentences)
    assert X.shape == (3, 384) and X.dtype == np.float32 and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-6)
    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(sentences)
    np.testing.assert_allclose(X, reference, atol=1e-5)
    identity = minilm.identity()
    assert (identity["pooling"], identity["normalize"], identity["max_tokens"]) == ("mean", True, 256)
    assert "model.safetensors" in identity["files"]


def test_minilm_truncation_keeps_the_question(minilm):
    text = "context " * 600 + "which model should answer this?"
    ids = minilm.token_ids([text])[0]
    tokens = minilm.tokenizer.convert_ids_to_tokens(ids)
    assert len(ids) == 256 and minilm.head == 190
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[-7:-1] == ["which", "model", "should", "answer", "this", "?"]
    assert minilm.transform([text]).shape == (1, 384)


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    path = tmp_path_factory.mktemp("tiny-distilbert")
    # MiniLM's tokenizer, copied: transformers 5's DistilBertTokenizer(vocab_file=...) ignores the file
    # and knows 5 tokens, so every word would be [UNK]
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, hidden_dim=64, n_layers=1, n_heads=2,
                              max_position_embeddings=64)
    DistilBertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_tiny_distilbert_loads_by_path(tiny_distilbert):
    featurizer = get_featurizer(str(tiny_distilbert), batch_size=2)
    assert type(featurizer) is TransformerFeaturizer
    assert featurizer.dim == 32 and featurizer.max_tokens == 64 and not featurizer.normalize
    X = featurizer.transform(PROMPTS[:3] + ["", "word " * 500])
    assert X.shape == (5, 32) and X.dtype == np.float32 and np.isfinite(X).all()
    np.testing.assert_allclose(X[:3], featurizer.transform(PROMPTS[:3]), atol=1e-5)
    assert len(featurizer.token_ids(["word " * 500])[0]) == 64
    assert featurizer.tokenizer.convert_ids_to_tokens(featurizer.token_ids(["Sum 17 and 25."])[0]) == [
        "[CLS]", "sum", "17", "and", "25", ".", "[SEP]"]
    assert featurizer.identity()["dim"] == 32
    with pytest.raises(FeaturizerError, match="exceeds"):
        TransformerFeaturizer(tiny_distilbert, max_tokens=512).identity()
