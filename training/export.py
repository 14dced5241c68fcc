"""Exporting a trained router to a self-describing ONNX artifact directory (no pickle anywhere).

The artifact holds one ONNX graph from token ids to per-model predicted quality (featurizer and
head in one graph: for ``static`` routers the embedding-table gather, masked mean, L2 norm and the
MLP/MF head; for ``encoder`` routers the transformer and head), the tokenizer, and
``manifest.json``: format version, router kind, model names in output order, tokenizer settings,
the policy (cost model, default willingness to pay), prices, limits, the training config, data
fingerprint, MLflow run id, headline metrics and the sha256 of every file.

Before writing, the exporter checks parity on held-out prompts: fp32 outputs within 1e-4 of torch
(a graph with a hard top-k - the auto router's kNN - on all but at most 1% of prompts: see
:func:`check_fp32`), and for ``--quantize int8`` (dynamic, per-channel, 7-bit weights: see :func:`_quantize_int8`) the
routed model may change on at most 1% of prompts at the default knob. A failing artifact is not
written. The artifact keeps a sample of those prompts with the fp32 reference scores and the CPU
features the check ran on (``parity_sample.json``), so that ``Router.load(..., verify=True)`` can
repeat the check on the machine that deploys it.

The artifact is built in a hidden sibling directory of ``out`` and swapped in whole (an atomic
exchange on Linux), so a crash or a failed check never leaves a broken or missing artifact where a
good one was.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from router_ml.errors import RouterMLError
from router_ml.formats import VERSION_FIELD
from router_ml.parity import SAMPLE_FILE, cpu_features, sample_document, scores_one_by_one
from router_ml.policy import CostModel, choose, wtp_from_json, wtp_to_json
from router_ml.router import ARTIFACT_FORMAT, ARTIFACT_VERSION, Router, file_sha256
from training.checkpoint import checked_checkpoint
from training.data.loader import lies_within
from training.evaluation import read_metrics_file

__all__ = ["ExportError", "export_router"]

FP32_TOLERANCE = 1e-4
INT8_MAX_CHANGED = 0.01
#: a top-k graph's k-th and (k+1)-th cosine similarities closer than this are a tie to float rounding: torch and
#: onnxruntime may order them either way. Every prompt that differed in the exports measured had a gap of at
#: most 7.2e-7 (float32 steps near 1 are 6e-8); a wrong graph moves prompts whatever their gap.
TIE_GAP = 1e-5
#: prompts kept in the artifact for ``Router.load(..., verify=True)``: enough that a drift of a few
#: percent shows (4% of 256 is 10 routes against a limit of 2), few enough to re-score in seconds
SAMPLE_SIZE = 256


class ExportError(RouterMLError):
    """The router cannot be exported, or its export failed the parity check."""


class StaticGraph(nn.Module):
    """Token ids -> mean of static embeddings (masked, L2-normalised) -> head -> predicted quality (the head's
    sigmoid, or the probabilities a mixing head gives directly: ``training.routers.neural.probabilities``).

    The masked sum is one batched MatMul, ``(B, 1, T) @ (B, T, D)``: the Mul + ReduceSum it replaces
    made two more passes over the gathered ``(B, T, D)`` rows and ran 3x slower at 256 tokens in
    onnxruntime. When the features are L2-normalised the mean's division by the token count cancels,
    so it is left out (two nodes fewer; outputs equal to the mean's within float rounding, ~1e-7).
    The gather itself stays: no standard ONNX op pools embedding rows without materialising them
    (EmbeddingBag exports as a Loop; a one-hot or segment MatMul costs vocab- or batch-times more).
    """

    def __init__(self, table: np.ndarray, head: nn.Module, normalize: bool):
        super().__init__()
        self.register_buffer("table", torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32)))
        self.head = head
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from training.routers.neural import probabilities

        pooled = static_pool(self.table, input_ids, attention_mask, self.normalize)
        if getattr(self.head, "reads_tokens", False):  # a lexical head (training/routers/lexical.py)
            return probabilities(self.head, pooled, input_ids, attention_mask)
        return probabilities(self.head, pooled)


def static_pool(table: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                normalize: bool) -> torch.Tensor:
    """The static featurizer's pooling as graph ops (see :class:`StaticGraph`): ``(B, D)``."""
    mask = attention_mask.to(torch.float32).unsqueeze(1)  # (B, 1, T)
    pooled = torch.bmm(mask, table[input_ids]).squeeze(1)  # (B, D) masked sum
    if normalize:  # an all-masked row stays zero: 0 / 1e-12
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return pooled / mask.sum(dim=-1).clamp_min(1.0)


class EncoderGraph(nn.Module):
    """The encoder router without its dynamic padding trim (the runtime sends unpadded prompts)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from training.routers.neural import probabilities

        hidden = self.module.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return probabilities(self.module.head, pooled)


def _static_parts(checkpoint: Path, router) -> tuple[nn.Module, Path, dict[str, Any]]:
    from training.featurizers import get_featurizer

    config = router.config
    featurizer = get_featurizer(config.featurizer.name, max_tokens=config.featurizer.max_tokens)
    saved = json.loads((checkpoint / "featurizer.json").read_text())
    if saved.get("kind") != "static" or saved.get("files") != featurizer.identity()["files"]:
        raise ExportError(f"{checkpoint}: only routers over the 'static' featurizer (or the encoder router) export "
                          f"to one ONNX graph; this one was trained on {saved.get('kind')!r} features")
    graph = StaticGraph(featurizer.embedding_table, router.module_, featurizer.normalize)
    tokenizer = {"file": "tokenizer.json", "add_special_tokens": False, "drop_ids": [featurizer.unk_id],
                 "max_tokens": featurizer.max_tokens, "head": featurizer.head, "max_chars": featurizer.max_chars,
                 "truncation": "head_tail"}
    return graph, featurizer.tokenizer_path, tokenizer


def _encoder_parts(router, workdir: Path) -> tuple[nn.Module, Path, dict[str, Any]]:
    from transformers import AutoTokenizer

    encoder = router.module_.encoder
    if hasattr(encoder, "set_attn_implementation"):  # eager attention exports to the pattern onnxruntime fuses
        encoder.set_attn_implementation("eager")

    tok = AutoTokenizer.from_pretrained(router.checkpoint())
    if not getattr(tok, "is_fast", False):
        raise ExportError("the encoder's tokenizer has no fast (tokenizers) version to ship")
    tok.save_pretrained(workdir / "tok")
    # the limits training and evaluation read prompts with (EncoderRouter.tokenize): one rule everywhere
    tokenizer = {"file": "tokenizer.json", "add_special_tokens": True, "drop_ids": [], **router.input_limits(),
                 "truncation": "head_tail"}
    return EncoderGraph(router.module_), workdir / "tok" / "tokenizer.json", tokenizer


def _export_onnx(graph: nn.Module, path: Path, inputs: dict[str, torch.Tensor] | None = None,
                 dynamic_axes: dict[str, dict[int, str]] | None = None) -> None:
    """Export ``graph`` to ``path``; ``inputs`` (example tensors by input name) and ``dynamic_axes``
    default to a router's ``input_ids`` / ``attention_mask`` of any batch and length."""
    graph.eval()
    if inputs is None:
        inputs = {name: torch.ones((2, 8), dtype=torch.int64) for name in ("input_ids", "attention_mask")}
        dynamic_axes = {name: {0: "batch", 1: "tokens"} for name in inputs}
    dynamic_axes = {**(dynamic_axes or {}), "quality": {0: "batch"}}
    # the TorchScript exporter: the dynamo one needs onnxscript and gains nothing for these graphs;
    # torch 2.13 marks the former deprecated with two warnings that say nothing actionable here.
    # Tracing a transformers encoder warns about data-dependent Python branches (padding, index
    # ops); the parity check over prompts of every length is what shows the graph is right, and a
    # warnings-as-errors filter would otherwise abort the trace from inside torch's C code.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator", category=UserWarning)
        torch.onnx.export(graph, tuple(inputs.values()), str(path), input_names=list(inputs),
                          output_names=["quality"], dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)


def _fuse_transformer(path: Path, config: Any) -> dict[str, int]:
    """Fuse a BERT-family graph in place with onnxruntime's transformer optimizer (attention,
    embedding + LayerNorm, skip-LayerNorm and bias-GELU kernels; measured 1.3x faster fp32 and
    1.3-1.5x faster int8 for MiniLM-L6 at 64 tokens on 2 threads). Returns the fused operator
    counts; the graph is left unchanged when nothing fuses."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1)
    fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    if fused:
        model.save_model_to_file(str(path))
    return fused


def _torch_predict(graph: nn.Module, router: Router, texts: list[str]) -> np.ndarray:
    """The torch graph's scores, one prompt per call. A static graph runs on one thread: its ops on one
    prompt are microseconds, and a second thread only adds hand-offs - on a loaded 2-core machine they
    made the auto router's ensemble (five heads, a kNN gather) 95 s for 1,000 prompts."""
    out = []
    previous = torch.get_num_threads()
    if isinstance(graph, StaticGraph):
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for text in texts:
                ids, mask = router.encode(text)
                out.append(graph(torch.from_numpy(ids[None, :]), torch.from_numpy(mask[None, :])).numpy()[0])
    finally:
        torch.set_num_threads(previous)
    return np.stack(out)


def export_router(checkpoint: str | Path, out: str | Path, *, parity_texts: list[str] | None = None,
                  quantize: str | None = None, default_willingness: float | None = None) -> dict[str, Any]:
    """Export the router trained into ``checkpoint`` (a ``router-ml train`` directory) to ``out``.

    Returns the parity report. ``parity_texts`` default to the held-out prompts the checkpoint saved.
    An existing artifact at ``out`` is replaced only once the new one has passed every check.
    """
    from training.routers import TorchRouter

    checkpoint, out = Path(checkpoint), Path(out)
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize takes int8, got {quantize!r}")
    manifest_in = checked_checkpoint(checkpoint)
    router = TorchRouter.load(checkpoint)
    texts = parity_texts
    if texts is None:
        parity_file = checkpoint / "parity_prompts.json"
        texts = json.loads(parity_file.read_text()) if parity_file.exists() else []
    if not texts:
        raise ExportError(f"{checkpoint}: no held-out prompts for the parity check (parity_prompts.json)")
    texts = texts + ["", "   ", "\U0001F600 \x00 control", "x" * 50_000]  # degenerate inputs must agree too
    _check_replaceable(out, checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))  # same filesystem as out
    try:
        stage = work / "artifact"
        stage.mkdir()
        report = _build(router, checkpoint, manifest_in, stage, work, texts, quantize, default_willingness)
        _fsync_tree(stage)
        _swap_in(stage, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the staging files, or the artifact that was replaced
    return report


def _build(router, checkpoint: Path, manifest_in: dict[str, Any], stage: Path, work: Path, texts: list[str],
           quantize: str | None, default_willingness: float | None) -> dict[str, Any]:
    """Write the artifact into ``stage`` and return its parity report; raise before anything is swapped in."""
    from training.routers import EncoderRouter

    if isinstance(router, EncoderRouter):
        graph, tokenizer_file, tokenizer = _encoder_parts(router, work)
    else:
        graph, tokenizer_file, tokenizer = _static_parts(checkpoint, router)
    shutil.copyfile(tokenizer_file, stage / "tokenizer.json")
    _export_onnx(graph, stage / "router.onnx")
    report: dict[str, Any] = {"prompts": len(texts)}
    if isinstance(router, EncoderRouter):  # the fused graph goes through the same parity checks
        report["fused_operators"] = _fuse_transformer(stage / "router.onnx", router.module_.encoder.config)
    cost_model = CostModel.from_dict(json.loads((checkpoint / "cost_model.json").read_text()))
    saved = read_metrics_file(checkpoint / "metrics.json")
    metrics = saved["test"]
    prices_file = checkpoint / "prices.json"
    wtp = default_willingness
    if wtp is None:
        wtp = default_knob(saved)
    manifest = {
        "format": ARTIFACT_FORMAT,
        VERSION_FIELD: ARTIFACT_VERSION,
        "router": manifest_in["router"],
        "featurizer": manifest_in["featurizer"],
        "models": manifest_in["models"],
        "output": "quality",
        "tokenizer": tokenizer,
        "policy": {"name": "utility", "willingness_to_pay": wtp_to_json(wtp),
                   "cost_model": cost_model.to_dict()},
        "prices": json.loads(prices_file.read_text()) if prices_file.exists() else None,
        "limits": {"max_tokens": tokenizer["max_tokens"], "max_chars": tokenizer["max_chars"]},
        "training": {"config": json.loads((checkpoint / "config.json").read_text()),
                     "data_fingerprint": manifest_in.get("data_fingerprint"),
                     "mlflow_run_id": manifest_in.get("mlflow_run_id")},
        "metrics": {k: metrics.get(k) for k in ("aiq", "savings_at_iso_quality", "best_quality", "apgr",
                                                "cpt_50", "cpt_80") if metrics.get(k) is not None},
        "quantization": quantize,
        "files": {},
    }
    _write_manifest(stage, manifest)
    fp32 = Router.load(stage)
    expected = _torch_predict(graph, fp32, texts)
    got = fp32.predict(texts)
    costs = fp32.costs(texts)  # the runtime's estimate: the whole prompt, priced by the checkpoint's cost model
    report.update(check_fp32(expected, got, discrete=_has_top_k(graph),
                             rank_gaps=lambda rows: _rank_gaps(graph, fp32, [texts[i] for i in rows]),
                             routes_changed=float(np.mean(choose(expected, costs, wtp) != choose(got, costs, wtp)))))
    reference = exported = scores_one_by_one(fp32, texts)  # route()'s view: one prompt per call
    if quantize == "int8":
        exported = _quantize_int8(work, stage, manifest, report, texts=texts, fp32_out=reference, costs=costs,
                                  wtp=wtp)
    report["cpu"] = cpu_features()
    changed = choose(exported, costs, wtp) != choose(reference, costs, wtp)
    pick = _sample(changed)
    sample = sample_document([texts[i] for i in pick], reference[pick], exported[pick], willingness_to_pay=wtp,
                             limit=INT8_MAX_CHANGED, changed_at_export=int(changed[pick].sum()))
    (stage / SAMPLE_FILE).write_text(json.dumps(sample), encoding="utf-8")
    manifest["parity"] = report
    manifest["parity_sample"] = {"file": SAMPLE_FILE, "prompts": len(pick), "limit": INT8_MAX_CHANGED}
    _write_manifest(stage, manifest)
    return report


def _has_top_k(graph: nn.Module) -> bool:
    """Whether the graph picks neighbours with a hard top-k (the auto router's kNN head)."""
    from training.routers.heads import KNNHead

    return any(isinstance(m, KNNHead) for m in graph.modules())


def check_fp32(expected: np.ndarray, got: np.ndarray, *, discrete: bool, routes_changed: float,
               rank_gaps: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """The fp32 parity verdict of ONNX scores ``got`` against torch's ``expected`` (prompts x models).

    Every prompt must agree within :data:`FP32_TOLERANCE`, except in a graph with a hard top-k
    (``discrete``): there two neighbours whose similarities differ by float rounding (~1e-7) can
    trade places at the k-th rank between torch's and onnxruntime's MatMul, which moves that prompt's
    mean by up to 1/k - no fp32 graph can avoid it. ``rank_gaps(rows)`` gives torch's gap between the
    k-th and (k+1)-th similarity of the differing prompts ``rows``; where it is within :data:`TIE_GAP`
    the prompt is at a tie and its difference is explained,
    however many they are (long prompts sum more rounding into the features, and more of them tie).
    Such a graph passes when at most :data:`INT8_MAX_CHANGED` of the prompts differ without a tie and at
    most as many change route at the default knob (the int8 rule). Raises :class:`ExportError` otherwise;
    returns the report's fields."""
    diff = np.abs(expected - got).max(axis=1) if len(expected) else np.zeros(0)
    report = {"fp32_max_abs_diff": float(diff.max(initial=0.0))}
    if report["fp32_max_abs_diff"] <= FP32_TOLERANCE:
        return report
    over = diff > FP32_TOLERANCE
    if not discrete:
        raise ExportError(f"parity check failed: ONNX differs from torch by {report['fp32_max_abs_diff']:.2e} "
                          f"(> {FP32_TOLERANCE}); nothing written")
    at_tie = np.zeros(len(diff), dtype=bool)
    if rank_gaps is not None:
        rows = np.flatnonzero(over)
        at_tie[rows] = np.asarray(rank_gaps(rows)) < TIE_GAP
    off, unexplained = float(np.mean(over)), float(np.mean(over & ~at_tie))
    report.update(fp32_prompts_over_tolerance=off, fp32_prompts_at_a_tie=float(np.mean(at_tie)),
                  fp32_routes_changed=routes_changed)
    if unexplained > INT8_MAX_CHANGED or routes_changed > INT8_MAX_CHANGED:
        raise ExportError(f"parity check failed: ONNX differs from torch by more than {FP32_TOLERANCE} on {off:.1%} "
                          f"of prompts ({unexplained:.1%} without a tie at the k-th neighbour) and changes "
                          f"{routes_changed:.1%} of routes (a top-k graph may differ without a tie on at most "
                          f"{INT8_MAX_CHANGED:.0%}, and change at most as many routes); nothing written")
    return report


def _rank_gaps(graph: StaticGraph, router: Router, texts: list[str]) -> np.ndarray:
    """Per prompt, the smallest gap between the k-th and (k+1)-th cosine similarity over the graph's kNN
    heads (``inf`` where a head stores no more than k prompts), on the pooled features of the prompt as the
    runtime encodes it - what every head of a static graph reads."""
    from training.routers.heads import KNNHead

    heads = [m for m in graph.modules() if isinstance(m, KNNHead)]
    gaps = np.full(len(texts), np.inf)
    with torch.no_grad():
        for row, text in enumerate(texts):
            ids, mask = router.encode(text)
            pooled = static_pool(graph.table, torch.from_numpy(ids[None, :]), torch.from_numpy(mask[None, :]),
                                 graph.normalize)
            gaps[row] = min((head.rank_gap(pooled) for head in heads), default=np.inf)
    return gaps


def _sample(changed: np.ndarray, size: int = SAMPLE_SIZE) -> np.ndarray:
    """Indices of the parity prompts to keep in the artifact, stratified by whether the exported graph
    changed the route there: the sample's share of changed routes is the full check's, rounded down,
    so a graph that passed the full check also passes its sample where it was exported, and every
    route that changes elsewhere counts against the same limit. Seeded: the same prompts every export."""
    n = len(changed)
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(0)
    moved, kept = np.flatnonzero(changed), np.flatnonzero(~changed)
    k = min(len(moved), int(len(moved) * size // n), size)
    pick = np.concatenate([rng.choice(moved, k, replace=False), rng.choice(kept, size - k, replace=False)])
    return np.sort(pick)


def _check_replaceable(out: Path, checkpoint: Path) -> None:
    """Refuse to replace anything but an exported artifact (a checkpoint holds a manifest.json too, and
    replacing it would delete the weights the export reads), and never ``checkpoint`` or a folder above it."""
    if lies_within(checkpoint, out):
        raise ExportError(f"{out}: is the checkpoint {checkpoint} or a folder holding it, which the export would "
                          f"replace; choose another --out (e.g. {checkpoint / 'artifact'})")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    what = "not a directory" if not out.is_dir() else "no manifest.json"
    if out.is_dir() and (out / "manifest.json").is_file():
        try:
            fmt = json.loads((out / "manifest.json").read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            fmt = None
        if fmt == ARTIFACT_FORMAT:
            return
        what = f"its manifest.json is {fmt!r}, not {ARTIFACT_FORMAT!r}" if fmt else "its manifest.json is unreadable"
    raise ExportError(f"{out}: exists and is not an exported router artifact ({what}); choose another --out "
                      f"or remove it")


def _fsync_tree(directory: Path) -> None:
    """Flush the staged files to disk before the rename makes them the artifact (a crash after the
    rename must not find empty files under the new names)."""
    for path in [*directory.iterdir(), directory]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    platform, libc or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(stage: Path, out: Path) -> None:
    """Make ``stage`` the artifact at ``out``; a replaced artifact ends up at ``stage``'s path.

    A new ``out`` is one rename. An existing one is exchanged atomically where Linux allows; elsewhere
    it is moved aside, the new one renamed in, and the old one moved back if that fails - the window
    without an artifact at ``out`` is two renames long, and the old one is never deleted before the
    new one is in place."""
    if not out.exists():
        os.rename(stage, out)
    elif not _exchange(stage, out):
        aside = stage.with_name(stage.name + ".replaced")
        os.rename(out, aside)
        try:
            os.rename(stage, out)
        except OSError:
            os.rename(aside, out)
            raise
        os.rename(aside, stage)


def _down_projections(path: Path) -> list[str]:
    """MatMul nodes whose constant weight maps more inputs to fewer outputs: in a transformer the FFN
    output projections (4h -> h), whose inputs - the GELU activations - carry the outlier channels
    that make per-tensor int8 activations lose most (Bondarenko et al., 2021), plus the small heads."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2
            and len(shapes.get(n.input[1], ())) == 2 and shapes[n.input[1]][0] > shapes[n.input[1]][1]]


#: the weight format of every int8 export: see :func:`_quantize_int8`
INT8_WEIGHTS = {"weight_type": "QInt8", "reduce_range": True}


def _quantize_int8(work: Path, stage: Path, manifest: dict[str, Any], report: dict[str, Any], *, texts: list[str],
                   fp32_out: np.ndarray, costs: np.ndarray, wtp: float) -> np.ndarray:
    """Dynamic per-channel int8 weights, checked against the fp32 routes at the default knob; returns
    the kept graph's scores.

    Weights are 7-bit (``reduce_range``: |w| <= 64), so the result does not depend on the CPU's int8
    instructions. With AVX2 (or AVX-512 without VNNI) onnxruntime multiplies uint8 activations by
    int8 weights with ``vpmaddubsw``, which adds each pair of products into a saturating int16: with
    full-range weights a pair can reach 2 * 255 * 127 = 64770 and is clamped, so the same graph
    routed 4-5% of prompts differently there than on the VNNI machine that validated it. With |w| <=
    64 a pair is at most 2 * 255 * 64 = 32640 < 32767: every kernel (vpmaddubsw, VNNI, AMX, ARM)
    computes the same exact int32 sums. Measured on the encoder_fast seed-0 router (README, "int8 on
    every CPU"; AVX-512 VNNI, 2 threads, 64 tokens, one run): all-int8 7-bit weights changed 2.0% of
    1,004 routes (full range: 1.0%), so the ladder keeps its second rung - 0.7%, 3.85 ms p50 against
    3.04 ms for the old full-range graph and 5.55 ms fp32; uint8 weights (U8U8, also exact) changed
    0.9% all-int8 but ran slower (4.30 ms) than that rung.

    Tried from fastest to most exact, the first that changes at most 1% of routes is kept: a fused
    encoder's MatMul and Attention nodes; the same with the down-projections (:func:`_down_projections`)
    left in fp32; MatMul only; MatMul only without the down-projections. Embedding tables stay fp32:
    an int8 table for the static gather moves features more than it saves (it failed the check on the
    demo data). Contrib-op outputs have no inferred type, hence the default tensor type."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = work / "fp32.onnx"
    shutil.copyfile(stage / "router.onnx", source)
    down = _down_projections(source)
    ops_ladder = [["MatMul", "Attention"], ["MatMul"]] if report.get("fused_operators") else [["MatMul"]]
    candidates = [(ops, keep) for ops in ops_ladder for keep in ([], down) if not keep or down]
    fp32_routes = choose(fp32_out, costs, wtp)
    tried = []
    for ops, keep in candidates:
        quantize_dynamic(str(source), str(stage / "router.onnx"), per_channel=True,
                         weight_type=QuantType[INT8_WEIGHTS["weight_type"]], reduce_range=INT8_WEIGHTS["reduce_range"],
                         op_types_to_quantize=ops, nodes_to_exclude=keep,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        _write_manifest(stage, manifest)
        q8 = scores_one_by_one(Router.load(stage), texts)  # activations are quantized per call: one prompt each
        changed = float(np.mean(choose(q8, costs, wtp) != fp32_routes))
        label = "+".join(ops) + (f" (down-projections fp32: {len(keep)})" if keep else "")
        tried.append(f"{label}: {changed:.1%}")
        if changed <= INT8_MAX_CHANGED:
            report.update(int8_max_abs_diff=float(np.max(np.abs(q8 - fp32_out))), int8_changed_routes=changed,
                          int8_operators=ops, int8_fp32_nodes=keep, int8_tried=tried,
                          int8_weights={"per_channel": True, **INT8_WEIGHTS})
            return q8
    raise ExportError(f"int8 parity check failed: the routed model changed on more than {INT8_MAX_CHANGED:.0%} of "
                      f"prompts ({'; '.join(tried)}); nothing written")


def default_knob(metrics: dict[str, Any]) -> float:
    """A trained run's default knob from its ``metrics.json``: :func:`_default_willingness` on its
    ``knob_curve`` where the run wrote one (the test split and the router's own held-out predictions on
    the training records: ``training.pipeline.knob_curve``), else on its test curve."""
    return _default_willingness(metrics.get("knob_curve") or metrics["curve"])


def _default_willingness(curve: dict[str, list]) -> float:
    """The default knob: the cheapest point of the held-out curve within 0.005 of its best quality -
    near-best answers without paying for the last fraction of a point."""
    quality = np.asarray(curve["quality"], dtype=float)
    cost = np.asarray(curve["cost"], dtype=float)
    ok = np.flatnonzero(quality >= quality.max() - 0.005)
    best = ok[np.argmin(cost[ok])]
    return wtp_from_json(curve["willingness_to_pay"][best])


def _write_manifest(stage: Path, manifest: dict[str, Any]) -> None:
    names = ("router.onnx", "tokenizer.json", SAMPLE_FILE)
    manifest["files"] = {name: file_sha256(stage / name) for name in names if (stage / name).exists()}
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=1))
