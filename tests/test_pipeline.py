"""End to end: `router-ml train` / `evaluate` on real files, real featurizers and a real MLflow store."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data import Preference, Record, load_traffic, write_jsonl

from .conftest import DEMO, ROOT, demo_head, strict_json

pytestmark = pytest.mark.slow
FAST = ["--set", "train.epochs=25", "--set", "eval.n_boot=20", "--set", "eval.knob_points=41"]
#: the MLP the mechanics tests train (without --config the CLI trains the self-selecting auto.toml)
MLP_STATIC = ROOT / "training/configs/mlp_static.toml"


def cli(*args, cwd, env=None, timeout=900):
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", *map(str, args)], capture_output=True, text=True,
                         cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return strict_json(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def demo_subset(tmp_path_factory):
    return demo_head(tmp_path_factory, 1600)


def test_train_on_demo_beats_baselines_and_logs_to_mlflow(tmp_path, demo_subset):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = cli("train", "--config", ROOT / "training/configs/mlp_static.toml", "--data", demo_subset,
                  "--out", tmp_path / "router", "--register", "demo-router", *FAST, cwd=tmp_path,
                  env={"MLFLOW_TRACKING_URI": uri})
    assert summary["registered"] == "models:/demo-router/1"
    assert {"run_id", "router", "train_records", "test_records", "test"} <= set(summary)
    assert summary["router"] == "mlp" and summary["tracking_error"] is None
    assert summary["train_records"] + summary["val_records"] == 1120 and summary["test_records"] == 480
    test = summary["test"]
    base = test["baselines"]
    assert set(base) == {"random", "best-single", "knn", "logreg", "oracle"}
    assert test["aiq"] > base["random"]["aiq"] and test["aiq"] > base["best-single"]["aiq"]
    assert test["aiq"] < base["oracle"]["aiq"]
    low, high = test["ci95"]["aiq"]
    assert low <= test["aiq"] <= high
    assert set(test["vs_baselines"]) == {"knn", "logreg"}  # the trained baselines, paired on the same prompts
    for name, diff in test["vs_baselines"].items():
        assert diff["aiq"] == pytest.approx(test["aiq"] - base[name]["aiq"])
        low, high = diff["ci95"]["aiq"]
        assert low <= diff["aiq"] <= high
    for name in ("weights.safetensors", "router.json", "manifest.json", "metrics.json", "curve.png", "split.json"):
        assert (tmp_path / "router" / name).exists(), name
    # a router without held-out predictions of its own: the default knob is chosen on the test split
    assert summary["default_knob_prompts"] == {"test_prompts": summary["test_scored"]}
    assert "knob_curve" not in json.loads((tmp_path / "router" / "metrics.json").read_text())
    # the saved predictions re-score to the reported curve: the top of the knob picks argmax quality_hat
    table, _ = load_traffic(demo_subset)
    rows = [json.loads(line) for line in (tmp_path / "router" / "test_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 480
    chosen = [int(np.argmax(np.array(r["quality_hat"]) - 1e-9 * np.array(r["cost_hat"]) / max(r["cost_hat"])))
              for r in rows]
    top = np.mean([table.quality[r["row"], j] for r, j in zip(rows, chosen, strict=True)])
    curve = json.loads((tmp_path / "router" / "metrics.json").read_text())["curve"]
    assert top == pytest.approx(curve["quality"][-1])

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(summary["run_id"])
    assert run.data.params["router.kind"] == "mlp"
    assert run.data.params["data_fingerprint"] == summary["data_fingerprint"]
    assert "data.fingerprint" not in run.data.params  # logged once, under the name filters use
    assert run.data.metrics["aiq"] == pytest.approx(test["aiq"])
    assert run.data.metrics["vs_logreg.aiq"] == pytest.approx(test["vs_baselines"]["logreg"]["aiq"])
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) >= 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "router")}
    assert "router/curve.png" in artifacts and "router/weights.safetensors" in artifacts

    # the exported artifact travels with the run and loads from its runs:/ URI
    from router_ml import Router

    mlflow.set_tracking_uri(uri)
    remote = Router.load(f"runs:/{summary['run_id']}/artifact")
    local = Router.load(summary["artifact"] if os.path.isabs(summary["artifact"]) else tmp_path / summary["artifact"])
    prompts = ["Add 17 and 25.", "Write a haiku about routers."]
    np.testing.assert_array_equal(remote.predict(prompts), local.predict(prompts))
    registered = Router.load(summary["registered"])
    np.testing.assert_array_equal(registered.predict(prompts), local.predict(prompts))
    assert remote.manifest["training"]["mlflow_run_id"] == summary["run_id"]
    from router_ml import ArtifactError  # a run or path the server lacks: its URI and the server, not a traceback

    for uri_text, why in ((f"runs:/{'0' * 32}/artifact", "Run with id=0"),
                          (f"runs:/{summary['run_id']}/no-such-path", "no-such-path")):
        with pytest.raises(ArtifactError, match=rf"{uri_text}: cannot download it from the MLflow tracking "
                                                rf"server {re.escape(uri)} \(MlflowException: .*{why}"):
            Router.load(uri_text)

    again = cli("evaluate", "--checkpoint", tmp_path / "router", "--data", demo_subset, "--json", cwd=tmp_path)
    assert again["dropped_seen"] == 1120 and again["scored"] == 480
    assert again["test"]["aiq"] == pytest.approx(test["aiq"], abs=1e-9)


def test_masked_logged_traffic_still_trains_and_beats_random(tmp_path, demo_subset):
    """Each record keeps the outcome of one random model, as production logs do."""
    table, _ = load_traffic(demo_subset)
    rng = np.random.default_rng(0)
    masked = []
    for record in table.records:
        keep = table.models[int(rng.integers(len(table.models)))]
        masked.append(Record(prompt=record.prompt, messages=record.messages, sample_id=record.sample_id,
                             outcomes={keep: record.outcomes[keep]}, task=record.task))
    path = write_jsonl(masked, tmp_path / "masked.jsonl")
    summary = cli("train", "--config", MLP_STATIC, "--data", path, "--out", tmp_path / "r",
                  "--set", "tracking.enabled=false", "--set", "eval.baselines=random,best-single,oracle", *FAST,
                  cwd=tmp_path)
    test = summary["test"]
    assert test["estimator"] == "ips" and test["baselines"]["oracle"]["aiq"] is None
    assert test["aiq"] > test["baselines"]["random"]["aiq"]
    # scored on the fully labelled copy, the held-out prompts confirm it
    full = cli("evaluate", "--checkpoint", tmp_path / "r", "--data", demo_subset, "--json", cwd=tmp_path)
    assert full["scored"] == 480 and full["test"]["estimator"] == "exact"
    assert full["test"]["aiq"] > full["test"]["baselines"]["random"]["aiq"]


def test_a_refined_knob_sweep_is_saved_with_the_router_and_evaluate_sweeps_it_again(tmp_path, demo_subset):
    """`eval.knob_refine`: the test curve sweeps the saved grid plus the router's own tie points; `evaluate`
    reads the setting from the checkpoint's config and scores the same test prompts to the same AIQ, which
    is at least the fixed grid's."""
    from training.checkpoint import saved_knob_grid
    from training.evaluation import read_metrics_file

    plain = cli("train", "--config", MLP_STATIC, "--data", demo_subset, "--out", tmp_path / "plain",
                "--set", "tracking.enabled=false", *FAST, cwd=tmp_path)
    summary = cli("train", "--config", MLP_STATIC, "--data", demo_subset, "--out", tmp_path / "r",
                  "--set", "tracking.enabled=false", "--set", "eval.knob_refine=200", *FAST, cwd=tmp_path)
    grid = saved_knob_grid(tmp_path / "r")
    assert len(grid) == 41  # the saved grid stays the fixed one
    curve = read_metrics_file(tmp_path / "r" / "metrics.json")["curve"]["willingness_to_pay"]
    assert len(curve) > 200
    assert summary["test"]["aiq"] >= plain["test"]["aiq"]  # same seed, same router: only knob values added
    again = cli("evaluate", "--checkpoint", tmp_path / "r", "--data", demo_subset, "--json", cwd=tmp_path)
    assert again["scored"] == 480 and again["test"]["aiq"] == pytest.approx(summary["test"]["aiq"], abs=1e-9)


def test_unreachable_mlflow_does_not_stop_training(tmp_path, demo_subset):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    summary = cli("train", "--config", MLP_STATIC, "--data", demo_subset, "--out", tmp_path / "r", *FAST,
                  "--set", "eval.baselines=random",
                  cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    assert summary["run_id"] is None and "start" in summary["tracking_error"]
    assert summary["test"]["aiq"] > summary["test"]["baselines"]["random"]["aiq"]


def test_torchrun_ddp_two_cpu_processes(tmp_path, demo_subset):
    """The mlp trainer under torchrun: 2 CPU processes (gloo), rank 0 evaluates and writes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port),
         "-m", "router_ml.cli", "train", "--config", str(MLP_STATIC), "--data", str(demo_subset), "--out",
         str(tmp_path / "r"), "--quiet",
         "--set", "tracking.enabled=false", "--set", "eval.baselines=random", *FAST],
        capture_output=True, text=True, cwd=tmp_path, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only rank 0 reports
    summary = json.loads(lines[0])
    assert summary["test"]["aiq"] > summary["test"]["baselines"]["random"]["aiq"]
    assert (tmp_path / "r" / "weights.safetensors").exists()


def test_encoder_router_fine_tunes_a_local_distilbert(tmp_path, demo_subset):
    """The encoder variant on any local DistilBERT checkpoint (a tiny random one here: no weights
    are downloadable offline), CPU only, saved and re-evaluated."""
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from training.featurizers import minilm_path

    checkpoint = tmp_path / "tiny-distilbert"
    torch.manual_seed(0)  # a fixed random encoder: the int8 outcome below is then one outcome
    DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, hidden_dim=64, n_layers=2, n_heads=2,
                                     max_position_embeddings=64)).save_pretrained(checkpoint)
    # MiniLM's own tokenizer files (BertTokenizerFast(vocab_file=...) builds a 5-token vocabulary on
    # transformers 5, which would turn every word into [UNK])
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    assert tokenizer.convert_tokens_to_ids("paris") != tokenizer.unk_token_id
    tokenizer.save_pretrained(checkpoint)
    table, _ = load_traffic(demo_subset)
    small = write_jsonl(table.records[:300], tmp_path / "small.jsonl")
    summary = cli("train", "--config", ROOT / "training/configs/encoder.toml", "--data", small, "--out",
                  tmp_path / "r", "--set", f"router.encoder={checkpoint}", "--set", "router.max_length=48",
                  "--set", "train.epochs=2", "--set", "eval.n_boot=5", "--set", "tracking.enabled=false",
                  "--set", "eval.baselines=random", "--set", "router.encoder_layers=1", cwd=tmp_path)
    assert summary["router"] == "encoder" and summary["test_records"] == 90
    assert 0 < summary["test"]["aiq"] <= 1
    assert summary["export"]["fp32_max_abs_diff"] <= 1e-4  # the exported (fused) graph matches torch
    # int8: the kept layer's FFN output projection is the one down-projection the ladder can leave
    # in fp32; with 7-bit weights the outcome is the same on every CPU: this seeded random encoder fails
    from training.export import ExportError, _down_projections, export_router

    down = _down_projections(tmp_path / "r" / "artifact" / "router.onnx")
    assert len(down) == 1 and "lin2" in down[0]
    # (one of the ~90 parity prompts changes on every rung: 1.1% > 1%), so it is refused, naming each rung
    with pytest.raises(ExportError) as refused:
        export_router(tmp_path / "r", tmp_path / "q8", quantize="int8")
    for rung in ("MatMul+Attention: ", "MatMul+Attention (down-projections fp32: 1): ", "MatMul: ",
                 "MatMul (down-projections fp32: 1): "):
        assert rung in str(refused.value)
    assert not (tmp_path / "q8").exists()  # nothing written
    again = cli("evaluate", "--checkpoint", tmp_path / "r", "--data", small, "--json", cwd=tmp_path)
    assert again["test"]["aiq"] == pytest.approx(summary["test"]["aiq"], abs=1e-6)

    # router.encoder_layers kept the first of the two layers, in training and when loaded back
    from router_ml.errors import RouterMLError
    from training.config import load_config
    from training.routers import EncoderRouter, TorchRouter

    loaded = TorchRouter.load(tmp_path / "r")
    assert len(loaded.module_.encoder.transformer.layer) == 1
    deep = EncoderRouter(config=load_config(ROOT / "training/configs/encoder.toml",
                                            [f"router.encoder={checkpoint}", "router.encoder_layers=3"]), n_models=2)
    with pytest.raises(RouterMLError, match="has 2 layers"):
        deep.build_module()


def test_mf_learns_from_pairwise_preferences_alone(tmp_path):
    """Arena-style records (no outcomes, only who won) still train the mf router."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(600):
        math = i % 2 == 0
        prompt = (f"Compute {rng.integers(100, 999)} times {rng.integers(100, 999)} exactly." if math
                  else f"Say hello to my friend number {i} in a cheerful way.")
        winner = "a" if math else "b"   # 'big' wins maths, 'small' wins chit-chat
        records.append(Record(prompt=prompt, preferences=(Preference("big", "small", winner),)))
    path = write_jsonl(records, tmp_path / "arena.jsonl")
    table, _ = load_traffic(path)
    from training.config import load_config
    from training.pipeline import _batchable, featurize_texts
    from training.routers import MFRouter

    config = load_config(ROOT / "training/configs/mf.toml", ["train.epochs=30", "loss.tradeoff_weight=0"])
    X, _ = featurize_texts(config, table.texts, fingerprint=None, cache_dir=None, progress=False)
    rows = np.arange(len(table))
    cost = np.zeros((len(table), 2))
    data = _batchable((X,), rows[:500], table, cost, cost)
    assert data.prefs is not None and len(data.prefs) == 500
    router = MFRouter(config=config, n_models=2, input_dim=X.shape[1]).fit(data, wtp_range=(0.1, 1.0))
    scores = router.predict_logits((X[500:],))
    big, small = table.models.index("big"), table.models.index("small")
    prefers_big = scores[:, big] > scores[:, small]
    is_math = np.array([t.startswith("Compute") for t in table.texts[500:]])
    assert np.mean(prefers_big == is_math) > 0.9


def test_parity_prompts_are_a_seeded_sample_of_the_test_rows(demo_subset, monkeypatch):
    """The exporter's parity prompts: every test prompt when there are few, else a seeded sample
    spread over the whole test split (not its first rows, which share a file or subject)."""
    from training import pipeline

    table, _ = load_traffic(demo_subset)
    test_rows = np.arange(10, len(table), 2)
    assert pipeline.parity_prompts(table, test_rows, 0) == [table.texts[i] for i in test_rows]
    monkeypatch.setattr(pipeline, "PARITY_PROMPTS", 40)
    sample = pipeline.parity_prompts(table, test_rows, 0)
    assert len(sample) == 40 and sample == pipeline.parity_prompts(table, test_rows, 0)
    assert sample != pipeline.parity_prompts(table, test_rows, 1)
    position = {table.texts[i]: k for k, i in enumerate(test_rows)}
    assert all(text in position for text in sample)
    assert max(position[text] for text in sample) > len(test_rows) // 2  # not just the head of the split


def test_group_informed_router_blends_the_group_estimate_and_exports(tmp_path, demo_subset):
    """router.groups = task: the saved head is (1 - w) * MLP + w * p(task | prompt) @ per-task means, the
    per-task means are the (smoothed) training means, and the exported graph computes the same."""
    import torch

    from router_ml import Router
    from training.config import load_config
    from training.pipeline import group_labels, train_router
    from training.routers import TorchRouter
    from training.routers.neural import GROUP_SMOOTHING, GroupBlend

    config = load_config(ROOT / "training/configs/mlp_static.toml",
                         ["router.groups=task", "router.group_weight=0.4", "train.epochs=10", "eval.n_boot=0",
                          "eval.baselines=random", "tracking.enabled=false"])
    summary = train_router(config, demo_subset, out_dir=tmp_path / "r", progress=False)
    assert summary["export"]["fp32_max_abs_diff"] <= 1e-4
    router = TorchRouter.load(tmp_path / "r")
    table, _ = load_traffic(demo_subset)
    tasks = sorted(set(group_labels(table, "task").tolist()))
    assert router.groups_ == tasks and len(tasks) >= 2
    blend = router.module_
    assert isinstance(blend, GroupBlend) and blend.weight == 0.4

    # the group table: smoothed means over the training + validation records of each task
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    test_ids = set(split["test_sample_ids"])
    seen = np.array([r.sample_id not in test_ids for r in table])
    quality, labels = table.quality[seen], group_labels(table, "task")[seen]
    overall = np.nanmean(quality, axis=0)
    first = quality[labels == tasks[0]]
    counts = (~np.isnan(first)).sum(axis=0)
    expected = (np.nansum(first, axis=0) + GROUP_SMOOTHING * overall) / (counts + GROUP_SMOOTHING)
    np.testing.assert_allclose(blend.group_quality[0].numpy(), expected, atol=1e-6)

    # the blend, computed by hand from its parts, and the runtime's predictions of the exported graph
    from training.featurizers import get_featurizer

    texts = list(table.texts[:20])
    X = torch.as_tensor(get_featurizer("static", max_tokens=config.featurizer.max_tokens).transform(texts))
    with torch.no_grad():
        by_hand = 0.6 * torch.sigmoid(blend.base(X)) + 0.4 * torch.softmax(blend.classify(X), -1) @ blend.group_quality
    np.testing.assert_allclose(router.predict((X.numpy(),)), by_hand.numpy(), atol=1e-5)
    np.testing.assert_allclose(Router.load(tmp_path / "r" / "artifact").predict(texts), by_hand.numpy(), atol=1e-4)


@pytest.mark.parametrize(("overrides", "message"), [
    (["router.groups=topic"], "'task' or 'metadata.<key>'"),
    (["router.groups=metadata.nothing_here"], "at least 2"),
    (["router.kind=encoder", "router.groups=task"], "not the encoder"),
])
def test_group_settings_that_cannot_work_are_refused(tmp_path, demo_subset, overrides, message):
    from router_ml.errors import RouterMLError
    from training.config import load_config
    from training.pipeline import train_router

    with pytest.raises(RouterMLError, match=message):  # the config refuses what it can see, the data the rest
        config = load_config(ROOT / "training/configs/mlp_static.toml",
                             [*overrides, "train.epochs=1", "eval.n_boot=0", "tracking.enabled=false"])
        train_router(config, demo_subset, out_dir=tmp_path / "r", progress=False)


def test_data_of_one_model_is_refused_before_any_work(tmp_path, demo_subset):
    """A router chooses between models: one model's outcomes (every record, or a log that never explored)
    train nothing - a clear error naming the file and the model, no artifact."""
    import dataclasses

    from router_ml.errors import DataError
    from training.config import load_config
    from training.data import load_traffic, write_jsonl
    from training.pipeline import train_router

    table, _ = load_traffic(demo_subset)
    records = [dataclasses.replace(r, outcomes={"tiny-1b": r.outcomes["tiny-1b"]}) for r in table.records[:300]]
    one = write_jsonl(records, tmp_path / "one.jsonl")
    config = load_config(ROOT / "training/configs/mlp_static.toml", ["train.epochs=1", "tracking.enabled=false"])
    with pytest.raises(DataError, match=r"one\.jsonl: every outcome is of one model \('tiny-1b'\).*at least two"):
        train_router(config, one, out_dir=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    # a wide table whose second model column is empty names it (the model was dropped before the refusal)
    wide = tmp_path / "wide.csv"
    wide.write_text("prompt,big,big|total_cost,small,small|total_cost\n"
                    + "".join(f"q{i},{i % 2},0.01,,\n" for i in range(40)))
    with pytest.raises(DataError, match=r"wide\.csv: every outcome is of one model \('big'\).*the model column\(s\) "
                                        r"\['small'\] hold no outcome in any record"):
        train_router(config, wide, out_dir=tmp_path / "r2", progress=False)


def test_data_without_costs_is_named_and_two_models_without_costs_are_said_to_cost_0_and_1(tmp_path, caplog):
    """No usable cost column: the error names the file and the `M|...` columns that were ignored (a cost
    column misnamed `M|price`); with exactly two models the RouteLLM rule prices them 0 and 1 per call, and
    `train` says so on stderr instead of routing on invented costs in silence."""
    from router_ml.errors import DataError
    from training.config import load_config
    from training.pipeline import prepare

    config = load_config(ROOT / "training/configs/mlp_static.toml", ["tracking.enabled=false"])
    three = tmp_path / "three.csv"
    three.write_text("prompt,a,a|price,b,b|price,c,c|price\n"
                     + "".join(f"q{i},{i % 2},1,{i % 3 > 0:d},2,1,3\n" for i in range(60)))
    with pytest.raises(DataError, match=r"three\.csv: no costs in the data: give a price catalog \(--prices\) or cost "
                                        r"columns for the 3 models; its columns \['a\|price', 'b\|price', "
                                        r"'c\|price'\] were ignored \(a model's cost column is "
                                        r"'<model>\|total_cost'\)"):
        prepare(config, three)
    two = tmp_path / "two.csv"
    two.write_text("prompt,weak,weak|price,strong,strong|price\n"
                   + "".join(f"q{i},{i % 3 == 0:d},1,1,2\n" for i in range(60)))
    with caplog.at_level("WARNING", logger="router_ml"):
        prep = prepare(config, two)
    assert list(prep.table.models) == ["weak", "strong"]
    assert (prep.cost[:, 0] == 0).all() and (prep.cost[:, 1] == 1).all()
    assert any("no costs in the data: with two models the stronger by mean quality, 'strong', costs 1 and "
               "'weak' 0 per call" in r.getMessage() for r in caplog.records), caplog.text


def test_evaluate_scores_exported_artifacts_on_the_checkpoints_path(tmp_path, trained):
    """`evaluate` with artifacts: the fp32 artifact scores what the checkpoint scores; an int8 artifact is
    scored through the runtime on the same prompts, costs and saved knob grid, its route changes counted."""
    import shutil

    from router_ml.errors import RouterMLError
    from router_ml.policy import CostModel
    from training.checkpoint import saved_knob_grid
    from training.evaluation import read_metrics_file
    from training.export import export_router
    from training.pipeline import evaluate_router

    table, _ = load_traffic(DEMO)
    held_out = write_jsonl(table.records[800:1400], tmp_path / "held_out.jsonl")
    int8 = tmp_path / "int8"
    export_router(trained.checkpoint, int8, quantize="int8")
    result = evaluate_router(trained.checkpoint, held_out, n_boot=0, progress=False,
                             artifacts=[trained.artifact, int8])
    # the knob grid comes from the checkpoint's cost model and is the one its training curve swept
    grid = saved_knob_grid(trained.checkpoint)
    assert len(grid) > 3 and np.isinf(grid[-1])
    assert CostModel.from_dict(json.loads((trained.checkpoint / "cost_model.json").read_text())).knob_grid
    curve = read_metrics_file(trained.checkpoint / "metrics.json")["curve"]["willingness_to_pay"]
    assert [None if np.isinf(w) else w for w in grid] == curve
    fp32, q8 = result["artifacts"]
    assert fp32["quantization"] is None and q8["quantization"] == "int8"
    assert fp32["max_abs_diff"] < 1e-4 and fp32["changed_routes"] == 0.0
    for key in ("aiq", "best_quality"):
        assert fp32["test"][key] == pytest.approx(result["test"][key], abs=1e-9)
    assert 0 < q8["max_abs_diff"] and q8["changed_routes"] <= 0.05
    assert q8["test"]["aiq"] == pytest.approx(result["test"]["aiq"], abs=0.02)
    printed = cli("evaluate", "--checkpoint", trained.checkpoint, "--data", held_out, "--artifact", int8, "--json",
                  "--quiet", cwd=tmp_path)
    assert printed["artifacts"][0]["quantization"] == "int8"
    assert printed["artifacts"][0]["changed_routes"] == pytest.approx(q8["changed_routes"])
    other = tmp_path / "other.jsonl"
    write_jsonl([r for r in table.records[800:900]], other)
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(Exception, match="manifest"):
        evaluate_router(trained.checkpoint, other, n_boot=0, progress=False, artifacts=[broken])
    # another router's artifact was once scored beside the checkpoint as its export (changed routes 0.94)
    foreign = Path(shutil.copytree(trained.artifact, tmp_path / "foreign"))
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["training"]["config"] = {**manifest["training"]["config"], "data.seed": 99}
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RouterMLError, match=r"foreign: not an export of the checkpoint .*data.seed = 99 against 0"):
        evaluate_router(trained.checkpoint, other, n_boot=0, progress=False, artifacts=[foreign])


def test_metrics_files_carry_a_version_that_readers_check(tmp_path, trained):
    from router_ml.errors import RouterMLError
    from training.evaluation import METRICS_FORMAT, read_metrics_file

    data = json.loads((trained.checkpoint / "metrics.json").read_text())
    assert data["format"] == METRICS_FORMAT and data["format_version"] == 1
    newer = tmp_path / "metrics.json"
    newer.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(RouterMLError, match="version 99.*upgrade router-ml"):
        read_metrics_file(newer)
    legacy = {k: v for k, v in data.items() if k not in ("format", "format_version")}
    newer.write_text(json.dumps(legacy))
    assert read_metrics_file(newer)["test"] == data["test"]  # written before versions existed: version 1


def test_evaluate_scores_a_log_with_propensities_off_policy_near_the_full_information_truth(tmp_path, trained):
    """A prompt-dependent epsilon-greedy log of held-out demo prompts (one model each, with its propensity):
    `evaluate` picks self-normalised IPS and lands near the exact score on the same prompts' every outcome."""
    import dataclasses

    from training.pipeline import evaluate_router

    table, _ = load_traffic(DEMO)
    records = table.records[800:2400]
    full = write_jsonl(records, tmp_path / "full.jsonl")
    rng = np.random.default_rng(0)
    models, rate, logged = table.models, 0.5, []
    for r in records:
        greedy = models[len(r.text) % len(models)]  # the logging router looked at the prompt
        chosen = models[rng.integers(len(models))] if rng.random() < rate else greedy
        p = 1 - rate + rate / len(models) if chosen == greedy else rate / len(models)
        logged.append(dataclasses.replace(r, outcomes={chosen: dataclasses.replace(r.outcomes[chosen], propensity=p)}))
    log = write_jsonl(logged, tmp_path / "log.jsonl")
    exact = evaluate_router(trained.checkpoint, full, n_boot=0, progress=False)["test"]
    est = evaluate_router(trained.checkpoint, log, n_boot=50, progress=False)["test"]
    assert exact["estimator"] == "exact" and est["estimator"] == "snips"
    assert est["off_policy"]["propensities"] == "logged" and est["off_policy"]["effective_sample_size"]["min"] > 50
    assert est["aiq"] == pytest.approx(exact["aiq"], abs=0.03)
    assert est["best_quality"] == pytest.approx(exact["best_quality"], abs=0.03)
    low, high = est["ci95"]["best_quality"]
    assert low - 0.01 <= exact["best_quality"] <= high + 0.01
    dr = evaluate_router(trained.checkpoint, log, n_boot=0, progress=False, estimator="dr")["test"]
    assert dr["estimator"] == "dr" and dr["best_quality"] == pytest.approx(exact["best_quality"], abs=0.03)


def test_simulate_log_writes_bootstrap_log_and_test_parts_that_train_and_evaluate_read(tmp_path):
    """`router-ml simulate-log` on demo data: prompt-disjoint parts, a log with one outcome and its propensity
    per prompt following the stated epsilon-greedy policy, which `evaluate` then scores off-policy."""
    table, _ = load_traffic(DEMO)
    full = write_jsonl(table.records[:1500], tmp_path / "full.jsonl")
    out = tmp_path / "sim"
    result = cli("simulate-log", "--config", MLP_STATIC, "--data", full, "--out", out, "--bootstrap", "400",
                 "--logged", "0.5",
                 "--explore-rate", "0.3", "--explore-seed", "1", "--seed", "0", "--quiet", *FAST,
                 "--set", "tracking.enabled=false", "--set", "eval.baselines=random", cwd=tmp_path)
    parts = {name: load_traffic(out / f"{name}.jsonl")[0] for name in ("bootstrap", "log", "test")}
    assert (len(parts["bootstrap"]), len(parts["log"]), len(parts["test"])) == (400, 750, 350)
    assert result["bootstrap_records"] == 400 and result["logged_records"] == 750
    texts = [set(parts[n].texts) for n in parts]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])  # no prompt in two parts
    k = len(table.models)
    for record in parts["log"]:
        (model, outcome), = record.outcomes.items()
        assert outcome.propensity in (pytest.approx(1 - 0.3 + 0.3 / k), pytest.approx(0.3 / k))
    assert 0.3 * (k - 1) / k - 0.06 <= result["explored_share"] <= 0.3 * (k - 1) / k + 0.06
    assert np.isfinite(parts["log"].propensity).sum() == 750
    scored = cli("evaluate", "--checkpoint", out / "bootstrap_router", "--data", out / "log.jsonl", "--json",
                 "--quiet", cwd=tmp_path)
    assert scored["test"]["estimator"] == "snips" and scored["scored"] == 750
    assert result["logged_mean_cost"] > 0


def test_simulate_log_refuses_an_out_whose_files_would_overwrite_its_input(tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    full = write_jsonl(load_traffic(DEMO)[0].records[:300], out / "test.jsonl")  # the name simulate-log writes
    before = full.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "router_ml.cli", "simulate-log", "--config", MLP_STATIC, "--data",
                           str(full), "--out", str(out), "--bootstrap", "100", "--logged", "100", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1 and f"--out {out}: would overwrite the input {full}" in proc.stderr, proc.stderr
    assert full.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["test.jsonl"]


def test_simulate_log_names_an_unknown_excluded_model_before_training_and_warns_when_nothing_is_explored(tmp_path):
    """--explore-exclude with a typo was a ValueError traceback after the bootstrap router's training; a cost cap
    no model meets logged propensity 1 everywhere without a word."""
    full = write_jsonl(load_traffic(DEMO)[0].records[:600], tmp_path / "full.jsonl")
    base = ["simulate-log", "--config", MLP_STATIC, "--data", full, "--bootstrap", "300", "--logged", "200",
            "--explore-rate", "0.2", "--quiet", *FAST, "--set", "tracking.enabled=false", "--set",
            "eval.baselines=random"]
    proc = subprocess.run([sys.executable, "-m", "router_ml.cli", *map(str, base), "--out", str(tmp_path / "a"),
                           "--explore-exclude", "frontier-xI"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--explore-exclude names model(s) ['frontier-xI'] that {full} does not hold" in proc.stderr
    assert not (tmp_path / "a").exists()  # nothing trained or written
    proc = subprocess.run([sys.executable, "-m", "router_ml.cli", *map(str, base), "--out", str(tmp_path / "b"),
                           "--explore-max-cost", "0"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = strict_json(proc.stdout.strip().splitlines()[-1])
    assert result["explored_share"] == 0 and result["min_propensity"] == 1
    assert "router-ml: warning: nothing was explored on 200 logged prompts" in proc.stderr
    assert result["warning"].startswith("nothing was explored") and "(see --explore-max-cost)" in result["warning"]
    # a softmax this cold draws only the greedy choice: the warning names the temperature, not the cap
    proc = subprocess.run([sys.executable, "-m", "router_ml.cli", *map(str, base), "--out", str(tmp_path / "c"),
                           "--explore-policy", "softmax", "--explore-temperature", "1e-9"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "(see --explore-temperature 1e-09)" in strict_json(proc.stdout.strip().splitlines()[-1])["warning"]


def test_simulate_log_on_data_without_costs_prints_strict_json(tmp_path):
    """Two models with a quality only, as in RouteLLM's tables (the router's cost axis is the strong model's
    share): no logged cost to average, so the logged mean cost is null, not NaN."""
    table, _ = load_traffic(DEMO)
    pair = table.models[:2]
    records = [dataclasses.replace(r, outcomes={m: dataclasses.replace(r.outcomes[m], cost=None, input_tokens=None,
                                                                       output_tokens=None) for m in pair})
               for r in table.records[:700] if all(m in r.outcomes for m in pair)]
    full = write_jsonl(records, tmp_path / "full.jsonl")
    result = cli("simulate-log", "--config", MLP_STATIC, "--data", full, "--out", tmp_path / "sim", "--bootstrap",
                 "300", "--logged", "200",
                 "--explore-rate", "0.2", "--explore-seed", "0", "--quiet", *FAST, "--set", "tracking.enabled=false",
                 "--set", "eval.baselines=random", cwd=tmp_path)
    assert result["logged_records"] == 200 and result["logged_mean_cost"] is None
    assert 0 <= result["logged_mean_quality"] <= 1
    assert strict_json((tmp_path / "sim" / "simulation.json").read_text())["logged_mean_cost"] is None


def test_the_parity_check_finds_the_ties_at_a_knn_graphs_kth_neighbour_on_the_runtimes_tokens(trained):
    """``_rank_gaps`` pools the prompts as the runtime encodes them and reads each kNN head's gap at the k-th
    neighbour: with every stored prompt twice, the gap inside a pair is an exact tie."""
    import torch

    from router_ml import Router
    from training.export import _rank_gaps, _static_parts, static_pool
    from training.routers import TorchRouter
    from training.routers.heads import KNNHead

    graph, _, _ = _static_parts(trained.checkpoint, TorchRouter.load(trained.checkpoint))
    router = Router.load(trained.artifact)
    texts = trained.held_out[:30]

    def features(batch):
        rows = []
        for text in batch:
            ids, mask = router.encode(text)
            rows.append(static_pool(graph.table, torch.from_numpy(ids[None, :]), torch.from_numpy(mask[None, :]),
                                    graph.normalize)[0].numpy())
        return np.stack(rows)

    keys = np.repeat(features(texts[:20]), 2, axis=0)  # every stored prompt twice
    queries = texts[20:]
    sims = features(queries) @ (keys / np.linalg.norm(keys, axis=1, keepdims=True)).T
    ordered = -np.sort(-sims, axis=1)
    graph.head = KNNHead(keys, np.ones((len(keys), 2)), 3)  # 3rd and 4th: the two copies of one prompt
    assert np.array_equal(_rank_gaps(graph, router, queries), np.zeros(len(queries)))
    graph.head = KNNHead(keys, np.ones((len(keys), 2)), 4)  # 4th and 5th: two different prompts
    gaps = _rank_gaps(graph, router, queries)
    assert np.allclose(gaps, ordered[:, 3] - ordered[:, 4], atol=1e-6) and (gaps > 0).all()


def test_the_python_api_takes_a_config_path_and_names_a_bad_argument_before_reading_data(tmp_path):
    from router_ml import DataError
    from training import evaluate_router, train_router

    # the config is loaded (and validated) before the data is read: the missing data file is what fails
    with pytest.raises(DataError, match="no such file"):
        train_router(str(MLP_STATIC), tmp_path / "missing.jsonl", out_dir=tmp_path / "r")
    with pytest.raises(TypeError, match="a TrainConfig or the path of a TOML config, got dict"):
        train_router({"router": {"kind": "mlp"}}, tmp_path / "missing.jsonl", out_dir=tmp_path / "r")
    with pytest.raises(ValueError, match="n_boot must be a whole number >= 0"):  # before anything is read
        evaluate_router(tmp_path / "r", tmp_path / "missing.jsonl", n_boot=-5)


def test_a_router_is_trained_into_what_an_interrupted_run_left(tmp_path):
    """A run stopped between the router's weights and its manifest left weights.safetensors and router.json:
    the next run replaces them instead of refusing the directory as someone else's files. Anything more is
    still refused. Both checked before the data is read (it does not exist here)."""
    from router_ml.errors import RouterMLError
    from training.config import load_config
    from training.pipeline import train_router

    config = load_config(ROOT / "training/configs/mlp_static.toml", ["tracking.enabled=false"])
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / "weights.safetensors").write_bytes(b"partial")
    (interrupted / "router.json").write_text("{}")
    with pytest.raises(Exception, match="missing.jsonl") as caught:  # past the check: the data is read next
        train_router(config, tmp_path / "missing.jsonl", out_dir=interrupted, progress=False)
    assert "checkpoint" not in str(caught.value)
    (interrupted / "notes.txt").write_text("mine")
    with pytest.raises(RouterMLError, match=r"a directory holding notes.txt, router.json, weights.safetensors, "
                                            r"not a router checkpoint"):
        train_router(config, tmp_path / "missing.jsonl", out_dir=interrupted, progress=False)


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.train_size=1"], r"leaves 1 training records .*data.train_size \(--train-size\) = 1 is a count of records"),
    (["data.train_size=100", "data.val_size=100"], r"leaves 0 training records .*data.val_size = 100 takes 100"),
    (["data.train_size=400"], r"leaves no test records .*data.train_size \(--train-size\) = 400 takes every record"),
    (["data.train_size=0.01"], r"leaves 4 training records .*: data.train_size \(--train-size\) = 0.01 of the "
                               r"data's 400 records leaves 4 to train and validate on"),
])
def test_a_split_with_next_to_nothing_to_train_or_test_on_names_the_setting(tmp_path, overrides, message):
    """train_size = 1.0 meant as "all of it" trained a router on one record; an empty training part blamed
    --train-size when data.val_size had taken every record."""
    from router_ml.errors import DataError
    from training.config import load_config
    from training.pipeline import train_router

    data = tmp_path / "t400.jsonl"
    data.write_text("".join((ROOT / "data/demo/traffic.jsonl").read_text().splitlines(keepends=True)[:400]))
    config = load_config(ROOT / "training/configs/mlp_static.toml", [*overrides, "tracking.enabled=false"])
    with pytest.raises(DataError, match=message):
        train_router(config, data, out_dir=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("router.max_length=1000", r"router.max_length = 1000: the encoder .* reads at most 512 tokens; set "
                               r"router.max_length <= 512"),
    ("router.encoder_layers=10", r"router.encoder_layers = 10: the encoder .* has 6 layers"),
])
def test_encoder_settings_the_encoder_cannot_take_are_refused_before_the_data_is_read(tmp_path, override, message):
    """max_length 1000 on MiniLM (512 positions) trained until the first long prompt, and its exported graph
    failed on one in production; too many layers was found only at the fit, after featurizing."""
    from router_ml.errors import RouterMLError
    from training.config import load_config
    from training.pipeline import train_router

    config = load_config(ROOT / "training/configs/encoder_fast.toml", [override, "tracking.enabled=false"])
    with pytest.raises(RouterMLError, match=message):
        train_router(config, tmp_path / "missing.jsonl", out_dir=tmp_path / "r", progress=False)


def test_simulate_log_says_how_many_records_it_leaves_out_and_refuses_a_bootstrap_too_small_before_writing(
        tmp_path):
    """Records lacking an outcome were dropped without a word (and the shares silently taken of the rest); a
    bootstrap of 5 wrote its parts, then failed in the bootstrap router's split naming --train-size."""
    import dataclasses

    records = load_traffic(DEMO)[0].records[:400]
    gaps = [dataclasses.replace(r, outcomes=dict(list(r.outcomes.items())[1:])) if i % 4 == 0 else r
            for i, r in enumerate(records)]
    data = write_jsonl(gaps, tmp_path / "gaps.jsonl")
    out = tmp_path / "sim"
    proc = subprocess.run([sys.executable, "-m", "router_ml.cli", "simulate-log", "--config", MLP_STATIC, "--data",
                           str(data), "--out", str(out), "--bootstrap", "5", "--logged", "100", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "100 of 400 records lack some model's outcome and are left out" in proc.stderr
    assert "--bootstrap 5 of 300 complete records is 5; the bootstrap router trains and is tested on them: give at " \
           "least 10" in proc.stderr
    assert not out.exists()
    # a simulation that runs counts them in its summary too, not only on stderr
    proc = subprocess.run([sys.executable, "-m", "router_ml.cli", "simulate-log", "--config", MLP_STATIC, "--data",
                           str(data), "--out", str(out), "--bootstrap", "60", "--logged", "120", "--quiet",
                           "--set", "train.epochs=2", "--set", "tracking.enabled=false"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["partial_records_left_out"] == 100 and summary["complete_records"] == 300


def test_the_auto_routers_encoder_candidate_settings_are_checked_before_the_data_when_it_will_be_tried(tmp_path):
    from router_ml.errors import RouterMLError
    from training.config import load_config
    from training.pipeline import train_router

    shipped = (ROOT / "training/configs/encoder_fast.toml").read_text()
    assert "max_length = 256" in shipped
    long = tmp_path / "long_encoder.toml"
    long.write_text(shipped.replace("max_length = 256", "max_length = 1000", 1))
    config = load_config(ROOT / "training/configs/auto.toml",
                         ["router.auto_encoder=always", f"router.auto_encoder_config={long}", "tracking.enabled=false"])
    with pytest.raises(RouterMLError, match="router.max_length = 1000: the encoder .* reads at most 512 tokens"):
        train_router(config, tmp_path / "missing.jsonl", out_dir=tmp_path / "r", progress=False)
