"""Benchmark the torch-free runtime on one router artifact, beside a RouteLLM-BERT-size PyTorch reference.

Measures ``Router.load``; single-prompt p50/p99 per layer (tokenizer, ``encode``, ONNX session, ``predict``,
``route``) at about 16, 64 and 256 tokens; ``route_batch`` throughput on 2 intra-op threads; the peak RSS of
a fresh torch-free process; and an ``xlm-roberta-base`` classifier (random weights) on the 64-token prompts.
Prints one JSON object on stdout (microseconds; each p50/p99 is the median over ``--repeats`` repetitions,
``p50_spread_pct`` the (max - min) / median of their p50s). Torch is imported last, for the reference only.

    HF_HUB_OFFLINE=1 python scripts/bench_runtime.py --router models/demo-artifact     # ~2 min
    python scripts/bench_runtime.py --router DIR --quick --skip-reference              # ~10 s smoke test
    python scripts/bench_runtime.py --router FP32 --compare INT8 --compare-only --threads 2   # side by side

``--explore-rate R`` adds ``route`` of exploring copies of the router (epsilon-greedy, softmax and curve at rate
``R``) to the same interleaved turns, ``breakdown_p50_us[n].explore_*_extra`` (what exploring adds to a
decision) and a target of under 5 us at 64 tokens.

``--scorer DIR`` (repeatable) adds ``scorer``: ``AnswerScorer.score`` p50/p99 of each answer-scorer artifact
on a ~200-token answer to a multiple-choice prompt, on ``--scorer-threads`` (default 2) threads, with the
scorers' targets (static under 1 ms, encoder under 10 ms p50).

``--compare DIR`` (repeatable) adds ``compare_64_tokens``: ``route`` p50/p99 of each artifact on the same
64-token prompts (``--compare-tokens 64,256``: also ``compare_256_tokens``), the artifacts taking turns every
100 calls so that load from other processes hits all alike - the way to compare an fp32 and an int8 export
(or a router with and without its lexical blend) on a shared machine.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

LENGTHS = (16, 64, 256)
SUBJECTS = ("the function", "my landlord", "this proof", "the SQL query", "our marketing plan", "a Python class",
            "the French verb", "the contract", "the neural network", "my essay", "the recipe", "the API")
VERBS = ("explain why", "rewrite", "summarize how", "check whether", "translate", "optimize", "prove that",
         "find the bug in", "compare", "give three examples of how", "estimate the cost of", "critique")
OBJECTS = ("handles edge cases", "converges after a few steps", "sounds too formal", "runs in linear time",
           "complies with the new regulation", "scales to a million users", "is still correct for negative numbers",
           "keeps the original meaning", "avoids the common mistakes", "would fail under load", "uses less memory")
EXTRAS = ("Please be concise.", "Use bullet points.", "Assume I am a beginner.", "Show your reasoning step by step.",
          "Answer in one paragraph.", "Cite the relevant rule if there is one.", "Keep the tone friendly.")


def log(message: str) -> None:
    """Progress on stderr, so that stdout stays one JSON object."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def make_text(rng: random.Random, words: int) -> str:
    """English-like prompt of ``words`` words from seeded sentence templates."""
    out: list[str] = []
    while len(out) < words:
        sentence = f"{rng.choice(VERBS).capitalize()} {rng.choice(SUBJECTS)} {rng.choice(OBJECTS)}."
        out += (sentence + (" " + rng.choice(EXTRAS) if rng.random() < 0.3 else "")).split()
    return " ".join(out[:words]).rstrip(".") + "?"


def prompts_of_length(router, rng: random.Random, tokens: int, count: int) -> list[str]:
    """``count`` distinct prompts of ``tokens`` tokens (rarely one more) by the artifact's own tokenizer."""
    prompts = []
    for _ in range(count):
        words = make_text(rng, 2 * tokens).split()
        low, high = 1, len(words)  # bisect the shortest word prefix with at least ``tokens`` tokens
        while low < high:
            mid = (low + high) // 2
            low, high = (mid + 1, high) if len(router.encode(" ".join(words[:mid]) + "?")[0]) < tokens else (low, mid)
        prompts.append(" ".join(words[:low]) + "?")
    return prompts


def time_calls(fn, args: list, calls: int, budget_s: float = math.inf) -> list[int]:
    """Nanoseconds of each of ``calls`` calls of ``fn`` cycling through ``args``; stops early after ``budget_s``."""
    clock, n, out, deadline = time.perf_counter_ns, len(args), [], time.perf_counter_ns() + budget_s * 1e9
    for i in range(calls):
        arg = args[i % n]
        start = clock()
        fn(arg)
        end = clock()
        out.append(end - start)
        if end > deadline:
            break
    return out


def percentile(sorted_ns: list[int], q: float) -> float:
    """The nearest-rank ``q``-quantile (0..1) of sorted nanoseconds, in microseconds."""
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e3


def bench_single(router, prompts: dict[int, list[str]], repeats: int, calls: int, warmup: int,
                 explore_rate: float | None = None) -> dict:
    """p50/p99 per layer and length. Within a repetition the (layer, length) pairs take turns every 100
    calls, so that load from other processes hits all alike and the per-layer differences stay meaningful.
    ``explore_rate`` adds ``route`` of exploring copies (epsilon-greedy, softmax and curve, seed 0) to the
    same turns."""
    names, session, tok, add = router._input_names, router._session, router._tokenizer, router._add_special
    fast = getattr(tok, "encode_batch_fast", None)  # tokenizers >= 0.21: no offset tracking
    layers = {"tokenize": (lambda t: fast([t], add_special_tokens=add)) if fast else
              (lambda t: tok.encode(t, add_special_tokens=add)), "encode": router.encode,
              "session": lambda feed: session.run(None, feed), "predict": lambda t: router.predict([t]),
              "route": router.route}
    if explore_rate is not None:
        from router_ml.exploration import KINDS, Exploration

        for kind in KINDS:
            explorer = router.with_exploration(Exploration(kind, rate=explore_rate, seed=0))
            layers[f"route_explore_{kind}"] = explorer.route
    feeds = {n: [{names[0]: i[None], names[1]: m[None]} for i, m in map(router.encode, p)] for n, p in prompts.items()}
    inputs = {(layer, n): feeds[n] if layer == "session" else ps for layer in layers for n, ps in prompts.items()}
    timed = interleaved({key: (layers[key[0]], args) for key, args in inputs.items()}, repeats=repeats, calls=calls,
                        warmup=warmup, label="single-prompt")
    result: dict = {layer: {} for layer in [*layers, "breakdown_p50_us"]}
    for (layer, n), stats in timed.items():
        result[layer][str(n)] = stats
    for n in map(str, prompts):  # differences of p50s: near-zero parts can come out slightly negative
        p = {layer: result[layer][n]["p50_us"] for layer in layers}
        result["breakdown_p50_us"][n] = {
            "tokenizer": p["tokenize"], "encode_python": round(p["encode"] - p["tokenize"], 1),
            "onnx_session": p["session"], "route_rest": round(p["route"] - p["encode"] - p["session"], 1),
            "route_total": p["route"], "predict_rest": round(p["predict"] - p["encode"] - p["session"], 1)}
        if explore_rate is not None:  # what exploring adds to a routing decision, measured in the same turns
            for kind in KINDS:
                result["breakdown_p50_us"][n][f"explore_{kind}_extra"] = round(p[f"route_explore_{kind}"]
                                                                               - p["route"], 1)
    result["tokenize_call"] = "encode_batch_fast([text])" if fast else "encode(text)"
    return result


def bench_load(directory: str, threads: int, repeats: int) -> tuple[dict, object]:
    """First ``Router.load`` (it imports onnxruntime and tokenizers), the median of further fresh loads, and
    what one load spends on checksums, tokenizer and session."""
    from router_ml import Router
    from router_ml.router import file_sha256

    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        router = Router.load(directory, intra_op_threads=threads)
        times.append(time.perf_counter() - start)
    import onnxruntime as ort
    from tokenizers import Tokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    parts = {"sha256_seconds": lambda: [file_sha256(router.directory / name) for name in router.manifest["files"]],
             "tokenizer_seconds": lambda: Tokenizer.from_file(str(router.directory / "tokenizer.json")),
             "session_seconds": lambda: ort.InferenceSession(str(router.directory / "router.onnx"), options,
                                                             providers=["CPUExecutionProvider"])}
    breakdown = {name: round(time_calls(lambda fn: fn(), [part], 1)[0] / 1e9, 4) for name, part in parts.items()}
    return {"load_seconds": round(statistics.median(times[1:]), 4), "first_load_seconds": round(times[0], 4),
            "load_breakdown": breakdown}, router


def bench_batch(directory: str, prompts: list[str], batch: int) -> dict:
    """Prompts per second of ``route_batch``, ``predict`` and encoding alone, on a 2-intra-op-thread router."""
    from router_ml import Router

    router = Router.load(directory, intra_op_threads=2)
    router.route_batch(prompts[:batch])
    steps = {"route_batch": router.route_batch, "predict": router.predict,
             "encode_loop": lambda chunk: [router.encode(t) for t in chunk],
             "tokenizer_encode_batch": lambda chunk: router._tokenizer.encode_batch(chunk, add_special_tokens=False)}
    out = {}
    for name, fn in steps.items():
        gc.collect()
        start = time.perf_counter()
        for i in range(0, len(prompts), batch):
            fn(prompts[i:i + batch])
        out[name] = round(len(prompts) / (time.perf_counter() - start))
    return {"prompts": len(prompts), "batch_size": batch, "intra_op_threads": 2,
            "mean_tokens": round(statistics.mean(len(router.encode(t)[0]) for t in prompts[:500]), 1),
            "prompts_per_second": out["route_batch"], "prompts_per_second_by_step": out}


def rss_mb() -> float:
    """This process's peak RSS in MB. ``ru_maxrss`` survives fork + exec (a child would report its
    parent's peak), so read the kernel's per-image ``VmHWM`` where there is one."""
    try:
        with open("/proc/self/status") as f:
            return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024, 1)
    except (OSError, StopIteration):
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def child_rss(directory: str, threads: int) -> None:
    """In a fresh interpreter: import, load, route the JSON list of prompts on stdin; print a JSON report."""
    out, start = {"rss_mb_interpreter": rss_mb()}, time.perf_counter()
    from router_ml import Router
    out["import_seconds"], start = round(time.perf_counter() - start, 4), time.perf_counter()
    router = Router.load(directory, intra_op_threads=threads)
    out["load_seconds"], out["rss_mb_loaded"] = round(time.perf_counter() - start, 4), rss_mb()
    for text in json.load(sys.stdin):
        router.route(text)
    assert "torch" not in sys.modules, "the runtime imported torch"
    heavy = sorted(m for m in ("torch", "transformers", "datasets", "mlflow", "onnx") if m in sys.modules)
    out.update(peak_rss_mb=rss_mb(), torch_imported="torch" in sys.modules, heavy_modules_imported=heavy)
    print(json.dumps(out))


def bench_rss(directory: str, threads: int, prompts: list[str]) -> dict:
    """Run :func:`child_rss` in a subprocess and return its report."""
    proc = subprocess.run([sys.executable, __file__, "--router", directory, "--threads", str(threads), "--child-rss"],
                          input=json.dumps(prompts), capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"RSS child failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return {"routed_prompts": len(prompts), **json.loads(proc.stdout)}


def bench_reference(id_lists: list, calls: int, budget_s: float) -> dict:
    """p50 of an ``xlm-roberta-base`` sequence classifier (random weights, PyTorch, eval, inference mode).

    Timed at 2 threads (as specified) and at 1: on a loaded 2-core machine OpenMP's spinning barrier
    can make 2 threads many times slower, so ``p50_us`` is the faster of the two (the conservative one).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    start = time.perf_counter()
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, num_labels=1)
    model = XLMRobertaForSequenceClassification(config).eval()
    setup = time.perf_counter() - start
    inputs = [torch.tensor(ids.clip(2, config.vocab_size - 1)[None]) for ids in id_lists]  # 1 is the pad id
    forward = lambda x: model(input_ids=x, attention_mask=torch.ones_like(x))  # noqa: E731
    by_threads = {}
    with torch.inference_mode():
        for threads in (2, 1):
            torch.set_num_threads(threads)
            time_calls(forward, inputs, 2, budget_s)
            ns = sorted(time_calls(forward, inputs, calls, budget_s))
            by_threads[str(threads)] = {"p50_us": round(percentile(ns, 0.5), 1), "calls": len(ns)}
    return {"model": "xlm-roberta-base sequence classifier, random weights", "framework": f"torch {torch.__version__}",
            "attn_implementation": model.config._attn_implementation, "tokens": int(inputs[0].shape[1]),
            "input_ids": "the artifact tokenizer's ids of the same 64-token prompts (all < 250002); "
                         "tokenization not timed, which favours the reference",
            "setup_seconds": round(setup, 1), "by_threads": by_threads,
            "p50_us": min(v["p50_us"] for v in by_threads.values())}


def interleaved(targets: dict, *, repeats: int, calls: int, warmup: int, label: str) -> dict:
    """p50/p99 (us) per key of ``targets`` (key -> (function, its argument list)), timed in turns of 100
    calls so that load from other processes hits every target alike: per repetition one p50 and p99
    each, then the median over repetitions and the p50's spread (module docstring)."""
    for fn, args in targets.values():
        time_calls(fn, args, warmup)
    samples: dict = {key: [] for key in targets}
    for rep in range(repeats):
        log(f"{label} repetition {rep + 1}/{repeats}")
        gc.collect()
        times: dict = {key: [] for key in targets}
        for _ in range(max(1, calls // 100)):
            for key, (fn, args) in targets.items():
                times[key] += time_calls(fn, args, 100)
        for key, ns in times.items():
            ns.sort()
            samples[key].append((percentile(ns, 0.5), percentile(ns, 0.99)))
    out = {}
    for key, reps in samples.items():
        p50s, med = [r[0] for r in reps], statistics.median(r[0] for r in reps)
        out[key] = {"p50_us": round(med, 1), "p99_us": round(statistics.median(r[1] for r in reps), 1),
                    "p50_spread_pct": round(100 * (max(p50s) - min(p50s)) / med, 1)}
    return out


def bench_compare(directories: list[str], threads: int, repeats: int, calls: int, warmup: int,
                  length: int = 64) -> dict:
    """``route`` p50/p99 at ``length`` tokens of several artifacts, interleaved in turns of 100 calls (see the
    module docstring). The prompts are cut to that length by the first artifact's tokenizer."""
    from router_ml import Router

    routers = {d: Router.load(d, intra_op_threads=threads) for d in directories}
    prompts = prompts_of_length(routers[directories[0]], random.Random(0), length, 16)
    timed = interleaved({d: (router.route, prompts) for d, router in routers.items()}, repeats=repeats, calls=calls,
                        warmup=warmup, label="compare")
    out = {}
    for d, stats in timed.items():
        parity = routers[d].manifest.get("parity") or {}
        out[d] = {"quantization": routers[d].manifest.get("quantization"), "int8_weights": parity.get("int8_weights"),
                  "int8_operators": parity.get("int8_operators"),
                  "tokens": round(statistics.mean(len(routers[d].encode(p)[0]) for p in prompts), 1), **stats}
    return {"threads": threads, "repeats": repeats, "calls_per_repeat": calls, "routers": out}


SCORER_TARGET_US = {"static": 1_000, "encoder": 10_000}  # the scorers' p50 targets for a ~200-token answer, 2 threads


def answers_of_length(scorer, rng: random.Random, tokens: int, count: int) -> list[str]:
    """``count`` chain-of-thought-like answers of about ``tokens`` tokens (by the scorer's tokenizer), each
    ending in a final-answer statement, as the cascades' cheap models write them."""
    out = []
    for _ in range(count):
        words = make_text(rng, 2 * tokens).split()
        low, high = 1, len(words)
        while low < high:
            mid = (low + high) // 2
            text = " ".join(words[:mid]) + f". The answer is ({rng.choice('ABCDEFGHIJ')})."
            low, high = (mid + 1, high) if len(scorer._tokens.ids(text)) < tokens else (low, mid)
        out.append(" ".join(words[:low]) + f". The answer is ({rng.choice('ABCDEFGHIJ')}).")
    return out


def bench_scorers(directories: list[str], threads: int, repeats: int, calls: int, warmup: int) -> dict:
    """``AnswerScorer.score`` p50/p99 of each scorer artifact on one ~200-token answer to a ~100-token
    multiple-choice prompt per call (tokenizing both texts included), interleaved in turns of 100 calls."""
    from router_ml import AnswerScorer

    scorers = {d: AnswerScorer.load(d, intra_op_threads=threads) for d in directories}
    rng = random.Random(1)
    first = scorers[directories[0]]
    answers = answers_of_length(first, rng, 200, 16)
    questions = [make_text(rng, 40) + "\n" + "".join(f"{c}. {make_text(rng, 5)}\n" for c in "ABCDEFGHIJ") + "Answer:"
                 for _ in range(16)]
    triples = {d: [(q, sc.models[0], a) for q, a in zip(questions, answers, strict=True)] for d, sc in scorers.items()}
    timed = interleaved({d: (lambda t, sc=sc: sc.score(*t), triples[d]) for d, sc in scorers.items()},
                        repeats=repeats, calls=max(100, calls // 4), warmup=warmup, label="scorer")
    return {"threads": threads, "answer_tokens": round(statistics.mean(len(first._tokens.ids(a)) for a in answers), 1),
            "scorers": {d: {"kind": scorers[d].kind, **timed[d]} for d in directories}}


def machine_info(loadavg: float) -> dict:
    """Where the numbers were taken (CPU int8 features included: int8 latency depends on them)."""
    import onnxruntime

    from router_ml.parity import cpu_features

    return {"cpu_count": os.cpu_count(), "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "cpu": cpu_features(), "loadavg_1m_before": round(loadavg, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2)}


def runtime_fingerprint() -> dict:
    """Version and source hash of the ``router_ml`` runtime, so that numbers can be tied to the code that ran."""
    import router_ml
    import router_ml.router

    source = hashlib.sha256(Path(router_ml.router.__file__).read_bytes()).hexdigest()[:12]
    return {"router_ml": router_ml.__version__, "router_py_sha256": source}


def main() -> None:
    """Run every benchmark in an order that keeps them from disturbing each other; print the JSON report."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--router", required=True, help="exported router artifact directory")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for single-prompt latency")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions per measurement (default 5, quick 2)")
    parser.add_argument("--quick", action="store_true", help="fewer calls: a smoke test of about 30 s")
    parser.add_argument("--skip-reference", action="store_true", help="skip the PyTorch xlm-roberta-base reference")
    parser.add_argument("--log-mlflow", action="store_true",
                        help="log the latencies to the router's MLflow run (runtime.p50_us_64 ... - "
                             "'router-ml compare' shows them)")
    parser.add_argument("--compare", action="append", default=[], metavar="DIR",
                        help="another artifact to time beside --router at 64 tokens, in the same run (repeatable)")
    parser.add_argument("--compare-tokens", type=lambda v: [int(x) for x in v.split(",")], default=[64],
                        metavar="N[,N...]", help="the prompt lengths of the --compare timings (default 64; each "
                                                 "prints compare_N_tokens)")
    parser.add_argument("--compare-only", action="store_true", help="only the --compare timings")
    parser.add_argument("--explore-rate", type=float, metavar="R",
                        help="also time route() with exploration on (epsilon and softmax at this rate) in the same "
                             "interleaved turns, and check that it adds under 5 us at 64 tokens")
    parser.add_argument("--scorer", action="append", default=[], metavar="DIR",
                        help="an answer-scorer artifact to time in the same run (repeatable): one ~200-token answer "
                             "per call on --scorer-threads threads, against the scorers' p50 targets (static 1 ms, "
                             "encoder 10 ms)")
    parser.add_argument("--scorer-threads", type=int, default=2, help="intra-op threads of the scorers (default 2)")
    parser.add_argument("--child-rss", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        return child_rss(args.router, args.threads)
    for directory in [args.router, *args.compare, *args.scorer]:  # before minutes of timing, not in the middle
        if not (Path(directory) / "manifest.json").is_file():
            parser.error(f"{directory}: not an exported artifact directory (no manifest.json); export one with "
                         "'router-ml export' or 'router-ml train'")
    if (args.threads < 0 or args.scorer_threads < 1 or (args.repeats is not None and args.repeats < 1)
            or min(args.compare_tokens) < 1 or (args.explore_rate is not None and not 0 < args.explore_rate <= 1)):
        parser.error("bounds: --threads >= 0, --scorer-threads >= 1, --repeats >= 1, --compare-tokens >= 1 each, "
                     "0 < --explore-rate <= 1")
    repeats = args.repeats or (2 if args.quick else 5)
    sizes = (300, 50, 2_000, 5, 2) if args.quick else (2_000, 200, 10_000, 30, 20)
    calls, warmup, n_batch, ref_calls, ref_budget = sizes
    loadavg, runtime_at_start = os.getloadavg()[0], runtime_fingerprint()
    compare = {f"compare_{n}_tokens": None for n in args.compare_tokens}
    if args.compare:
        compare = {f"compare_{n}_tokens": bench_compare([args.router, *args.compare], args.threads, repeats, calls,
                                                        warmup, n) for n in args.compare_tokens}
    if args.compare_only:
        print(json.dumps({"runtime": runtime_at_start, "machine": machine_info(loadavg), **compare}, indent=1))
        return None

    log("loading")
    load, router = bench_load(args.router, args.threads, repeats)
    rng = random.Random(0)
    prompts = {n: prompts_of_length(router, rng, n, 16) for n in LENGTHS}
    tokens = {str(n): round(statistics.mean(len(router.encode(p)[0]) for p in ps), 1) for n, ps in prompts.items()}
    single = bench_single(router, prompts, repeats, calls, warmup, args.explore_rate)
    scorers = None
    if args.scorer:
        scorers = bench_scorers(args.scorer, args.scorer_threads, repeats, calls, warmup)
    log("batch throughput")
    mixed = [make_text(rng, int(math.exp(rng.uniform(math.log(8), math.log(220))))) for _ in range(n_batch)]
    batch = bench_batch(args.router, mixed, 256)
    log("peak RSS in a child process")
    rss = bench_rss(args.router, args.threads, [rng.choice(mixed) for _ in range(1000)])
    reference = None
    if not args.skip_reference:
        log("PyTorch reference (imports torch)")
        reference = bench_reference([router.encode(p)[0] for p in prompts[64]], ref_calls, ref_budget)

    r64, r256 = single["route"]["64"], single["route"]["256"]
    speedup = reference and round(reference["p50_us"] / r64["p50_us"])
    checks = {"p50_us_64_tokens": (r64["p50_us"], "<=", 80), "p99_us_64_tokens": (r64["p99_us"], "<=", 200),
              "p50_us_256_tokens": (r256["p50_us"], "<=", 150),
              "batch_prompts_per_second_2_threads": (batch["prompts_per_second"], ">=", 20_000),
              "first_load_seconds": (load["first_load_seconds"], "<", 0.3),
              "peak_rss_mb": (rss["peak_rss_mb"], "<", 150), "speedup_vs_reference": (speedup, ">=", 500)}
    if args.explore_rate is not None:
        from router_ml.exploration import KINDS

        for kind in KINDS:
            checks[f"explore_{kind}_extra_p50_us_64_tokens"] = (
                single["breakdown_p50_us"]["64"][f"explore_{kind}_extra"], "<", 5)
    for d, stats in (scorers or {}).get("scorers", {}).items():
        checks[f"scorer_p50_us:{d}"] = (stats["p50_us"], "<", SCORER_TARGET_US[stats["kind"]])
    ops = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__}
    targets = {name: {"value": v, "target": f"{op} {limit}", "met": None if v is None else ops[op](float(v), limit)}
               for name, (v, op, limit) in checks.items()}
    runtime = runtime_fingerprint()
    logged_to = log_to_mlflow(router, single, batch) if args.log_mlflow else None
    print(json.dumps({
        "router": {"directory": args.router, "router": router.manifest.get("router"),
                   "featurizer": router.manifest.get("featurizer"), "models": len(router.models)},
        "runtime": {**runtime, "changed_during_run": runtime != runtime_at_start},
        "machine": machine_info(loadavg), **compare,
        "settings": {"threads": args.threads, "repeats": repeats, "calls_per_repeat": calls, "quick": args.quick},
        **load, "prompt_tokens": tokens, "single_prompt": single, "batch": batch, "peak_rss_mb": rss["peak_rss_mb"],
        "torch_imported": rss["torch_imported"], "rss_child": rss, "reference": reference, "scorer": scorers,
        "speedup_vs_reference": speedup, "targets": targets, "logged_to_mlflow_run": logged_to}, indent=1))


def log_to_mlflow(router, single: dict, batch: dict) -> str | None:
    """Log single-prompt p50/p99 and batch throughput to the MLflow run recorded in the artifact."""
    run_id = (router.manifest.get("training") or {}).get("mlflow_run_id")
    if not run_id:
        log("the artifact records no MLflow run; nothing logged")
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    from training.tracking import default_tracking_uri

    client = mlflow.MlflowClient(tracking_uri=default_tracking_uri())
    for n, values in single["route"].items():
        client.log_metric(run_id, f"runtime.p50_us_{n}", values["p50_us"])
        client.log_metric(run_id, f"runtime.p99_us_{n}", values["p99_us"])
    client.log_metric(run_id, "runtime.batch_prompts_per_second", batch["prompts_per_second"])
    return run_id


if __name__ == "__main__":
    from router_ml.errors import RouterMLError

    try:
        main()
    except RouterMLError as exc:  # an artifact that does not load: its message, not a traceback
        sys.exit(f"bench_runtime.py: error: {exc}")
