"""Exporting a trained answer scorer to a router-style ONNX artifact with ``kind: "scorer"``.

The artifact directory holds ``scorer.onnx`` (pairs -> one P(quality) per model column), the
tokenizer, ``parity_sample.json`` and ``manifest.json`` (format version, ``kind``, scorer kind, model
names in output order, input limits, the answer features' version and names, training config and
run id, validation/test AUC, sha256 of every file) - the router artifact's layout, read by
:class:`router_ml.AnswerScorer`. Before it is swapped in, three things must agree within
:data:`~training.export.FP32_TOLERANCE` on held-out triples: the trained scorer's own scores (the
featurizer and scikit-learn / torch code that training evaluated), the torch graph's on the
runtime's inputs, and the runtime's (onnxruntime) - so the runtime provably reads pairs as training
did. A failed check writes nothing.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from router_ml._answer_inputs import ANSWER_FEATURES, ANSWER_FEATURES_VERSION
from router_ml.formats import VERSION_FIELD
from router_ml.parity import cpu_features
from router_ml.router import ARTIFACT_FORMAT, ARTIFACT_VERSION, file_sha256
from router_ml.scorer import SCORER_GRAPH, AnswerScorer, parity_document
from training.cascade.scorer import read_scorer_json
from training.export import (
    FP32_TOLERANCE,
    EncoderGraph,
    ExportError,
    _check_replaceable,
    _export_onnx,
    _fsync_tree,
    _fuse_transformer,
    _swap_in,
    static_pool,
)

__all__ = ["StaticScorerGraph", "export_scorer"]

#: triples kept in the artifact for ``AnswerScorer.load(..., verify=True)``
SAMPLE_SIZE = 64


class StaticScorerGraph(nn.Module):
    """Pooled prompt and response embeddings, answer features -> ``sigmoid(x @ W.T + b)`` per model."""

    def __init__(self, table: np.ndarray, weight: np.ndarray, bias: np.ndarray, normalize: bool, features: bool):
        super().__init__()
        self.register_buffer("table", torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)))
        self.register_buffer("weight", torch.from_numpy(np.ascontiguousarray(weight.T)))  # (in, models)
        self.register_buffer("bias", torch.from_numpy(bias))
        self.normalize = normalize
        self.features = features

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                response_mask: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        parts = [static_pool(self.table, prompt_ids, prompt_mask, self.normalize),
                 static_pool(self.table, response_ids, response_mask, self.normalize), *features[:1]]
        return torch.sigmoid(torch.cat(parts, dim=-1) @ self.weight + self.bias)


def load_scorer(checkpoint: Path) -> Any:
    """The trained scorer saved in a ``router-ml train`` scorer directory."""
    from training.cascade.scorer import get_scorer

    info = read_scorer_json(checkpoint)
    return get_scorer(info["kind"]).load(checkpoint, info)


def _static_parts(scorer: Any) -> tuple[nn.Module, Path, dict[str, Any], dict[str, Any], dict[str, Any]]:
    prompt_f, response_f = scorer.featurizers()
    weight, bias = scorer.folded()
    features = bool(scorer.config.scorer.answer_features)
    graph = StaticScorerGraph(prompt_f.embedding_table, weight, bias, prompt_f.normalize, features)
    tokenizer = {"file": "tokenizer.json", "add_special_tokens": False, "drop_ids": [prompt_f.unk_id],
                 "max_tokens": prompt_f.max_tokens, "head": prompt_f.head, "response_head": response_f.head,
                 "max_chars": prompt_f.max_chars}
    ids = {name: torch.ones((2, 8), dtype=torch.int64) for name in
           ("prompt_ids", "prompt_mask", "response_ids", "response_mask")}
    axes = {"prompt_ids": {0: "batch", 1: "prompt_tokens"}, "prompt_mask": {0: "batch", 1: "prompt_tokens"},
            "response_ids": {0: "batch", 1: "response_tokens"}, "response_mask": {0: "batch", 1: "response_tokens"}}
    if features:
        ids["features"] = torch.zeros((2, len(ANSWER_FEATURES)), dtype=torch.float32)
        axes["features"] = {0: "batch"}
    return graph, prompt_f.tokenizer_path, tokenizer, ids, axes


def _encoder_parts(scorer: Any) -> tuple[nn.Module, Path, dict[str, Any], dict[str, Any], dict[str, Any]]:
    encoder = scorer.module_.encoder
    if hasattr(encoder, "set_attn_implementation"):  # eager attention exports to the pattern onnxruntime fuses
        encoder.set_attn_implementation("eager")
    tokenizer = {"file": "tokenizer.json", "add_special_tokens": False, "drop_ids": [], **scorer.input_limits()}
    ids = {name: torch.ones((2, 8), dtype=torch.int64) for name in ("input_ids", "attention_mask")}
    return EncoderGraph(scorer.module_), scorer.tokenizer_file(), tokenizer, ids, {n: {0: "batch", 1: "tokens"}
                                                                                   for n in ids}


def export_scorer(checkpoint: str | Path, out: str | Path, *, parity_triples: list[dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    """Export the scorer trained into ``checkpoint`` to the artifact directory ``out``; return the
    parity report. ``parity_triples`` (``{prompt, model, response}``) default to the held-out ones the
    checkpoint saved. An existing artifact at ``out`` is replaced only once the new one passed."""
    checkpoint, out = Path(checkpoint), Path(out)
    scorer = load_scorer(checkpoint)
    triples = parity_triples
    if triples is None:
        path = checkpoint / "parity_triples.json"
        triples = json.loads(path.read_text()) if path.exists() else []
    if not triples:
        raise ExportError(f"{checkpoint}: no held-out triples for the parity check (parity_triples.json)")
    model0 = scorer.models[0]
    triples = triples + [{"prompt": "", "model": model0, "response": ""},  # degenerate inputs must agree too
                         {"prompt": "\U0001F600 \x00 control", "model": model0, "response": "x" * 50_000}]
    _check_replaceable(out, checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        stage = work / "artifact"
        stage.mkdir()
        report = _build(scorer, checkpoint, stage, triples)
        _fsync_tree(stage)
        _swap_in(stage, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _build(scorer: Any, checkpoint: Path, stage: Path, triples: list[dict[str, Any]]) -> dict[str, Any]:
    parts = _static_parts(scorer) if scorer.kind == "static" else _encoder_parts(scorer)
    graph, tokenizer_file, tokenizer, example, axes = parts
    shutil.copyfile(tokenizer_file, stage / "tokenizer.json")
    _export_onnx(graph, stage / SCORER_GRAPH, example, axes)
    report: dict[str, Any] = {"triples": len(triples)}
    if scorer.kind == "encoder":
        report["fused_operators"] = _fuse_transformer(stage / SCORER_GRAPH, scorer.module_.encoder.config)
    manifest_in = json.loads((checkpoint / "manifest.json").read_text())
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    manifest = {
        "format": ARTIFACT_FORMAT, VERSION_FIELD: ARTIFACT_VERSION, "kind": "scorer", "scorer": scorer.kind,
        "models": list(scorer.models), "output": "quality", "tokenizer": tokenizer,
        "answer_features": {"version": ANSWER_FEATURES_VERSION, "names": list(ANSWER_FEATURES)}
        if scorer.kind == "static" and scorer.config.scorer.answer_features else None,
        "training": {"config": scorer.config.to_flat(), "data_fingerprint": manifest_in.get("data_fingerprint"),
                     "mlflow_run_id": manifest_in.get("mlflow_run_id")},
        "metrics": {part: {k: v for k, v in metrics.get(part, {}).items() if k.startswith("scorer_auc")}
                    for part in ("val", "test")},
        "files": {},
    }
    _write_manifest(stage, manifest)
    runtime = AnswerScorer.load(stage)
    prompts, models, responses = ([t[k] for t in triples] for k in ("prompt", "model", "response"))
    got = runtime.score_many(prompts, models, responses)
    columns = np.array([scorer.models.index(m) for m in models])
    expected = _torch_scores(graph, runtime, prompts, responses, columns)
    trained = scorer.predict(prompts, columns, responses)
    report.update(fp32_max_abs_diff=float(np.max(np.abs(expected - got))),
                  trained_max_abs_diff=float(np.max(np.abs(trained - got))), cpu=cpu_features())
    for key, what in (("fp32_max_abs_diff", "the torch graph"), ("trained_max_abs_diff", "the trained scorer")):
        if report[key] > FP32_TOLERANCE:
            raise ExportError(f"parity check failed: the ONNX scorer differs from {what} by {report[key]:.2e} "
                              f"(> {FP32_TOLERANCE}); nothing written")
    pick = np.sort(np.random.default_rng(0).choice(len(triples), min(SAMPLE_SIZE, len(triples)), replace=False))
    sample = parity_document([triples[i] for i in pick], got[pick], FP32_TOLERANCE)
    (stage / "parity_sample.json").write_text(json.dumps(sample), encoding="utf-8")
    manifest["parity"] = report
    manifest["parity_sample"] = {"file": "parity_sample.json", "triples": len(pick), "tolerance": FP32_TOLERANCE}
    _write_manifest(stage, manifest)
    return report


def _torch_scores(graph: nn.Module, runtime: AnswerScorer, prompts: list[str], responses: list[str],
                  columns: np.ndarray) -> np.ndarray:
    """The torch graph's score of each pair, one pair per call on the runtime's inputs."""
    out = np.zeros(len(prompts))
    graph.eval()
    with torch.no_grad():
        for k, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            inputs = runtime.encode([p], [r])
            out[k] = float(graph(*(torch.from_numpy(x) for x in inputs.values()))[0, columns[k]])
    return out


def _write_manifest(stage: Path, manifest: dict[str, Any]) -> None:
    names = (SCORER_GRAPH, "tokenizer.json", "parity_sample.json")
    manifest["files"] = {name: file_sha256(stage / name) for name in names if (stage / name).exists()}
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=1))
