"""The torch-free runtime on a real exported router: parity with training, decisions, any-str input,
threads, corrupted artifacts, session options, int8 export and the exporter's refusals.

One small static-MLP router is trained in-process on the first 800 demo records and exported once
per module; every test reads real files and runs real onnxruntime sessions.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from router_ml import ArtifactError, Decision, Router
from training.export import ExportError, export_router

pytestmark = [
    pytest.mark.slow,
]
HEAVY = ("torch", "transformers", "datasets", "mlflow")


@pytest.fixture(scope="module")
def router(trained) -> Router:
    """A shared router for read-only tests (calibration mutates its own copy)."""
    return Router.load(trained.artifact)


# --- 1. parity with training, in a fresh interpreter ---------------------------------------------

FRESH = """
import json, sys
import router_ml
router = router_ml.Router.load(sys.argv[1])
texts = json.loads(open(sys.argv[2], encoding="utf-8").read())
pred = router.predict(texts)
loaded = sorted({name.split(".")[0] for name in sys.modules} & {"torch", "transformers", "datasets", "mlflow",
                                                                   "onnxruntime", "tokenizers"})
print(json.dumps({"pred": pred.tolist(), "models": list(router.models), "loaded": loaded}))
"""


def test_fresh_interpreter_predicts_like_training_without_heavy_imports(trained, tmp_path):
    from training.featurizers import get_featurizer
    from training.routers import TorchRouter

    texts = trained.held_out[:50]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(texts), encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", FRESH, str(trained.artifact), str(prompts)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert not set(got["loaded"]) & set(HEAVY), f"the runtime imported {got['loaded']}"
    assert {"onnxruntime", "tokenizers"} <= set(got["loaded"])  # it did run a real session

    X = get_featurizer("static", max_tokens=256).transform(texts)
    expected = TorchRouter.load(trained.checkpoint).predict((X,))
    runtime = np.array(got["pred"])
    assert runtime.shape == expected.shape == (50, len(got["models"]))
    np.testing.assert_allclose(runtime, expected, atol=1e-4, rtol=0)
    assert np.ptp(runtime, axis=0).max() > 1e-3  # the prompts really differ, so parity is not vacuous


# --- 2. deciding -------------------------------------------------------------------------------

def _mean(values) -> float:
    return float(np.mean(list(values)))


def test_decisions_are_well_formed_and_consistent(router, trained):
    texts = trained.held_out[:60]
    batch = router.route_batch(texts)
    assert len(batch) == len(texts)
    for text, d in zip(texts, batch, strict=True):
        assert isinstance(d, Decision)
        assert d.model in router.models
        assert tuple(d.scores) == router.models and tuple(d.costs) == router.models
        assert all(0.0 <= s <= 1.0 for s in d.scores.values())
        assert all(c > 0 for c in d.costs.values())
        assert d.expected_cost == d.costs[d.model]
        assert d.willingness_to_pay == router.willingness_to_pay and d.empty is False
        one = router.route(text)
        assert isinstance(one, Decision) and one.model == d.model
        assert list(one.costs.values()) == pytest.approx(list(d.costs.values()), rel=1e-12)
        assert one.expected_cost == one.costs[one.model]
        assert list(one.scores.values()) == pytest.approx(list(d.scores.values()), abs=1e-6)
        json.dumps(d.to_dict())  # serialisable as is, whatever the knob


def test_zero_willingness_picks_the_cheapest_model(router, trained):
    for d in router.route_batch(trained.held_out[:100], willingness_to_pay=0):
        assert d.model == min(d.costs, key=d.costs.__getitem__)


def test_a_larger_knob_never_lowers_mean_quality_on_a_batch(router, trained):
    texts = trained.held_out[:200]
    knobs = [0.0, *np.geomspace(1e-7, 10.0, 25).tolist(), math.inf]
    quality, cost = [], []
    for w in knobs:
        decisions = router.route_batch(texts, willingness_to_pay=w)
        quality.append(_mean(d.scores[d.model] for d in decisions))
        cost.append(_mean(d.expected_cost for d in decisions))
    assert all(b >= a for a, b in zip(quality, quality[1:], strict=False)), quality
    assert all(b >= a for a, b in zip(cost, cost[1:], strict=False)), cost
    assert quality[-1] > quality[0] and cost[-1] > cost[0]  # the knob really moves the choice
    # at the top of the knob each prompt gets its best predicted model
    best = _mean(max(d.scores.values()) for d in router.route_batch(texts, willingness_to_pay=math.inf))
    assert quality[-1] == pytest.approx(best)
    with pytest.raises(ValueError, match="willingness_to_pay"):
        router.route("hello", willingness_to_pay=-1)


def test_calibrate_to_a_cost_budget_sets_the_default(trained):
    router = Router.load(trained.artifact)
    prompts = trained.held_out[:200]
    cheapest = _mean(d.expected_cost for d in router.route_batch(prompts, willingness_to_pay=0))
    dearest = _mean(d.expected_cost for d in router.route_batch(prompts, willingness_to_pay=math.inf))
    target = cheapest + 0.3 * (dearest - cheapest)
    knob = router.calibrate(prompts, target_cost_per_request=target)
    assert 0 < knob < math.inf and router.willingness_to_pay == knob
    decisions = router.route_batch(prompts)  # no knob given: the calibrated default
    assert all(d.willingness_to_pay == knob for d in decisions)
    spent = _mean(d.expected_cost for d in decisions)
    assert spent <= target
    assert spent > cheapest  # it spends the budget instead of always taking the cheapest model
    assert router.route(prompts[0]).willingness_to_pay == knob
    with pytest.raises(ValueError, match="exactly one"):
        router.calibrate(prompts)


def test_calibrate_to_an_unreachable_budget_says_so(trained):
    router = Router.load(trained.artifact)
    prompts = trained.held_out[:200]
    cheapest = _mean(d.expected_cost for d in router.route_batch(prompts, willingness_to_pay=0))
    with pytest.raises(ValueError, match="target_cost_per_request"):
        router.calibrate(prompts, target_cost_per_request=cheapest / 2)


def test_calibrate_to_a_share_of_the_dearest_model(trained):
    router = Router.load(trained.artifact)
    prompts = trained.held_out[:200]
    dearest = router.cost_model.models[int(np.argmax(router.cost_model.fixed_usd))]
    unbounded = np.mean([d.model == dearest for d in router.route_batch(prompts, willingness_to_pay=math.inf)])
    knob = router.calibrate(prompts, target_share=(dearest, 0.1))
    assert router.willingness_to_pay == knob
    share = np.mean([d.model == dearest for d in router.route_batch(prompts)])
    assert share <= 0.1
    if unbounded > 0.1:  # the constraint binds: the knob was lowered from the top
        assert knob < math.inf
    else:
        assert knob == math.inf


# --- 3. any str is valid input -----------------------------------------------------------------

EXPLICIT = ["", "   ", "\t\n\r ", "\x00\x01\x1f", "\ud800", "a\udfffb", "\U0001F600\U0001F680",
            "مرحبا بالعالم، كيف حالك؟", "你好，世界。请把这句话翻译成英文。", "שלום עולם", "x" * 1_000_000,
            "Explain quicksort. " * 60_000]


def test_explicit_odd_inputs_route(router):
    for text in EXPLICIT:
        d = router.route(text)
        assert isinstance(d, Decision) and d.model in router.models
        assert all(np.isfinite(list(d.scores.values())))
        assert d.expected_cost == d.costs[d.model]
    assert router.route("").empty is True and router.route("   ").empty is True
    assert router.route("\t\n\r ").empty is True
    assert router.route("What is the capital of France?").empty is False
    with pytest.raises(TypeError, match="str"):
        router.route(b"bytes are not text")
    with pytest.raises(TypeError, match="list of prompts"):
        router.predict("one string is not a batch")
    batch = router.route_batch(EXPLICIT)
    assert [d.model for d in batch] == [router.route(t).model for t in EXPLICIT]
    assert [d.empty for d in batch] == [router.route(t).empty for t in EXPLICIT]


def test_route_batch_refuses_a_single_string(router):
    with pytest.raises(TypeError, match="list of prompts"):
        router.route_batch("hello")


@settings(max_examples=100, deadline=None)
@given(text=st.text() | st.text(st.characters(exclude_categories=())))  # the second one has lone surrogates
@example(text="\ud800")
@example(text=" \u3000\u00a0\n")
def test_any_str_routes(router, text):
    d = router.route(text)
    assert isinstance(d, Decision) and d.model in router.models
    assert set(d.scores) == set(router.models)
    assert all(math.isfinite(s) for s in d.scores.values())
    assert d.expected_cost == d.costs[d.model]
    if not text.strip():
        assert d.empty is True


# --- 4. threads --------------------------------------------------------------------------------

def test_one_router_shared_by_eight_threads_decides_like_serial_use(router, trained):
    texts = trained.held_out[:400]
    assert len(texts) == 400
    serial = [router.route(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(router.route, texts))
        chunks = [texts[i:i + 25] for i in range(0, len(texts), 25)]
        batched = [d for part in pool.map(router.route_batch, chunks) for d in part]
    assert [(d.model, d.scores) for d in threaded] == [(d.model, d.scores) for d in serial]
    assert threaded == serial
    serial_batched = [d for chunk in chunks for d in router.route_batch(chunk)]
    assert [(d.model, d.scores) for d in batched] == [(d.model, d.scores) for d in serial_batched]
    assert len({d.model for d in serial}) > 1  # the comparison covers more than one route


# --- 5. corrupted artifacts --------------------------------------------------------------------

def _copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained.artifact, tmp_path / "artifact"))


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_the_clean_copy_loads(trained, tmp_path):
    # the corruption tests below copy the artifact the same way; an intact copy must load
    assert Router.load(_copy(trained, tmp_path)).models


def test_flipped_byte_in_the_graph_fails_the_checksum(trained, tmp_path):
    art = _copy(trained, tmp_path)
    _flip_byte(art / "router.onnx")
    with pytest.raises(ArtifactError, match="router.onnx: checksum mismatch"):
        Router.load(art)


def test_truncated_graph_fails_the_checksum(trained, tmp_path):
    art = _copy(trained, tmp_path)
    data = (art / "router.onnx").read_bytes()
    (art / "router.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="checksum mismatch.*truncated"):
        Router.load(art)


def test_corrupt_graph_with_a_matching_checksum_is_still_an_artifact_error(trained, tmp_path):
    """Even a re-signed broken graph (checksums recomputed) fails as ArtifactError, not as onnxruntime's own."""
    from router_ml.router import file_sha256 as _sha256

    art = _copy(trained, tmp_path)
    (art / "router.onnx").write_bytes((art / "router.onnx").read_bytes()[:200])
    _edit_manifest(art, lambda m: m["files"].update({"router.onnx": _sha256(art / "router.onnx")}))
    with pytest.raises(ArtifactError, match="cannot load the router"):
        Router.load(art)


def test_newer_format_version_is_refused(trained, tmp_path):
    art = _copy(trained, tmp_path)
    _edit_manifest(art, lambda m: m.update(format_version=2))
    with pytest.raises(ArtifactError, match="format version 2.*re-export"):
        Router.load(art)


def test_manifest_without_a_tokenizer_checksum_is_refused(trained, tmp_path):
    art = _copy(trained, tmp_path)
    _edit_manifest(art, lambda m: m["files"].pop("tokenizer.json"))
    with pytest.raises(ArtifactError, match="no checksum for tokenizer.json"):
        Router.load(art)


def test_manifest_that_is_not_json_is_refused(trained, tmp_path):
    art = _copy(trained, tmp_path)
    (art / "manifest.json").write_text('{"format": "router-ml-artifact", ')
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        Router.load(art)


def test_manifest_of_another_kind_is_refused(trained, tmp_path):
    art = _copy(trained, tmp_path)
    (art / "manifest.json").write_text(json.dumps(["router.onnx"]))
    with pytest.raises(ArtifactError, match="not a router-ml-artifact manifest"):
        Router.load(art)


def test_manifest_missing_a_field_is_refused(trained, tmp_path):
    art = _copy(trained, tmp_path)
    _edit_manifest(art, lambda m: m.pop("tokenizer"))
    with pytest.raises(ArtifactError, match="missing field 'tokenizer'"):
        Router.load(art)


def test_manifest_naming_fewer_models_than_the_graph_scores_is_refused(trained, tmp_path):
    art = _copy(trained, tmp_path)
    _edit_manifest(art, lambda m: m.update(models=m["models"][:-1]))
    with pytest.raises(ArtifactError, match="the graph scores 5 models but the manifest names 4"):
        Router.load(art)


def test_manifest_with_a_files_list_is_refused(trained, tmp_path):
    art = _copy(trained, tmp_path)
    _edit_manifest(art, lambda m: m.update(files=list(m["files"])))
    with pytest.raises(ArtifactError, match="files"):
        Router.load(art)


def test_missing_tokenizer_file_is_named(trained, tmp_path):
    art = _copy(trained, tmp_path)
    (art / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="missing tokenizer.json"):
        Router.load(art)


def test_directory_without_manifest_is_not_an_artifact(trained, tmp_path):
    art = _copy(trained, tmp_path)
    (art / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="not a router artifact.*no manifest.json"):
        Router.load(art)


def test_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-router"
    with pytest.raises(ArtifactError, match="no-such-router") as info:
        Router.load(missing)
    assert "manifest.json" in str(info.value)
    assert not missing.exists()


# --- 6. session options --------------------------------------------------------------------------

def test_session_options_and_thread_count(trained, router):
    texts = trained.held_out[:100]
    one_thread = Router.load(trained.artifact, intra_op_threads=1)
    options = ort.SessionOptions()
    explicit = Router.load(trained.artifact, session_options=options)
    np.testing.assert_array_equal(one_thread.predict(texts), explicit.predict(texts))
    np.testing.assert_array_equal(explicit.predict(texts), router.predict(texts))
    assert one_thread._session.get_session_options().intra_op_num_threads == 1
    manifest = json.loads((trained.checkpoint / "manifest.json").read_text())
    assert isinstance(one_thread.models, tuple) and one_thread.models == tuple(manifest["models"])
    assert explicit.models == router.models == one_thread.models


# --- 7. int8 --------------------------------------------------------------------------------------

def test_int8_export_keeps_routes_or_is_refused(trained, tmp_path_factory):
    parent = tmp_path_factory.mktemp("int8")
    out = parent / "artifact"
    try:
        report = export_router(trained.checkpoint, out, quantize="int8")
    except ExportError as exc:
        assert "int8 parity" in str(exc)
        assert not out.exists() and list(parent.iterdir()) == []  # nothing written, no staging left behind
        return
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"] == "int8"
    assert manifest["parity"]["int8_changed_routes"] <= 0.01
    assert manifest["parity"] == report
    int8 = Router.load(out)
    fp32 = Router.load(trained.artifact)
    texts = trained.held_out[:100]
    assert (out / "router.onnx").stat().st_size < (trained.artifact / "router.onnx").stat().st_size
    np.testing.assert_allclose(int8.predict(texts), fp32.predict(texts), atol=0.05)
    assert list(parent.iterdir()) == [out]


# --- 8. the exporter refuses without parity prompts ----------------------------------------------

def test_export_refuses_without_parity_prompts(trained, tmp_path):
    checkpoint = Path(shutil.copytree(trained.checkpoint, tmp_path / "checkpoint",
                                      ignore=shutil.ignore_patterns("artifact")))
    (checkpoint / "parity_prompts.json").unlink()
    parent = tmp_path / "exports"
    parent.mkdir()
    with pytest.raises(ExportError, match="parity"):
        export_router(checkpoint, parent / "artifact")
    with pytest.raises(ExportError, match="parity"):
        export_router(checkpoint, parent / "artifact", parity_texts=[])
    assert list(parent.iterdir()) == []


# --- 9. the exact fast WordPiece path (router_ml/_wordpiece.py) ----------------------------------

def _without_fast_path(router: Router) -> Router:
    clone = object.__new__(Router)
    clone.__dict__.update(router.__dict__)
    clone._fast = None
    return clone


MIXED = ["What is 2 + 2?", "naïve café", "Explain [UNK] tokens", "[PAD] padding", "a\x0bb\x00c\x7f", "", "   ",
         "\t\n", "Übersetze das bitte.", "x" * 300, "Prove that sqrt(2) is irrational!!", "你好 hello", "\ud800 x",
         "don't   stop\r\nbelieving", "#$%&*" * 20, "Explain quicksort. " * 2_000]


def test_the_static_router_uses_the_fast_path_and_decides_exactly_as_without_it(router, trained):
    assert router._fast is not None  # the distilled static tokenizer is the supported BERT pipeline
    slow = _without_fast_path(router)
    texts = MIXED + trained.held_out[:200]
    for text in texts:
        prepared = router.prepare_text(text)
        assert router._token_array(prepared).tolist() == slow._token_array(prepared).tolist()
        np.testing.assert_array_equal(router.encode(text)[0], slow.encode(text)[0])
    np.testing.assert_array_equal(router.predict(texts), slow.predict(texts))
    assert router.route_batch(texts) == slow.route_batch(texts)
    assert [router.route(t) for t in MIXED] == [slow.route(t) for t in MIXED]


def test_a_non_bert_tokenizer_falls_back_to_the_library(trained, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from router_ml.router import file_sha256 as _sha256

    art = _copy(trained, tmp_path)
    vocab = json.loads((art / "tokenizer.json").read_text())["model"]["vocab"]
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))  # same ids, another pipeline
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.save(str(art / "tokenizer.json"))
    _edit_manifest(art, lambda m: m["files"].update({"tokenizer.json": _sha256(art / "tokenizer.json")}))
    other = Router.load(art)
    assert other._fast is None
    prepared = [other.prepare_text(t) for t in MIXED]
    encoded = bpe.encode_batch(prepared, add_special_tokens=False)
    expected = [[i for i in e.ids if i not in other._drop] for e in encoded]
    assert [other._token_array(t).tolist() for t in prepared] == expected
    assert all(other.route(t).model in other.models for t in MIXED)


def test_route_is_route_batch_of_one_at_every_knob(router, trained):
    knobs = [0.0, 1e-6, 1e-4, 1e-3, 1e-2, 1.0, math.inf]
    for text in MIXED[:-1] + trained.held_out[:40]:
        for w in knobs:
            assert router.route(text, willingness_to_pay=w) == router.route_batch([text], willingness_to_pay=w)[0]


@settings(max_examples=300, deadline=None)
@given(scores=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.5000001, 1.0]), min_size=5, max_size=5),
       costs=st.lists(st.sampled_from([0.0, 1e-6, 2e-6, 1e-3, 1.0]), min_size=5, max_size=5),
       wtp=st.sampled_from([0.0, 1e-9, 1e-6, 1e-3, 1.0, 1e9, math.inf]))
def test_the_plain_python_policy_is_choose(scores, costs, wtp):
    from router_ml.policy import choose
    from router_ml.router import _choose_one

    expected = int(choose(np.array([scores], dtype=np.float32), np.array([costs]), wtp)[0])
    assert _choose_one([float(s) for s in np.array(scores, dtype=np.float32)], costs, wtp) == expected


def test_runtime_ids_are_the_training_featurizers_ids(router, trained):
    """Tokenizer, [UNK] dropping and head + tail truncation: the runtime feeds the graph exactly the ids
    the static featurizer pooled in training, for short, long (> max_tokens) and odd prompts."""
    from training.featurizers import get_featurizer

    featurizer = get_featurizer("static", max_tokens=256)
    long = " ".join(trained.held_out[:40])
    texts = MIXED + trained.held_out[:100] + [long, long + " \u2603 naïve", "zzzz" * 30 + " ok " * 300]
    expected = featurizer.token_ids(texts)
    assert max(map(len, expected)) == 256  # head + tail truncation is exercised
    for text, ids in zip(texts, expected, strict=True):
        got, mask = router.encode(text)
        assert (got.tolist() if mask.any() else []) == ids, text[:80]


def test_the_exported_pooling_matches_training_features_within_1e_5(router, trained):
    """StaticGraph pools with one MatMul (and no count division under L2 normalisation); the routed
    scores stay those of the training featurizer's float32 mean + the torch head."""
    from training.featurizers import get_featurizer
    from training.routers import TorchRouter

    texts = MIXED + trained.held_out[:200]
    X = get_featurizer("static", max_tokens=256).transform(texts)
    expected = TorchRouter.load(trained.checkpoint).predict((X,))
    np.testing.assert_allclose(router.predict(texts), expected, atol=1e-5, rtol=0)
