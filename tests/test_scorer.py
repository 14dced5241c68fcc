"""The answer scorer: train (router-ml train with a [scorer] config) -> export -> torch-free runtime.

The data is a small wide table written to tmp_path: a prompt with lettered options and, per model,
a chain of thought ending in "The answer is (X)." whose quality follows an easy signal (wrong
answers hedge and pick the "closest" option), with some label noise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router_ml import AnswerScorer, ArtifactError, Router
from router_ml._answer_inputs import ANSWER_FEATURES, answer_features, pair_ids

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("cheap-model", "strong-model")
TOPICS = ("physics", "history", "law", "biology", "economics", "chemistry", "math", "philosophy")


def _rows(n: int, seed: int = 0, models: tuple[str, ...] = MODELS) -> list[dict]:
    """Multiple-choice prompts whose good answers reason and end on (B), bad ones hedge and end on (D);
    the first model is right 45% of the time, the others 70% (10% of labels flipped)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = (f"Question {i} about {topic}: which statement about case {i} holds?\n"
                  + "".join(f"{letter}. option {letter} of {topic} case {i}\n" for letter in "ABCD") + "Answer:")
        row = {"sample_id": f"s{i}", "prompt": prompt, "eval_name": topic}
        for m, model in enumerate(models):
            good = rng.random() < (0.45 if m == 0 else 0.7)
            if good:
                text = f"Let's think step by step. The {topic} facts give it directly. The answer is (B)."
            else:
                text = (f"Let's think step by step. Wait, however the {topic} value is approximately off, "
                        f"not matching; the closest is maybe. The answer is (D).")
            noisy = rng.random() < 0.1
            row[model] = float(good != noisy)
            row[f"{model}|total_cost"] = 0.001 * (1 + 9 * m)
            row[f"{model}|response"] = text
        rows.append(row)
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def responses_file(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("scorer-data") / "responses.parquet", _rows(400))


@pytest.fixture(scope="module")
def static_run(tmp_path_factory, responses_file, cache_root) -> dict:
    """A static scorer trained through the CLI entry point's config path, in-process."""
    from training.cascade.scorer_run import train_scorer
    from training.config import load_config

    config = load_config(ROOT / "training/configs/scorer_static.toml",
                         ["tracking.enabled=false", "featurizer.max_tokens=64", "scorer.response_head=16"])
    out = tmp_path_factory.mktemp("scorer-run") / "static"
    return train_scorer(config, responses_file, out_dir=out, progress=False)


@pytest.mark.slow
def test_static_scorer_learns_the_signal_and_its_export_matches_training(static_run):
    assert static_run["kind"] == "scorer" and static_run["scorer"] == "static"
    for part in ("val", "test"):
        for model in MODELS:
            assert static_run[part][f"scorer_auc.{model}"] > 0.75, static_run[part]
        assert static_run[part]["scorer_auc"] > 0.75
    assert static_run["export"]["fp32_max_abs_diff"] <= 1e-4
    assert static_run["export"]["trained_max_abs_diff"] <= 1e-4
    scorer = AnswerScorer.load(static_run["artifact"], verify=True)
    assert scorer.models == MODELS and scorer.kind == "static"
    prompt = "Question 1 about law: which holds?\nA. a\nB. b\nC. c\nD. d\nAnswer:"
    good = scorer.score(prompt, "cheap-model", "Let's think step by step. The law facts give it. The answer is (B).")
    bad = scorer.score(prompt, "cheap-model", "Wait, however approximately; the closest is maybe. The answer is (D).")
    assert 0 <= bad < good <= 1
    many = scorer.score_many([prompt, prompt], ["cheap-model", "strong-model"], ["The answer is (B).", ""])
    assert many.shape == (2,) and many[0] == pytest.approx(scorer.score(prompt, "cheap-model", "The answer is (B)."))


@pytest.mark.slow
def test_run_directory_holds_predictions_for_validation_and_test(static_run):
    out = Path(static_run["out"])
    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {line["split"] for line in lines} == {"val", "test"}
    assert len([x for x in lines if x["split"] == "test"]) == static_run["test"]["cells"]
    assert all(x["model"] in MODELS and 0 <= x["score"] <= 1 for x in lines)
    manifest = json.loads((Path(static_run["artifact"]) / "manifest.json").read_text())
    assert manifest["kind"] == "scorer" and manifest["format_version"] == 1
    assert set(manifest["files"]) == {"scorer.onnx", "tokenizer.json", "parity_sample.json"}


@pytest.mark.slow  # trains a scorer
def test_scorer_and_router_artifacts_refuse_each_other(static_run, trained):
    with pytest.raises(ArtifactError, match="a scorer artifact.*Router|AnswerScorer.load"):
        Router.load(static_run["artifact"])
    with pytest.raises(ArtifactError, match="a router artifact, not a scorer one; load it with router_ml.Router.load"):
        AnswerScorer.load(trained.artifact)


@pytest.mark.slow  # trains a scorer
def test_a_tampered_scorer_artifact_is_refused(static_run, tmp_path):
    import shutil

    copy = tmp_path / "artifact"
    shutil.copytree(static_run["artifact"], copy)
    with open(copy / "scorer.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        AnswerScorer.load(copy)


@pytest.mark.slow  # trains a scorer
def test_bad_inputs_name_the_model_and_field(static_run):
    scorer = AnswerScorer.load(static_run["artifact"])
    with pytest.raises(TypeError, match="response for model 'cheap-model' must be str"):
        scorer.score("q", "cheap-model", None)
    with pytest.raises(ValueError, match="unknown model 'other'.*cheap-model"):
        scorer.score("q", "other", "a")
    with pytest.raises(TypeError, match="triple 1: response for model 'strong-model'"):
        scorer.score_many(["q", "q"], ["cheap-model", "strong-model"], ["a", None])
    with pytest.raises(ValueError, match="as many models and responses as prompts"):
        scorer.score_many(["q"], [], ["a"])


def test_training_without_responses_names_the_models_and_the_field(tmp_path, cache_root):
    from router_ml.errors import DataError
    from training.cascade.scorer_run import train_scorer
    from training.config import load_config

    rows = _rows(60)
    for row in rows:
        del row["strong-model|response"]
    data = _write(tmp_path / "partial.parquet", rows)
    config = load_config(ROOT / "training/configs/scorer_static.toml", ["tracking.enabled=false"])
    with pytest.raises(DataError, match=r"no recorded response.*'<model>\|response'.*strong-model"):
        train_scorer(config, data, out_dir=tmp_path / "out", progress=False)
    for row in rows:
        del row["cheap-model|response"]
    with pytest.raises(DataError, match="no outcome carries a response.*cheap-model, strong-model"):
        train_scorer(config, _write(tmp_path / "none.parquet", rows), out_dir=tmp_path / "out", progress=False)


@pytest.mark.slow  # trains a scorer
def test_the_cli_trains_a_scorer_and_prints_per_model_auc(tmp_path, cache_root):
    data = _write(tmp_path / "r.parquet", _rows(200, seed=1))
    done = subprocess.run([sys.executable, "-m", "router_ml.cli", "train", "--quiet", "--config",
                           str(ROOT / "training/configs/scorer_static.toml"), "--data", str(data),
                           "--train-size", "0.7",
                           "--seed", "0", "--out", str(tmp_path / "run"), "--set", "tracking.enabled=false",
                           "--set", "featurizer.max_tokens=64", "--set", "scorer.response_head=16"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(summary["test"]) >= {"scorer_auc", *(f"scorer_auc.{m}" for m in MODELS)}
    assert (tmp_path / "run" / "artifact" / "scorer.onnx").is_file()


def test_a_scorer_is_trained_only_into_an_empty_directory_its_own_checkpoint_or_an_interrupted_run(tmp_path):
    """As for routers: never over a user's files; an interrupted run's weights (saved before the manifest) and
    an earlier scorer checkpoint are replaced. Refused before the data is read (it does not exist here)."""
    from router_ml.errors import RouterMLError
    from training.cascade.scorer_run import train_scorer
    from training.config import load_config

    config = load_config(ROOT / "training/configs/scorer_static.toml", ["tracking.enabled=false"])
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text("{}")
    with pytest.raises(RouterMLError, match=r"--out .*project: a directory holding config.json, not a scorer "
                                            r"checkpoint \(router-ml-scorer-checkpoint/1\)"):
        train_scorer(config, tmp_path / "missing.parquet", out_dir=project, progress=False)
    router_checkpoint = tmp_path / "router"
    router_checkpoint.mkdir()
    (router_checkpoint / "manifest.json").write_text('{"format": "router-ml-checkpoint/1"}')
    with pytest.raises(RouterMLError, match="not a scorer checkpoint"):
        train_scorer(config, tmp_path / "missing.parquet", out_dir=router_checkpoint, progress=False)
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / "scorer.safetensors").write_bytes(b"partial")
    (interrupted / "scorer.json").write_text("{}")
    with pytest.raises(Exception, match="missing.parquet") as caught:  # past the check: the data is read next
        train_scorer(config, tmp_path / "missing.parquet", out_dir=interrupted, progress=False)
    assert "checkpoint" not in str(caught.value)


def test_scorer_config_errors_name_the_key():
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="scorer.kind: expected '' .* static, encoder"):
        load_config(None, ["scorer.kind=bert"])
    with pytest.raises(ConfigError, match=r"scorer.c_grid\[1\]: expected a number > 0"):
        load_config(None, ["scorer.kind=static", "scorer.c_grid=0.1,-1"])
    with pytest.raises(ConfigError, match="scorer.prompt_tokens: expected at most router.max_length - 4"):
        load_config(None, ["scorer.kind=encoder", "router.max_length=32", "scorer.prompt_tokens=30"])


def test_answer_features_are_defined_on_any_text():
    assert len(answer_features("", "")) == len(ANSWER_FEATURES)
    mcq = answer_features("Q\nA. x\nB. yy\nAnswer:", "So (A)? no. The answer is (A). Hmm, the answer is (B).")
    named = dict(zip(ANSWER_FEATURES, mcq, strict=True))
    assert named["answers_stated"] == 2 and named["answer_changed"] == 1 and named["answer_position"] == 0.5
    assert named["options"] == 0.2 and named["option_length_rank"] == 0.0
    free = dict(zip(ANSWER_FEATURES, answer_features("Write a poem.", "Roses are red."), strict=True))
    assert free["states_answer"] == 0 and free["answer_position"] == -1


def test_pair_ids_keep_the_end_of_the_response():
    prompt, response = list(range(100, 140)), list(range(200, 300))
    ids = pair_ids(prompt, response, max_length=32, prompt_tokens=8, cls_id=1, sep_id=2)
    assert len(ids) == 32 and ids[0] == 1 and ids[-1] == 2
    assert ids[1:9] == [100, 101, 102, 103, 136, 137, 138, 139] and ids[9] == 2
    assert ids[10:-1] == list(range(279, 300))  # the response's last 21 tokens
    short = pair_ids(prompt, [7, 8], max_length=32, prompt_tokens=8, cls_id=1, sep_id=2)
    assert len(short) == 32 and short[-4:] == [2, 7, 8, 2]  # a short answer leaves the prompt more room
    assert pair_ids([5], [6], max_length=32, prompt_tokens=8, cls_id=1, sep_id=2) == [1, 5, 2, 6, 2]


@pytest.mark.slow
def test_encoder_scorer_trains_exports_and_matches(tmp_path, responses_file, tiny_encoder, cache_root):
    from training.cascade.scorer_run import train_scorer
    from training.config import load_config

    config = load_config(ROOT / "training/configs/scorer_encoder.toml",
                         [f"router.encoder={tiny_encoder}", "router.encoder_layers=0", "router.max_length=48",
                          "scorer.prompt_tokens=16", "scorer.train_triples=300", "scorer.val_triples=80",
                          "scorer.eval_rows=60", "train.epochs=2", "train.lr=1e-3", "tracking.enabled=false"])
    summary = train_scorer(config, responses_file, out_dir=tmp_path / "enc", progress=False)
    assert summary["artifact"], summary["export"]
    assert summary["export"]["fp32_max_abs_diff"] <= 1e-4 and summary["export"]["trained_max_abs_diff"] <= 1e-4
    assert summary["test"]["scorer_auc"] > 0.6, summary["test"]
    scorer = AnswerScorer.load(summary["artifact"], verify=True)
    assert scorer.kind == "encoder"
    assert 0 <= scorer.score("q", "strong-model", "The answer is (B).") <= 1



def test_a_scorer_checkpoint_given_as_a_router_is_named_as_a_scorer(tmp_path):
    """It was "unsupported router format ...; upgrade router-ml or retrain"."""
    from router_ml.errors import RouterMLError
    from training.saved import load_saved

    (tmp_path / "manifest.json").write_text('{"format": "router-ml-scorer-checkpoint/1", "kind": "scorer"}')
    with pytest.raises(RouterMLError, match=r"an answer scorer \(router-ml-scorer-checkpoint/1\), not a router; .*"
                                            r"cascade evaluate --scorer"):
        load_saved(tmp_path)


def test_encoder_scorer_settings_the_encoder_cannot_take_are_refused_before_the_data_is_read(tmp_path):
    """router.max_length past the encoder's 512 positions failed only at the fit, after featurizing."""
    from router_ml.errors import RouterMLError
    from training.cascade.scorer_run import train_scorer
    from training.config import load_config

    config = load_config(ROOT / "training/configs/scorer_encoder.toml", ["tracking.enabled=false",
                                                                          "router.max_length=1000"])
    with pytest.raises(RouterMLError, match="router.max_length = 1000: the encoder .* reads at most 512 tokens"):
        train_scorer(config, tmp_path / "missing.parquet", out_dir=tmp_path / "s", progress=False)
