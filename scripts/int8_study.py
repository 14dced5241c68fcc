"""Which int8 weight format routes the same on every CPU: route changes, and AVX2 saturation, per format.

For an fp32 router artifact and its parity prompts, quantizes the graph (dynamic, per-channel, the
exporter's first rung: MatMul + Attention of a fused encoder) three ways - full-range int8 weights
(U8S8), 7-bit int8 weights (``reduce_range``) and uint8 weights (U8U8) - and reports for each:

* the share of parity prompts whose routed model changes against the fp32 graph, on this CPU;
* an emulation of onnxruntime's AVX2 (no VNNI) U8S8 kernel on the real quantized weights and the real
  dynamically quantized activations of ``--emulate`` prompts: ``vpmaddubsw`` adds each pair of
  uint8 x int8 products (adjacent k) into a saturating int16, so it counts the pair sums outside
  [-32768, 32767], the matrix-product outputs with at least one clamped pair, and the largest output
  error that clamping causes (relative to the output's fp32 spread). VNNI/AMX/ARM add in exact int32;
  U8U8 runs a kernel that widens to int16 and adds with ``vpmaddwd`` (exact), so nothing clamps there.

Each variant is left as an artifact under ``--out`` for ``scripts/bench_runtime.py --compare``.

    python scripts/int8_study.py --artifact /tmp/ef-fp32 --prompts CHECKPOINT/parity_prompts.json --out /tmp/int8-study
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

VARIANTS = {"qint8": {"weight_type": "QInt8", "reduce_range": False},
            "qint8_reduce_range": {"weight_type": "QInt8", "reduce_range": True},
            "quint8": {"weight_type": "QUInt8", "reduce_range": False}}
ODD = ["", "   ", "\U0001F600 \x00 control", "x" * 50_000]  # the exporter's degenerate parity inputs


def quantize(fp32: Path, out: Path, weight_type: str, reduce_range: bool) -> list[str]:
    """A copy of the fp32 artifact with its graph quantized as the exporter's first rung would."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from router_ml.router import file_sha256

    manifest = json.loads((fp32 / "manifest.json").read_text())
    ops = ["MatMul", "Attention"] if (manifest.get("parity") or {}).get("fused_operators") else ["MatMul"]
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(fp32, out)
    quantize_dynamic(str(fp32 / "router.onnx"), str(out / "router.onnx"), per_channel=True,
                     weight_type=QuantType[weight_type], reduce_range=reduce_range, op_types_to_quantize=ops,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    manifest.update(quantization="int8")
    manifest.pop("parity_sample", None)
    weights = {"per_channel": True, "weight_type": weight_type, "reduce_range": reduce_range}
    manifest["parity"] = {**manifest.get("parity", {}), "int8_operators": ops, "int8_weights": weights}
    manifest["files"] = {n: file_sha256(out / n) for n in ("router.onnx", "tokenizer.json")}
    (out / "parity_sample.json").unlink(missing_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return ops


#: integer matrix products: (weight zero-point input index) - input 0 is the activation, input 1 the weight
INTEGER_OPS = {"MatMulInteger": 3, "DynamicQuantizeMatMul": 3, "QAttention": 7}


def quantized_nodes(q_graph: Path) -> tuple[list[dict], bytes]:
    """Every integer matrix product of the quantized graph - its activation input (uint8 where a
    DynamicQuantizeLinear made it, else float), its int8/uint8 weight and weight zero point - and the
    graph with those activations exposed as outputs."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(q_graph))
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    nodes, known = [], {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type not in INTEGER_OPS or node.input[1] not in inits:
            continue
        zp_index = INTEGER_OPS[node.op_type]
        zp_name = node.input[zp_index] if len(node.input) > zp_index else ""
        weight = inits[node.input[1]].astype(np.int32)
        zero = inits[zp_name].astype(np.int32) if zp_name in inits else np.zeros(weight.shape[-1], np.int32)
        quantized = producers.get(node.input[0]) == "DynamicQuantizeLinear"
        nodes.append({"name": node.name, "op": node.op_type, "input": node.input[0], "quantized_input": quantized,
                      "weight": weight, "zero_point": np.broadcast_to(zero, (weight.shape[-1],))})
        if node.input[0] not in known:
            elem = onnx.TensorProto.UINT8 if quantized else onnx.TensorProto.FLOAT
            model.graph.output.append(onnx.helper.make_tensor_value_info(node.input[0], elem, None))
            known.add(node.input[0])
    return nodes, model.SerializeToString()


def activations(graph: bytes, nodes: list[dict], feeds: list[dict]) -> list[list[np.ndarray]]:
    """Each node's uint8 activations (T, K), as its kernel receives them, for each feed."""
    import onnxruntime as ort

    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    out = []
    for feed in feeds:
        values = session.run([n["input"] for n in nodes], feed)
        out.append([(v if n["quantized_input"] else dynamic_uint8(v)).reshape(-1, v.shape[-1]).astype(np.int32)
                    for n, v in zip(nodes, values, strict=True)])
    return out


def dynamic_uint8(x: np.ndarray) -> np.ndarray:
    """onnxruntime's DynamicQuantizeLinear: per tensor, asymmetric uint8, a range that includes 0."""
    low, high = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (high - low) / 255 or 1.0
    zero = np.clip(np.round(-low / scale), 0, 255)
    return np.clip(np.round(x / scale) + zero, 0, 255).astype(np.int32)


def emulate_avx2(a: np.ndarray, w: np.ndarray, rows: int = 16) -> dict:
    """vpmaddubsw on (uint8 activations a: (T, K), int8 weights w: (K, N)): saturated pair sums and the
    accumulator error they cause, in units of the exact int32 accumulators' spread."""
    k = a.shape[1] - a.shape[1] % 2
    pairs = saturated = outputs_hit = 0
    worst = 0.0
    exact_all = []
    for start in range(0, a.shape[0], rows):
        chunk = a[start:start + rows, :k]
        s = chunk[:, 0::2, None] * w[None, 0:k:2, :] + chunk[:, 1::2, None] * w[None, 1:k:2, :]
        clipped = np.clip(s, -32768, 32767)
        over = s != clipped
        pairs += s.size
        saturated += int(over.sum())
        outputs_hit += int(over.any(axis=1).sum())
        exact = s.sum(axis=1)
        exact_all.append(exact)
        worst = max(worst, float(np.abs(exact - clipped.sum(axis=1)).max()))
    spread = float(np.concatenate(exact_all).std()) or 1.0
    outputs = a.shape[0] * w.shape[1]
    return {"pairs": pairs, "saturated": saturated, "outputs": outputs, "outputs_hit": outputs_hit,
            "max_error_in_spreads": worst / spread}


def main() -> None:
    from router_ml.cli import bounded

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--artifact", required=True, type=Path, help="an fp32 router artifact")
    parser.add_argument("--prompts", required=True, type=Path, help="parity prompts (JSON list)")
    parser.add_argument("--out", required=True, type=Path, help="where to leave one artifact per variant")
    parser.add_argument("--emulate", type=bounded(int, 0), default=16,
                        help="prompts for the AVX2 saturation emulation (default 16; 0 = none)")
    args = parser.parse_args()

    from router_ml import Router
    from router_ml.parity import cpu_features, scores_one_by_one
    from router_ml.policy import choose

    texts = json.loads(args.prompts.read_text()) + ODD
    fp32 = Router.load(args.artifact, intra_op_threads=2)
    costs, wtp = fp32.costs(texts), fp32.willingness_to_pay
    reference = scores_one_by_one(fp32, texts)  # one prompt per call, as route() and the exporter score
    base = choose(reference, costs, wtp)
    sample = texts[:args.emulate]
    names = fp32._input_names
    feeds = [{names[0]: ids[None], names[1]: mask[None]} for ids, mask in map(fp32.encode, sample)]
    report = {"cpu": cpu_features(), "prompts": len(texts), "emulated_prompts": len(sample), "variants": {}}
    for name, setting in VARIANTS.items():
        out = args.out / name
        ops = quantize(args.artifact, out, **setting)
        q8 = Router.load(out, intra_op_threads=2)
        scores = scores_one_by_one(q8, texts)
        changed = choose(scores, costs, wtp) != base
        nodes, exposed = quantized_nodes(out / "router.onnx")
        values = activations(exposed, nodes, feeds)
        totals = {"pairs": 0, "saturated": 0, "outputs": 0, "outputs_hit": 0, "max_error_in_spreads": 0.0}
        unsigned = setting["weight_type"] == "QUInt8"
        max_weight = max((int(np.abs(n["weight"] - n["zero_point"]).max()) for n in nodes), default=0)
        for per_prompt in values if not unsigned else []:  # the U8U8 kernel does not use vpmaddubsw
            for node, a in zip(nodes, per_prompt, strict=True):
                got = emulate_avx2(a, node["weight"].reshape(a.shape[1], -1))
                for key in ("pairs", "saturated", "outputs", "outputs_hit"):
                    totals[key] += got[key]
                totals["max_error_in_spreads"] = max(totals["max_error_in_spreads"], got["max_error_in_spreads"])
        report["variants"][name] = {
            **setting, "operators": ops, "quantized_nodes": len(nodes), "max_abs_weight": max_weight,
            "changed_routes": int(changed.sum()), "changed_share": round(float(changed.mean()), 4),
            "max_abs_diff": round(float(np.abs(scores - reference).max()), 4),
            "avx2_emulation": None if setting["weight_type"] == "QUInt8" else {
                **totals, "saturated_share": totals["saturated"] / max(totals["pairs"], 1),
                "outputs_hit_share": totals["outputs_hit"] / max(totals["outputs"], 1)}}
        print(json.dumps({name: report["variants"][name]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
