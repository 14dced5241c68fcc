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

from router_ml import ArtifactError, Decision, Router, RouterMLError
from training.export import ExportError, export_router

# tests that need a trained router are marked slow by conftest (they use the `trained` fixture)
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


def test_a_long_prompt_is_priced_on_its_whole_length_as_training_prices_it(router):
    """The router reads at most max_chars of a prompt, but the provider bills every token: the cost was once
    estimated on the clipped text, so a 200,000-character prompt looked like a 2,048-token one (22x too cheap)."""
    from router_ml.policy import estimate_input_tokens

    long = "Summarise the document below.\n" + "lorem ipsum dolor " * 11_000
    listed = str(["You are terse.", long])  # RouterBench's list form: the last string is the prompt
    assert len(long) > 20 * router._max_chars
    expected = router.cost_model.estimate(estimate_input_tokens([long]))[0]  # what train's scoring assumes
    np.testing.assert_allclose(router.costs([long, listed]), [expected, expected], rtol=1e-12)
    for text in (long, listed):
        one, batch = router.route(text), router.route_batch([text])[0]
        assert list(one.costs.values()) == pytest.approx(expected.tolist(), rel=1e-12)
        assert list(batch.costs.values()) == pytest.approx(expected.tolist(), rel=1e-12)
    short = router.costs(["Summarise the document below."])[0]
    assert (expected > short).all() and max(expected - short) > 100 * max(short - router.cost_model.fixed_usd)


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


def test_calibrate_returns_a_calibrated_copy_to_a_cost_budget(router, trained):
    prompts = trained.held_out[:200]
    default = router.willingness_to_pay
    before = router.route_batch(prompts)
    cheapest = _mean(d.expected_cost for d in router.route_batch(prompts, willingness_to_pay=0))
    dearest = _mean(d.expected_cost for d in router.route_batch(prompts, willingness_to_pay=math.inf))
    target = cheapest + 0.3 * (dearest - cheapest)
    calibrated = router.calibrate(prompts, target_cost_per_request=target)
    knob = calibrated.willingness_to_pay
    assert isinstance(calibrated, Router) and calibrated is not router
    assert 0 < knob < math.inf and knob != default
    # the shared router is untouched: its default and its decisions are those from before
    assert router.willingness_to_pay == default and router.route_batch(prompts) == before
    decisions = calibrated.route_batch(prompts)  # no knob given: the calibrated default
    assert all(d.willingness_to_pay == knob for d in decisions)
    spent = _mean(d.expected_cost for d in decisions)
    assert spent <= target
    assert spent > cheapest  # it spends the budget instead of always taking the cheapest model
    assert calibrated.route(prompts[0]).willingness_to_pay == knob
    with pytest.raises(ValueError, match="exactly one"):
        router.calibrate(prompts)


def test_calibrating_while_other_threads_route_does_not_change_their_decisions(router, trained):
    prompts = trained.held_out[:100]
    expected = router.route_batch(prompts)
    dearest = router.cost_model.models[int(np.argmax(router.cost_model.fixed_usd))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        routed = [pool.submit(router.route_batch, prompts) for _ in range(8)]
        knobs = [pool.submit(lambda s: router.calibrate(prompts, target_share=(dearest, s)).willingness_to_pay, s)
                 for s in (0.0, 0.05, 0.2)]
        assert all(f.result() == expected for f in routed)
        assert len({k.result() for k in knobs}) > 1  # the copies really differ
    assert router.route_batch(prompts) == expected


def test_calibrate_to_an_unreachable_budget_says_so(router, trained):
    prompts = trained.held_out[:200]
    cheapest = _mean(d.expected_cost for d in router.route_batch(prompts, willingness_to_pay=0))
    with pytest.raises(ValueError, match="target_cost_per_request"):
        router.calibrate(prompts, target_cost_per_request=cheapest / 2)


def test_calibrate_to_a_share_of_the_dearest_model(router, trained):
    prompts = trained.held_out[:200]
    dearest = router.cost_model.models[int(np.argmax(router.cost_model.fixed_usd))]
    unbounded = np.mean([d.model == dearest for d in router.route_batch(prompts, willingness_to_pay=math.inf)])
    calibrated = router.calibrate(prompts, target_share=(dearest, 0.1))
    knob = calibrated.willingness_to_pay
    share = np.mean([d.model == dearest for d in calibrated.route_batch(prompts)])
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
    with pytest.raises(ArtifactError, match="manifest.json: unreadable router artifact"):
        Router.load(art)


def test_a_file_of_the_artifact_given_for_the_artifact_is_named(trained, tmp_path):
    """Router.load(".../router.onnx") was '[Errno 20] Not a directory: .../router.onnx/manifest.json'."""
    art = _copy(trained, tmp_path)
    with pytest.raises(ArtifactError, match=r"router\.onnx: a file, not a router artifact directory; give the "
                                            r"directory that holds manifest\.json"):
        Router.load(art / "router.onnx")


def test_manifest_of_another_kind_is_refused(trained, tmp_path):
    art = _copy(trained, tmp_path)
    (art / "manifest.json").write_text(json.dumps(["router.onnx"]))
    with pytest.raises(ArtifactError, match="manifest.json: not a router artifact"):
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


def test_a_training_checkpoint_given_for_an_artifact_names_the_artifact_or_the_export(trained, tmp_path):
    with pytest.raises(ArtifactError, match="training checkpoint - its exported router is .*artifact"):
        Router.load(trained.checkpoint)  # `train --out models/demo` puts the artifact in models/demo/artifact
    bare = Path(shutil.copytree(trained.checkpoint, tmp_path / "ckpt", ignore=shutil.ignore_patterns("artifact")))
    with pytest.raises(ArtifactError, match=f"export it first: router-ml export --checkpoint {bare}"):
        Router.load(bare)


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


# --- 7. int8, and the parity sample that Router.load(verify=True) re-scores ----------------------

def _read_sample(directory: Path) -> dict:
    return json.loads((directory / "parity_sample.json").read_text(encoding="utf-8"))


def _rewrite_sample(directory: Path, edit) -> None:
    """Edit the stored parity sample and re-sign it in the manifest, as a consistent artifact would be."""
    from router_ml.router import file_sha256 as _sha256

    sample = _read_sample(directory)
    edit(sample)
    (directory / "parity_sample.json").write_text(json.dumps(sample), encoding="utf-8")
    digest = _sha256(directory / "parity_sample.json")
    _edit_manifest(directory, lambda m: m["files"].update({"parity_sample.json": digest}))


def test_the_artifact_stores_a_checksummed_parity_sample_with_the_exporting_cpu(router, trained):
    manifest = router.manifest
    kept = min(256, manifest["parity"]["prompts"])  # every parity prompt up to 256 (240 + 4 odd ones here)
    assert manifest["parity_sample"] == {"file": "parity_sample.json", "prompts": kept, "limit": 0.01}
    assert "parity_sample.json" in manifest["files"]
    sample = _read_sample(trained.artifact)
    assert len(sample["prompts"]) == kept and sample["changed_at_export"] == 0  # fp32: nothing changes
    cpu = sample["cpu"]
    assert cpu["machine"] and cpu["onnxruntime"] == ort.__version__ and cpu == manifest["parity"]["cpu"]
    assert set(cpu["flags"]) <= {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"}
    # the reference is the fp32 graph's own scores of the stored prompts
    np.testing.assert_allclose(router.predict(sample["prompts"]), sample["reference_scores"], atol=1e-6)
    assert Router.load(trained.artifact, verify=True).models == router.models


def test_verify_refuses_an_artifact_whose_routes_drift_from_the_stored_reference(trained, tmp_path):
    art = _copy(trained, tmp_path)
    # a reference under which the routes differ: every prompt's scores rolled by one model
    _rewrite_sample(art, lambda s: s.update(reference_scores=np.roll(s["reference_scores"], 1, axis=1).tolist()))
    assert Router.load(art).models  # verify=False (the default): nothing extra happens
    with pytest.raises(ArtifactError) as info:
        Router.load(art, verify=True)
    message = str(info.value)
    assert "the fp32 graph routes differently on this CPU" in message
    assert "stored parity prompts" in message and "past the limit of 1%" in message
    assert "This CPU: " in message and "exported on: " in message and "Re-export" in message
    changed = int(message.split("changed on ")[1].split(" of ")[0])
    assert changed > 0.01 * len(_read_sample(art)["prompts"])


def test_verify_allows_drift_up_to_the_limit(trained, tmp_path):
    art = _copy(trained, tmp_path)
    sample = _read_sample(art)
    from router_ml.policy import choose

    costs = Router.load(art).costs(sample["prompts"])
    wtp = math.inf if sample["willingness_to_pay"] is None else sample["willingness_to_pay"]
    routes = choose(np.array(sample["reference_scores"]), costs, wtp)

    def move(n):  # make the reference pick another model on the first n prompts
        def edit(s):
            ref = np.array(s["reference_scores"])
            ref[np.arange(n), (routes[:n] + 1) % ref.shape[1]] = 1e6  # outweighs any cost at this knob
            assert (choose(ref, costs, wtp) != routes).sum() == n
            s["reference_scores"] = ref.tolist()
        return edit

    n = len(routes)
    allowed = int(0.01 * n)
    assert allowed >= 1
    _rewrite_sample(art, move(allowed))  # at the limit: 2 of 244 = 0.8% <= 1%
    assert Router.load(art, verify=True).models
    _rewrite_sample(art, move(allowed + 1))  # past it: 3 of 244 = 1.2% > 1%
    with pytest.raises(ArtifactError, match=rf"changed on {allowed + 1} of {n} stored parity prompts"):
        Router.load(art, verify=True)


def test_a_sample_changed_without_its_checksum_is_refused(trained, tmp_path):
    art = _copy(trained, tmp_path)
    sample = _read_sample(art)
    sample["reference_scores"][0][0] += 0.5
    (art / "parity_sample.json").write_text(json.dumps(sample), encoding="utf-8")
    with pytest.raises(ArtifactError, match="parity_sample.json: checksum mismatch"):
        Router.load(art)


def test_an_int8_artifact_without_a_sample_cannot_be_verified(trained, tmp_path):
    art = _copy(trained, tmp_path)
    (art / "parity_sample.json").unlink()

    def drop(m):
        m.pop("parity_sample")
        m["files"].pop("parity_sample.json")
    _edit_manifest(art, drop)
    assert Router.load(art, verify=True).models  # fp32 without a sample: nothing to re-check
    _edit_manifest(art, lambda m: m.update(quantization="int8"))
    assert Router.load(art).models
    with pytest.raises(ArtifactError, match="int8 artifact has no parity sample.*re-export it"):
        Router.load(art, verify=True)


def test_a_sample_the_checksums_do_not_cover_is_refused_by_verify(trained, tmp_path):
    art = _copy(trained, tmp_path)
    _edit_manifest(art, lambda m: m["files"].pop("parity_sample.json"))
    with pytest.raises(ArtifactError, match="checksums do not cover"):
        Router.load(art, verify=True)


def test_the_sample_keeps_the_full_checks_share_of_changed_routes():
    from training.export import _sample

    changed = np.zeros(1004, dtype=bool)
    changed[np.random.default_rng(1).choice(1004, 9, replace=False)] = True  # 0.9%, as the encoder_fast export
    pick = _sample(changed)
    assert len(pick) == len(set(pick.tolist())) == 256 and changed[pick].sum() == 2  # floor(9 * 256 / 1004)
    assert changed[pick].mean() <= 0.01
    np.testing.assert_array_equal(pick, _sample(changed))  # seeded: the same prompts every export
    assert _sample(changed[:100]).tolist() == list(range(100))


def test_int8_export_keeps_routes(trained, tmp_path_factory):
    # 7-bit weights make the int8 products exact on every CPU kernel, so this export passes (or fails)
    # the same way everywhere: the seeded demo router passes, and this test says so (the refusal path is
    # tested with a failing export below)
    parent = tmp_path_factory.mktemp("int8")
    out = parent / "artifact"
    report = export_router(trained.checkpoint, out, quantize="int8")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"] == "int8"
    assert manifest["parity"]["int8_changed_routes"] <= 0.01
    assert manifest["parity"]["int8_weights"] == {"per_channel": True, "weight_type": "QInt8", "reduce_range": True}
    assert manifest["parity"] == report and report["cpu"]["onnxruntime"] == ort.__version__
    int8 = Router.load(out, verify=True)
    fp32 = Router.load(trained.artifact)
    texts = trained.held_out[:100]
    assert (out / "router.onnx").stat().st_size < (trained.artifact / "router.onnx").stat().st_size
    np.testing.assert_allclose(int8.predict(texts), fp32.predict(texts), atol=0.05)
    from router_ml.parity import scores_one_by_one

    sample = _read_sample(out)  # the int8 graph's own scores where it was exported, beside the fp32 reference
    np.testing.assert_allclose(scores_one_by_one(int8, sample["prompts"]), sample["exported_scores"], atol=1e-6)
    # one prompt per call, as route() runs it: the stored scores are route()'s
    assert [int8.route(t).scores for t in sample["prompts"][:20]] == [
        dict(zip(int8.models, row, strict=True)) for row in scores_one_by_one(int8, sample["prompts"][:20]).tolist()]
    assert list(parent.iterdir()) == [out]


# --- 8. the exporter refuses without parity prompts, and never leaves a broken artifact ----------

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


def test_a_checkpoint_whose_files_disagree_is_refused_by_export_and_evaluate(trained, tmp_path):
    """Models reordered in manifest.json once exported a router that priced each model as another; weights of
    another checkpoint were a torch size-mismatch traceback."""
    from router_ml.errors import RouterMLError
    from training.pipeline import evaluate_router

    from .conftest import DEMO

    checkpoint = Path(shutil.copytree(trained.checkpoint, tmp_path / "checkpoint",
                                      ignore=shutil.ignore_patterns("artifact")))
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    (checkpoint / "manifest.json").write_text(json.dumps({**manifest, "models": manifest["models"][::-1]}))
    for call in (lambda: export_router(checkpoint, tmp_path / "artifact"),
                 lambda: evaluate_router(checkpoint, DEMO, n_boot=0, progress=False)):
        with pytest.raises(RouterMLError, match=r"checkpoint: its files disagree on the models - manifest.json "
                                                r"\['frontier-xl'.*cost_model.json \['tiny-1b'"):
            call()
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    weights = checkpoint / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(RouterMLError, match=r"weights.safetensors: does not fit the module router.json describes"):
        export_router(checkpoint, tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists()


def _fingerprint(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_failed_export_leaves_the_previous_artifact_in_place(trained, tmp_path):
    out = _copy(trained, tmp_path)
    before = _fingerprint(out)
    checkpoint = Path(shutil.copytree(trained.checkpoint, tmp_path / "checkpoint"))
    (checkpoint / "metrics.json").write_text("{", encoding="utf-8")  # fails after the graph is staged
    with pytest.raises(RouterMLError, match="metrics.json"):
        export_router(checkpoint, out, parity_texts=trained.held_out[:20])
    assert _fingerprint(out) == before and Router.load(out, verify=True).models
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact", "checkpoint"]  # no staging left


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "portable"])
def test_export_over_an_artifact_swaps_the_new_one_in(trained, tmp_path, monkeypatch, exchange):
    import training.export as export

    if not exchange:  # the two-rename path of platforms without an atomic directory exchange
        monkeypatch.setattr(export, "_exchange", lambda a, b: False)
    out = _copy(trained, tmp_path)
    _edit_manifest(out, lambda m: m["policy"].update(willingness_to_pay=123.0))  # mark the old one
    report = export_router(trained.checkpoint, out, parity_texts=trained.held_out[:40])
    assert report["prompts"] == 44 and Router.load(out, verify=True).willingness_to_pay != 123.0
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # the old one and the staging are gone


def test_export_refuses_to_replace_a_directory_that_is_not_an_artifact(trained, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an exported router artifact"):
        export_router(trained.checkpoint, out, parity_texts=trained.held_out[:20])
    assert (out / "keep.txt").read_text() == "mine"
    # a checkpoint holds a manifest.json too: neither its own nor another one is replaced by an artifact
    checkpoint = Path(shutil.copytree(trained.checkpoint, tmp_path / "checkpoint",
                                      ignore=shutil.ignore_patterns("artifact")))
    other = Path(shutil.copytree(checkpoint, tmp_path / "other"))
    before = {d: _fingerprint(d) for d in (checkpoint, other)}
    for target, named in ((checkpoint, "is the checkpoint"), (tmp_path, "is the checkpoint"),
                          (other, "'router-ml-checkpoint/1', not 'router-ml-artifact'")):
        with pytest.raises(ExportError, match=named):
            export_router(checkpoint, target, parity_texts=trained.held_out[:20])
    assert {d: _fingerprint(d) for d in (checkpoint, other)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "notes", "other"]  # no staging left


KILLED = """
import sys
from training.export import export_router
export_router(sys.argv[1], sys.argv[2], parity_texts=None)
"""


def test_an_export_killed_midway_leaves_the_previous_artifact_loadable(trained, tmp_path):
    import os
    import signal
    import time

    out = _copy(trained, tmp_path)
    before = _fingerprint(out)
    root = Path(__file__).resolve().parents[1]
    with subprocess.Popen([sys.executable, "-c", KILLED, str(trained.checkpoint), str(out)], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".artifact.export-") for p in tmp_path.iterdir()):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the export never started staging"
            time.sleep(0.01)
        time.sleep(0.2)  # inside the build: the staged graph and manifest are being written
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _fingerprint(out) == before  # killed before the swap: the old artifact, untouched
    assert Router.load(out, verify=True).models


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
    # RouterBench's str(list) cells (one nested in another), read as their last string by both
    texts += [str(["Be brief.", trained.held_out[0]]), str([str(["x", trained.held_out[1]])]), "[not a list]"]
    expected = featurizer.token_ids(texts)
    assert max(map(len, expected)) == 256  # head + tail truncation is exercised
    for text, ids in zip(texts, expected, strict=True):
        got, mask = router.encode(text)
        assert (got.tolist() if mask.any() else []) == ids, text[:80]
    assert expected[-3:-1] == featurizer.token_ids(trained.held_out[:2])  # the cells' texts, not their brackets


def test_the_exported_pooling_matches_training_features_within_1e_5(router, trained):
    """StaticGraph pools with one MatMul (and no count division under L2 normalisation); the routed
    scores stay those of the training featurizer's float32 mean + the torch head."""
    from training.featurizers import get_featurizer
    from training.routers import TorchRouter

    texts = MIXED + trained.held_out[:200]
    X = get_featurizer("static", max_tokens=256).transform(texts)
    expected = TorchRouter.load(trained.checkpoint).predict((X,))
    np.testing.assert_allclose(router.predict(texts), expected, atol=1e-5, rtol=0)


# --- exploration with recorded propensities -------------------------------------------------------

def _frequencies_match(draws, probs, n) -> None:
    """Each model's share of ``n`` draws is within 4 standard errors of its stated probability; a model
    of probability 0 is never drawn."""
    counts = np.bincount([j for j, _ in draws], minlength=len(probs))
    for j, p in enumerate(probs):
        if p == 0:
            assert counts[j] == 0, (j, counts)
        else:
            assert abs(counts[j] / n - p) <= 4 * math.sqrt(p * (1 - p) / n) + 1e-12, (j, counts[j] / n, p)
    for j, p in draws:
        assert p == pytest.approx(probs[j], rel=1e-12)  # the recorded propensity is the stated probability


def _grid_choices(scores, costs, eligible):
    """How often each model is the greedy choice among ``eligible`` on the knob grid a ``curve``
    exploration draws from, counted knob by knob with the runtime's own ``choose``."""
    from router_ml.exploration import CURVE_POINTS
    from router_ml.policy import choose, knob_grid

    sub = np.array(sorted(eligible))
    positive = [costs[i] for i in sub if costs[i] > 0]
    grid = knob_grid([min(positive), max(positive)], CURVE_POINTS) if positive else [0.0] + [1.0] * (CURVE_POINTS - 1)
    counts = np.zeros(len(costs))
    for wtp in grid:
        counts[sub[choose(np.array([scores])[:, sub], np.array([costs])[:, sub], wtp)[0]]] += 1
    return counts


@pytest.mark.parametrize("kind", ["epsilon", "softmax", "curve"])
def test_explored_choices_follow_the_stated_propensities_and_honour_cap_and_exclusions(kind):
    from router_ml.exploration import CURVE_POINTS, Exploration, Explorer

    models = ("a", "b", "c", "d", "e")
    utility, costs, greedy = [0.9, 0.7, 0.85, 0.8, 0.2], [0.001, 0.0001, 0.002, 0.05, 0.0003], 0
    scores = utility  # curve reads the predicted qualities (here the utilities themselves)
    # "d" is over the cap, "e" excluded; "a" (greedy) is over the cap too but always allowed
    explorer = Explorer(Exploration(kind, rate=0.3, seed=11, max_cost_usd=0.0025, exclude=("e",), temperature=0.1,
                                    uniform_share=0.4), models)
    probs = explorer.probabilities(utility, costs, greedy, scores)
    assert probs[3] == probs[4] == 0 and sum(probs) == pytest.approx(1.0, abs=1e-12)
    if kind == "epsilon":
        assert probs == pytest.approx([0.7 + 0.1, 0.1, 0.1, 0, 0])
    elif kind == "softmax":
        w = [math.exp((u - 0.9) / 0.1) for u in utility[:3]]
        assert probs[:3] == pytest.approx([0.7 + 0.3 * w[0] / sum(w), 0.3 * w[1] / sum(w), 0.3 * w[2] / sum(w)])
    else:  # b (cheapest) and a (best) share the knobs; c costs more than a and is worse: uniform share only
        shares = _grid_choices(scores, costs, [0, 1, 2]) / CURVE_POINTS
        assert shares[0] > 0.3 and shares[1] > 0.3 and shares[2] == 0 and shares.sum() == pytest.approx(1.0)
        assert probs[:3] == pytest.approx([0.7 + 0.3 * (0.4 / 3 + 0.6 * shares[0]), 0.3 * (0.4 / 3 + 0.6 * shares[1]),
                                           0.3 * 0.4 / 3])
    n = 20_000
    _frequencies_match([explorer.draw(utility, costs, greedy, scores) for _ in range(n)], probs, n)
    # an excluded or over-cap greedy choice is still allowed, and drawn as often as stated
    for spec in (Exploration(kind, rate=0.6, seed=1, exclude=("a", "c")),
                 Exploration(kind, rate=0.6, seed=2, max_cost_usd=0.0005)):
        explorer = Explorer(spec, models)
        probs = explorer.probabilities(utility, costs, greedy, scores)
        assert probs[greedy] > 0.4 and probs[2] == 0 and sum(probs) == pytest.approx(1.0, abs=1e-12)
        _frequencies_match([explorer.draw(utility, costs, greedy, scores) for _ in range(n)], probs, n)


def test_curve_exploration_draws_the_choice_of_a_random_knob_exactly():
    """Each model's share of a curve exploration equals how often ``choose`` picks it on the knob grid,
    on random prompts with ties in quality and cost, free models and models a cap or exclusion removes."""
    from router_ml.exploration import CURVE_POINTS, Exploration, Explorer

    rng = np.random.default_rng(5)
    for case in range(400):
        k = int(rng.integers(1, 30))
        scores = rng.uniform(0, 1, k).round(int(rng.integers(1, 4))).tolist()  # rounded: ties
        costs = (10 ** rng.uniform(-6, -2, k)).tolist()
        if case % 5 == 0:
            costs[0] = 0.0
        if case % 7 == 0 and k > 1:
            costs[1] = costs[0]
        if case % 13 == 0:
            costs = [0.0] * k
        names = [f"m{i}" for i in range(k)]
        exclude = tuple(names[1:k // 3])
        cap = None if case % 2 else float(np.quantile(costs, 0.8))
        greedy = int(rng.integers(k))
        explorer = Explorer(Exploration("curve", rate=1.0, uniform_share=0.0, exclude=exclude, max_cost_usd=cap),
                            names)
        eligible = explorer.eligible(costs, greedy)
        expected = _grid_choices(scores, costs, eligible)
        assert np.array(explorer.curve_shares(scores, costs, greedy)) * CURVE_POINTS == pytest.approx(expected), case
        assert sum(explorer.probabilities(scores, costs, greedy, scores)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scores"):
        Explorer(Exploration("curve"), ["a", "b"]).draw([0.5, 0.6], [0.1, 0.2], 1)


@pytest.mark.parametrize(("field", "value"), [("kind", "thompson"), ("rate", 1.5), ("rate", -0.1), ("seed", 1.5),
                                              ("max_cost_usd", -1.0), ("exclude", "tiny-1b"), ("temperature", 0.0),
                                              ("uniform_share", 1.5), ("uniform_share", True)])
def test_exploration_settings_are_validated_naming_the_field(field, value):
    from router_ml.exploration import Exploration

    with pytest.raises(ValueError, match=field):
        Exploration(**{field: value})


def test_exploration_settings_round_trip_and_unknown_models_are_refused(router):
    from router_ml.exploration import Exploration

    e = Exploration("curve", rate=0.2, seed=5, max_cost_usd=0.01, exclude=("frontier-xl",), temperature=0.05,
                    uniform_share=0.5)
    assert Exploration.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    with pytest.raises(ValueError, match="stars"):
        Exploration.from_dict({**e.to_dict(), "stars": 1})
    with pytest.raises(ValueError, match="gpt-9"):
        router.with_exploration(Exploration(exclude=("gpt-9",)))


def test_numpy_numbers_are_settings_like_python_ones_and_exclude_may_be_none_or_a_generator(router):
    """np.float32(0.1) was "not a number in [0, 1]", np.int64(7) "not an integer", exclude=None a TypeError."""
    from router_ml.exploration import Exploration

    e = Exploration(rate=np.float32(0.25), seed=np.int64(7), max_cost_usd=np.float64(1.0), exclude=None)
    assert (type(e.rate), type(e.seed), e.exclude) == (float, int, ())
    assert e == Exploration.from_dict(json.loads(json.dumps(e.to_dict())))  # JSON-ready, as the log needs
    assert Exploration(exclude=(m for m in ["frontier-xl"])).exclude == ("frontier-xl",)  # read once, kept
    seeded = router.with_exploration(e)  # draws as the same settings in Python numbers do
    plain = router.with_exploration(Exploration(rate=float(np.float32(0.25)), seed=7, max_cost_usd=1.0))
    draws = [seeded.route("hi") for _ in range(40)]
    assert draws == [plain.route("hi") for _ in range(40)] and any(d.explored for d in draws)


def test_the_knob_and_calibration_targets_must_be_numbers(router, trained):
    """True routed with a knob of 1.0, "abc" failed in float(), and a NaN target gave a knob that sent every
    prompt to the cheapest model."""
    assert router.route("hi", willingness_to_pay=np.float32(0.5)) == router.route("hi", willingness_to_pay=0.5)
    for bad in (True, "abc", [1.0]):
        with pytest.raises(TypeError, match="willingness_to_pay must be a number >= 0"):
            router.route("hi", willingness_to_pay=bad)
        with pytest.raises(TypeError, match="willingness_to_pay must be a number >= 0"):
            router.route_batch(["hi"], willingness_to_pay=bad)
    prompts = trained.held_out[:20]
    for target in (float("nan"), float("inf"), -1.0, "0.01"):
        with pytest.raises(ValueError, match="target_cost_per_request must be a finite number >= 0 USD"):
            router.calibrate(prompts, target_cost_per_request=target)
    for share in (float("nan"), 1.5):
        with pytest.raises(ValueError, match=r"target_share's share must be a finite number in \[0, 1\]"):
            router.calibrate(prompts, target_share=(router.models[-1], share))
    with pytest.raises(TypeError, match="target_share must be \\(model, share\\)"):
        router.calibrate(prompts, target_share=router.models[-1])


@pytest.mark.parametrize(("texts", "message"), [("hello", "takes a list of prompts; use route"),
                                                (b"abc", "takes a list of prompts; use route"),
                                                (None, "takes a list of prompts, not NoneType"),
                                                ([None], "prompt 0 must be str, not NoneType")])
def test_a_batch_that_is_not_a_list_of_prompts_is_refused(router, texts, message):
    """costs("hello") once priced each character as a prompt; route_batch(b"abc") said "prompt 0 must be str,
    not int"."""
    for method in (router.costs, router.route_batch, router.predict):
        with pytest.raises(TypeError, match=message):
            method(texts)
    assert router.costs(t for t in ["a", "bb"]).shape == (2, len(router.models))  # any iterable of prompts


@pytest.mark.parametrize(("kwargs", "message"), [({"intra_op_threads": "2"}, "intra_op_threads must be a whole number"),
                                               ({"intra_op_threads": -1}, "intra_op_threads must be a whole number"),
                                               ({"session_options": {}}, "session_options must be an onnxruntime"),
                                               ({"providers": "CPUExecutionProvider"}, "providers must be a list")])
def test_session_options_of_the_wrong_kind_are_the_callers_error_not_the_artifacts(router, trained, kwargs,
                                                                                     message):
    """They were an ArtifactError "cannot load the router", and a string of providers was split into letters."""
    with pytest.raises(TypeError, match=message):
        Router.load(trained.artifact, **kwargs)
    assert Router.load(trained.artifact, intra_op_threads=1, providers=["CPUExecutionProvider"],
                       session_options=ort.SessionOptions()).route("hi") == router.route("hi")
    # what onnxruntime itself takes stays accepted: (name, options) pairs, numpy's whole numbers
    assert Router.load(trained.artifact, intra_op_threads=np.int64(1),
                       providers=[("CPUExecutionProvider", {})]).route("hi") == router.route("hi")


def test_exploration_off_is_todays_router_with_propensity_one(router, trained):
    from router_ml.exploration import Exploration

    texts = trained.held_out[:200]
    plain = [router.route(t) for t in texts]
    assert router.exploration is None
    assert all(d.propensity == 1.0 and d.explored is False for d in plain + router.route_batch(texts))
    off = router.with_exploration(Exploration(rate=0.0, seed=1))  # rate 0: the greedy choice, propensity 1
    assert [d.model for d in off.route_batch(texts)] == [d.model for d in plain]
    assert {d.propensity for d in off.route_batch(texts)} == {1.0}
    assert router.with_exploration(None).route(texts[0]) == plain[0]


def test_seeded_exploration_reproduces_and_leaves_the_shared_router_alone(router, trained):
    from router_ml.exploration import Exploration

    texts = trained.held_out[:300]
    before = [router.route(t) for t in texts]
    spec = Exploration("epsilon", rate=0.5, seed=42, exclude=("frontier-xl",))
    first = router.with_exploration(spec)
    one = [first.route(t) for t in texts]
    assert [router.with_exploration(spec).route(t) for t in texts[:1]] == one[:1]  # a copy restarts from the seed
    # route_batch draws in prompt order, as route() does prompt by prompt
    batch = Router.load(trained.artifact, exploration=spec).route_batch(texts)
    assert [(d.model, d.propensity, d.explored) for d in batch] == [(d.model, d.propensity, d.explored) for d in one]
    assert [router.route(t) for t in texts] == before and router.exploration is None
    explored = [d for d in one if d.explored]
    assert 0.2 * len(texts) < len(explored) < 0.5 * len(texts)
    k = len(router.models) - 1  # frontier-xl excluded (unless it is the greedy choice)
    for d, greedy in zip(one, before, strict=True):
        assert d.explored == (d.model != greedy.model)
        if d.model != "frontier-xl" or greedy.model == "frontier-xl":
            kk = k + (greedy.model == "frontier-xl")
            assert d.propensity == pytest.approx(0.5 / kk + (0.5 if not d.explored else 0.0))
        else:
            pytest.fail("an excluded model was explored")
    assert json.dumps(one[0].to_dict())
    assert one[0].to_dict()["propensity"] == one[0].propensity
    record = first.policy_record(0.1)
    assert record["artifact_sha256"] == router.manifest["files"]["router.onnx"]
    assert record["exploration"] == spec.to_dict() and record["willingness_to_pay"] == 0.1
    assert list(record["prices"]) == list(router.models)


def test_curve_exploring_router_logs_the_propensity_of_its_knob_draws(router, trained):
    from router_ml.exploration import Exploration, Explorer

    texts = trained.held_out[:300]
    spec = Exploration("curve", rate=0.5, seed=9, uniform_share=0.2)
    one = [router.with_exploration(spec).route(t) for t in texts]
    assert [(d.model, d.propensity) for d in one[:1]] == [(d.model, d.propensity) for d in
                                                          [router.with_exploration(spec).route(texts[0])]]
    seq = router.with_exploration(spec)
    one = [seq.route(t) for t in texts]
    batch = Router.load(trained.artifact, exploration=spec).route_batch(texts)
    assert [(d.model, d.propensity, d.explored) for d in batch] == [(d.model, d.propensity, d.explored) for d in one]
    check = Explorer(spec, router.models)
    greedy = [d.model for d in router.route_batch(texts)]
    for d, g in zip(one, greedy, strict=True):
        scores, costs = [d.scores[m] for m in router.models], [d.costs[m] for m in router.models]
        utility = [q - c / d.willingness_to_pay for q, c in zip(scores, costs, strict=True)]
        probs = check.probabilities(utility, costs, router.models.index(g), scores)
        assert d.propensity == pytest.approx(probs[router.models.index(d.model)], rel=1e-9)
        assert d.explored == (d.model != g)
    explored = {d.model for d in one if d.explored}
    assert len(explored) >= 2 and 0.1 * len(texts) < sum(d.explored for d in one) < 0.5 * len(texts)


def test_a_shared_exploring_router_is_thread_safe(router, trained):
    from router_ml.exploration import Exploration

    explorer = router.with_exploration(Exploration("softmax", rate=0.5, seed=3, temperature=0.05))
    texts = trained.held_out[:400]
    greedy = {t: router.route(t).model for t in texts}
    with ThreadPoolExecutor(max_workers=8) as pool:
        decisions = list(pool.map(explorer.route, texts))
    assert all(0 < d.propensity <= 1 and d.explored == (d.model != greedy[t]) for t, d in zip(texts, decisions,
                                                                                             strict=True))
    assert any(d.explored for d in decisions)


def test_route_cli_explores_with_the_flags_and_names_a_bad_one(router, trained, tmp_path):
    cli = [sys.executable, "-m", "router_ml.cli", "route", "--artifact", str(trained.artifact)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in trained.held_out[:50]))
    out = subprocess.run([*cli, "--input", str(prompts), "--explore-rate", "1", "--explore-seed", "3",
                          "--explore-exclude", "tiny-1b"], capture_output=True, text=True, timeout=120)
    decisions = [json.loads(x) for x in out.stdout.splitlines()]
    assert out.returncode == 0 and len(decisions) == 50, out.stderr
    greedy = [d.model for d in router.route_batch(trained.held_out[:50])]
    assert any(d["explored"] for d in decisions)
    for d, g in zip(decisions, greedy, strict=True):
        assert d["explored"] == (d["model"] != g) and (d["model"] != "tiny-1b" or g == "tiny-1b")
        assert d["propensity"] == pytest.approx(1 / (len(router.models) - (g != "tiny-1b")))
    out = subprocess.run([*cli, "--input", str(prompts), "--explore-rate", "1", "--explore-seed", "3",
                          "--explore-policy", "curve", "--explore-uniform-share", "0.5"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from router_ml.exploration import Exploration, Explorer

    check = Explorer(Exploration("curve", rate=1.0, uniform_share=0.5), router.models)
    for line, g in zip(out.stdout.splitlines(), greedy, strict=True):
        d = json.loads(line)
        scores, costs = [d["scores"][m] for m in router.models], [d["costs"][m] for m in router.models]
        probs = check.probabilities(scores, costs, router.models.index(g), scores)
        assert d["propensity"] == pytest.approx(probs[router.models.index(d["model"])], rel=1e-9)
    # prompts on standard input (`--input -`), and a missing file named without a traceback
    out = subprocess.run([*cli, "--input", "-"], input=prompts.read_text(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and [json.loads(x)["model"] for x in out.stdout.splitlines()] == greedy, out.stderr
    with_bom = tmp_path / "bom.jsonl"  # as some editors save it
    with_bom.write_text(prompts.read_text(), encoding="utf-8-sig")
    out = subprocess.run([*cli, "--input", str(with_bom)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and [json.loads(x)["model"] for x in out.stdout.splitlines()] == greedy, out.stderr
    out = subprocess.run([*cli, "--input", str(tmp_path / "missing.jsonl")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"cannot read the prompts file (--input) {tmp_path / 'missing.jsonl'}: No such file" in out.stderr
    out = subprocess.run(cli, capture_output=True, text=True, timeout=120)  # neither a prompt nor --input
    assert out.returncode == 2 and 'give a prompt to route ("...") or --input FILE.jsonl' in out.stderr, out.stderr
    out = subprocess.run([*cli, "hi", "--input", str(prompts)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "give one prompt or --input FILE, not both" in out.stderr, out.stderr
    for flags, named in ((["--explore-rate", "2"], "--explore-rate"),
                         (["--explore-rate", "0.1", "--explore-uniform-share", "2"], "--explore-uniform-share"),
                         (["--explore-rate", "0.1", "--explore-exclude", "gpt-9"], "--explore-exclude"),
                         (["--explore-seed", "1"], "--explore-rate")):
        out = subprocess.run([*cli, "hi", *flags], capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and named in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_bench_runtime_refuses_what_it_cannot_time_before_timing_anything(trained, tmp_path):
    """A checkpoint or a missing directory was a traceback, and a bad number ran minutes of timing first."""
    def bench(*args):
        script = Path(__file__).parents[1] / "scripts" / "bench_runtime.py"
        return subprocess.run([sys.executable, str(script), *map(str, args)],
                              capture_output=True, text=True, timeout=120)

    out = bench("--router", trained.checkpoint)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "this is a training checkpoint - its exported router is" in out.stderr
    out = bench("--router", tmp_path / "missing")
    assert out.returncode == 2 and "no manifest.json" in out.stderr, out.stderr
    out = bench("--router", trained.artifact, "--compare-tokens", "0", "--compare-only")
    assert out.returncode == 2 and "--compare-tokens >= 1" in out.stderr, out.stderr
