"""The artifact's parity sample: routes that must hold on the machine that loads the router.

An int8 graph's integer matrix products run on whatever kernel onnxruntime picks for the CPU, and
they are not the same everywhere: with AVX2 (or AVX-512 without VNNI), ``vpmaddubsw`` adds each pair
of uint8 x int8 products into a *saturating* int16, while VNNI, AMX and ARM accumulate exactly in
int32. A full-range int8 export validated on a VNNI machine changed 4-5% of routes on an AVX2-only
one. So the exporter stores a small sample of its parity prompts with the fp32 graph's reference
scores (``parity_sample.json``, covered by the manifest's checksums) and the CPU features it ran
on, and ``Router.load(..., verify=True)`` re-scores the sample on the loading machine and refuses a
graph whose routes drift past the limit there.
"""

from __future__ import annotations

import math
import platform
from typing import Any

import numpy as np

from router_ml.errors import RouterMLError
from router_ml.formats import VERSION_FIELD, read_versioned
from router_ml.policy import choose, wtp_from_json

__all__ = ["INT8_FLAGS", "SAMPLE_FILE", "check_sample", "cpu_features", "sample_document", "scores_one_by_one"]

SAMPLE_FILE = "parity_sample.json"
SAMPLE_FORMAT = "router-ml-parity-sample"
SAMPLE_VERSION = 1
#: the x86 flags that decide which int8 GEMM kernel onnxruntime (MLAS) runs
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def _kernel(machine: str, flags: set[str]) -> str:
    """The kind of uint8 x int8 dot product this CPU gives onnxruntime, and whether it is exact."""
    if machine.lower() in ("arm64", "aarch64"):
        return "arm (exact int32)"
    if flags & {"amx_int8", "avx512_vnni", "avx_vnni"}:
        return "vnni/amx (exact int32)"
    if flags & {"avx512bw", "avx2"}:
        return "vpmaddubsw (u8*s8 pairs saturate at int16)"
    return "unknown" if not flags else "sse (u8*s8 pairs saturate at int16)"


def cpu_features() -> dict[str, Any]:
    """The CPU facts an int8 graph's results can depend on: ``platform.machine()``, the int8-relevant
    x86 flags (from ``/proc/cpuinfo``; empty where it is absent), the int8 kernel family they imply
    and the onnxruntime version (its kernels change between releases)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    import onnxruntime

    machine = platform.machine()
    return {"machine": machine, "flags": [f for f in INT8_FLAGS if f in flags], "int8_kernel": _kernel(machine, flags),
            "onnxruntime": onnxruntime.__version__}


def sample_document(prompts: list[str], reference: np.ndarray, exported: np.ndarray, *, willingness_to_pay: float,
                    limit: float, changed_at_export: int) -> dict[str, Any]:
    """The JSON of ``parity_sample.json``: prompts, the fp32 graph's reference scores, the exported
    graph's scores where it was exported, the knob the routes are compared at and the limit."""
    return {"format": SAMPLE_FORMAT, VERSION_FIELD: SAMPLE_VERSION, "prompts": prompts,
            "reference_scores": np.asarray(reference, dtype=np.float64).tolist(),
            "exported_scores": np.asarray(exported, dtype=np.float64).tolist(),
            "willingness_to_pay": None if math.isinf(willingness_to_pay) else willingness_to_pay,
            "limit": limit, "changed_at_export": changed_at_export, "cpu": cpu_features()}


def _describe(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "not recorded"
    return (f"{cpu.get('machine')}, {cpu.get('int8_kernel')}, flags {' '.join(cpu.get('flags') or []) or 'none'}, "
            f"onnxruntime {cpu.get('onnxruntime')}")


def scores_one_by_one(router: Any, prompts: list[str]) -> np.ndarray:
    """Scores of each prompt run alone, as :meth:`Router.route` runs it. An int8 graph quantizes its
    activations per call, so a prompt's scores depend on the batch it shares a call with; one prompt
    per call makes the check independent of batching and equal to what production routing sees."""
    rows = []
    for prompt in prompts:
        ids, mask = router.encode(prompt)
        rows.append(router._run(ids[None], mask[None])[0])
    return np.asarray(rows, dtype=np.float64).reshape(len(prompts), len(router.models))


def check_sample(router: Any) -> tuple[dict[str, Any], str | None]:
    """Re-score the artifact's parity sample with ``router``'s own session; return a report and, when
    the routes drift past the limit (or the sample is missing or malformed), the reason to refuse.

    An fp32 artifact without a sample (exported before samples existed) passes: fp32 kernels differ
    between CPUs only by float rounding. An int8 one does not: nothing shows it routes as validated.
    """
    manifest, directory = router.manifest, router.directory
    spec = manifest.get("parity_sample")
    if spec is None:
        if manifest.get("quantization"):
            return {}, (f"{directory}: this {manifest['quantization']} artifact has no parity sample, so it cannot "
                        f"be checked on this CPU ({_describe(cpu_features())}); re-export it with this router-ml "
                        f"(router-ml export --quantize {manifest['quantization']}) or deploy the fp32 export")
        return {"prompts": 0}, None
    name = spec.get("file") if isinstance(spec, dict) else None
    if name not in (manifest.get("files") or {}):
        return {}, f"{directory}/manifest.json: 'parity_sample' names {name!r}, which the checksums do not cover"
    try:
        data = read_versioned(directory / name, what="parity sample", fmt=SAMPLE_FORMAT, version=SAMPLE_VERSION,
                              fix="re-export the router")
    except RouterMLError as exc:
        return {}, str(exc)
    try:
        prompts = [str(p) for p in data["prompts"]]
        reference = np.asarray(data["reference_scores"], dtype=np.float64)
        wtp = wtp_from_json(data["willingness_to_pay"])
        limit = float(data["limit"])
    except (KeyError, TypeError, ValueError) as exc:
        return {}, f"{directory / name}: malformed parity sample ({type(exc).__name__}: {exc}); re-export the router"
    if not prompts or reference.shape != (len(prompts), len(router.models)):
        return {}, (f"{directory / name}: {reference.shape} reference scores for {len(prompts)} prompts and "
                    f"{len(router.models)} models; re-export the router")
    scores = scores_one_by_one(router, prompts)
    costs = router.costs(prompts)
    changed = int(np.sum(choose(scores, costs, wtp) != choose(reference, costs, wtp)))
    here = cpu_features()
    report = {"prompts": len(prompts), "changed_routes": changed, "changed_share": changed / len(prompts),
              "limit": limit, "max_abs_diff": float(np.max(np.abs(scores - reference))), "cpu": here}
    if changed / len(prompts) <= limit:
        return report, None
    kind = manifest.get("quantization") or "fp32"
    todo = (f"Re-export the router on this machine (router-ml export --quantize {kind}), or deploy the fp32 export"
            if kind != "fp32" else "Re-export the router (router-ml export) and check this machine's onnxruntime")
    return report, (f"{directory}: the {kind} graph routes differently on this CPU: the routed model changed on "
                    f"{changed} of {len(prompts)} stored parity prompts ({changed / len(prompts):.1%}) against the "
                    f"fp32 reference, past the limit of {limit:.0%} ({data.get('changed_at_export')} changed where "
                    f"it was exported; scores differ by up to {report['max_abs_diff']:.3f}). This CPU: "
                    f"{_describe(here)}; exported on: {_describe(data.get('cpu'))}. {todo}")
