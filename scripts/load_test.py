"""Load test of ``router-ml serve``: what the proxy adds over calling the upstream directly, and what
is lost when an upstream fails. Prints one JSON object.

Everything runs on 127.0.0.1 as separate processes: two fake OpenAI-compatible upstreams
(``tests/fake_upstream.py``, answering after ``--delay-ms``), ``router-ml serve`` in front of them
with a real router artifact (routing every request, writing its decision log), and this script's
open-loop load generator: request i is due at ``start + i / rate`` and is sent by one of
``--concurrency`` client connections; its latency counts from the moment it was due, so a stalled
server cannot hide queueing (no coordinated omission). The generator's client is the proxy's own upstream
client (``router_ml._http1``, with no retry of a request a server closed on without answering), not httpx:
on two cores the generator competes with what it measures, and httpx's pool cost it about five times the CPU
per request and, on a slow day, held requests up to 1.6 s before sending them (README, "Load test").

Normal mode, ``--rounds`` times: ``--duration`` seconds straight at upstream A (direct), then the
same through the proxy. ``overhead_ms`` is the difference of the pooled latency percentiles
(proxy p50 - direct p50, proxy p99 - direct p99) at the same offered rate and prompts.

Fault mode (``--fault kill|error|worker``): only the proxy phase; half-way through, upstream A (serving
tiny-1b, small-8b and code-34b, which fall back to large-70b on upstream B) is killed with SIGKILL
(``kill``) or starts answering 500 to everything (``error``); or, with ``--workers 2`` or more, one
worker is sent SIGTERM (``worker``: it finishes its requests in flight and exits, the supervisor starts
another in its slot; ``worker_stopped`` says whether one came back within 30 s). ``lost`` counts requests
that got no HTTP answer, a broken answer, or no answer within the proxy's request timeout + 2 s;
``errors`` counts explicit HTTP error answers. While B is healthy both should be 0.

In every mode ``decision_log`` checks the proxy's log (every worker's file) against the requests it
answered in the measured phases (their ``x-router-ml-request-id``): ``logged_once`` should equal
``answered``, with ``missing`` and ``logged_twice`` 0.

``--stream`` sends streaming requests instead (latency to the last event). A stream that upstream A
breaks after its first event cannot move to another model: it ends with an error event, counted
in ``errors``; one that ends without ``[DONE]`` and without an error event counts as lost.

``--scaling`` (with ``--workers N``, N >= 2; normal mode): a one-worker ``router-ml serve`` runs beside
the N-worker one and is measured in the same rounds, next to it (the order turned round every other
round), on the same prompts, twice: at ``--rate`` / N - the load each of the N workers carries - and at
``--rate``. ``capacity_scaling`` is N x its CPU per request at ``--rate`` / N over the N workers' at
``--rate``: how much more N workers serve on the same cores, each worker compared at the same load,
with the day's machine speed cancelling out (a proxy's CPU per request falls as its load rises - more
requests per event-loop wake-up, warmer caches - so comparing one worker at the whole rate with N
workers sharing it counts that against the workers: ``capacity_scaling_same_total_load``). The figures
go under ``one_worker_per_worker_load`` and ``one_worker`` (with its own decision-log check over both).

References (``--reference passthrough``, ``--reference litellm``, repeatable; normal mode only): other
proxies started in front of the same upstreams and measured in the same rounds, each right after
router-ml's, at the same rate and prompts (sent as ``tiny-1b``, which they forward to upstream A, as
the direct phase asks), with the same figures under ``reference.<name>``; ``cpu_ratio_vs_reference``
is router-ml's CPU per request over each one's. CPU counts each proxy's process tree over its own
phases until it falls idle again (see ``scripts/load_references.py``).

    python scripts/load_test.py --router models/demo/artifact               # ~40 s
    python scripts/load_test.py --router models/demo/artifact --reference passthrough --reference litellm
    python scripts/load_test.py --router models/demo/artifact --fault kill  # ~15 s
    python scripts/load_test.py --router models/demo/artifact --workers 2   # router-ml serve --workers 2
    python scripts/load_test.py --router models/demo/artifact --workers 2 --scaling  # and one worker beside it
    python scripts/load_test.py --router models/demo/artifact --workers 2 --fault worker  # ~15 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from load_references import (
    REFERENCES,
    child_pids,
    cpu_between,
    cpu_snapshot,
    prepare,
    settle,
    start,
    start_reference,
    stop,
)

from router_ml._http1 import Http1Upstream, Response
from router_ml._records import Failure
from router_ml._streaming import event_data, sse_events
from router_ml.cli import per_cpu_limit

ROOT = Path(__file__).resolve().parents[1]
A_MODELS = ("tiny-1b", "small-8b", "code-34b")  # on upstream A; large-70b and frontier-xl on upstream B
REQUEST_TIMEOUT_S = 10.0
ONE_WORKER_LOG = "one-worker.jsonl"  # --scaling's one-worker proxy's decision log (beside the proxy's own)
ONE_PER_WORKER = "one-worker-per-worker-load"  # --scaling: the one worker's phases at --rate / N
REQUEST_ID = "x-router-ml-request-id"


PRICES = {"tiny-1b": (0.05, 0.1), "small-8b": (0.2, 0.4), "code-34b": (0.6, 1.2), "large-70b": (1.5, 3.0),
          "frontier-xl": (5.0, 10.0)}  # USD per million input / output tokens


def upstream_urls(port_a: int, port_b: int) -> dict[str, str]:
    """Model -> the base URL of the fake upstream serving it (tiny-1b, on A, first)."""
    return {m: f"http://127.0.0.1:{port_a if m in A_MODELS else port_b}/v1" for m in PRICES}


def catalog(port_a: int, port_b: int) -> str:
    out = [f"[settings]\nrequest_timeout_s = {REQUEST_TIMEOUT_S}\nmax_retries = 1\nbackoff_s = 0.02\n"
           "breaker_failures = 5\nbreaker_reset_s = 2.0\n"]
    for model, base in upstream_urls(port_a, port_b).items():
        (pin, pout), fallback = PRICES[model], "large-70b" if model in A_MODELS else "small-8b"
        out.append(f'[models."{model}"]\nbase_url = "{base}"\ninput_per_mtok = {pin}\n'
                   f'output_per_mtok = {pout}\ntimeout_s = 5.0\nfallbacks = ["{fallback}"]\n')
    return "\n".join(out)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def prompts() -> list[str]:
    out = []
    with open(ROOT / "data/demo/traffic.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if isinstance(record.get("prompt"), str):
                out.append(record["prompt"])
            if len(out) == 2000:
                break
    return out


_HEADERS = {"content-type": "application/json"}


async def _post(client: Http1Upstream, url: str, body: dict) -> Response:
    """POST ``body`` as JSON; the response once its head has come."""
    return await client.send(url, url, _HEADERS, json.dumps(body).encode(), REQUEST_TIMEOUT_S + 2)


async def _streamed(client: Http1Upstream, url: str, body: dict) -> tuple[int, dict | None, str, str | None]:
    """POST a streaming request; (status, the last chunk, how it ended: done / error_event / broken, the
    proxy's request id)."""
    last, ending = None, "broken"
    r = await _post(client, url, body)
    try:
        rid = r.headers.get(REQUEST_ID)
        if r.status_code != 200:
            await r.aread()
            return r.status_code, None, "http_error", rid
        try:
            async for event in sse_events(r.aiter_bytes()):
                data = event_data(event)
                if data is None:
                    continue
                if data == b"[DONE]":
                    ending = "done"
                    continue
                obj = json.loads(data)
                if "error" in obj:
                    return 200, obj, "error_event", rid
                last = obj
        except Failure:  # the stream ended inside an event
            return 200, last, "broken", rid
        return 200, last, ending, rid
    finally:
        await r.aclose()


async def phase(url: str, model: str, texts: list[str], rate: float, duration: float, concurrency: int,
                on_half: callable | None = None, stream: bool = False) -> dict:
    """Open-loop load: returns latencies (ms) of good answers and counts of errors and lost requests."""
    n = int(rate * duration)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lost: dict[str, int] = {}
    answered_by: dict[str, int] = {}
    ids: list[str] = []  # router-ml's request ids of the answered requests (references send none)
    slow: list[tuple[int, int, float]] = []
    # the proxy's own upstream client, not httpx: a fifth of the CPU (on two cores the generator competes with
    # the proxy it measures) and no pool stalls; no retry of a request a server closed on without answering
    client = Http1Upstream(max_connections=concurrency, max_keepalive=concurrency, retry_closed=False)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05

        async def one(i: int) -> None:
            due = t0 + i / rate
            body = {"model": model, "messages": [{"role": "user", "content": texts[i % len(texts)]}],
                    "max_tokens": 64}
            try:
                if stream:
                    body["stream"] = True
                    status, last, ending, rid = await _streamed(client, url, body)
                else:
                    r = await _post(client, url, body)
                    try:
                        raw = await r.aread()
                    finally:
                        await r.aclose()
            except httpx.TimeoutException:
                lost["timeout"] = lost.get("timeout", 0) + 1
                return
            except httpx.HTTPError as exc:
                lost[type(exc).__name__] = lost.get(type(exc).__name__, 0) + 1
                return
            elapsed = (loop.time() - due) * 1000
            if stream:
                if ending == "done" and last is not None:
                    latencies.append(elapsed)
                    if rid:
                        ids.append(rid)
                    answered_by[last.get("model")] = answered_by.get(last.get("model"), 0) + 1
                elif ending in ("error_event", "http_error"):  # explicit: an error event or an HTTP error
                    errors[ending] = errors.get(ending, 0) + 1
                else:
                    lost["broken_stream"] = lost.get("broken_stream", 0) + 1
                return
            if r.status_code != 200:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                return
            try:
                data = json.loads(raw)
                data["choices"][0]["message"]["content"]  # noqa: B018 - a complete answer
            except (ValueError, KeyError, IndexError, TypeError):
                lost["broken_answer"] = lost.get("broken_answer", 0) + 1
                return
            latencies.append(elapsed)
            if REQUEST_ID in r.headers:
                ids.append(r.headers[REQUEST_ID])
            if elapsed > 1000:
                slow.append((i, round(elapsed), round(due - t0, 3)))
            who = (data.get("router_ml") or {}).get("model") or data.get("model")
            answered_by[who] = answered_by.get(who, 0) + 1

        tasks = []
        half_done = False
        for i in range(n):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if on_half is not None and not half_done and i >= n // 2:
                half_done = True
                on_half()
            tasks.append(asyncio.ensure_future(one(i)))
        started = loop.time()
        await asyncio.gather(*tasks)
        wall = loop.time() - t0
    finally:
        await client.aclose()
    return {"sent": n, "latencies": latencies, "ids": ids, "slow": slow, "errors": errors, "lost": lost,
            "answered_by": answered_by, "wall_s": wall, "drain_s": loop.time() - started}


def summary(lat: list[float]) -> dict:
    return {"p50": round(percentile(lat, 0.5), 3), "p99": round(percentile(lat, 0.99), 3)}


def metric_sum(text: str, name: str) -> float:
    """The sum of one metric's samples over every label value (``name`` as exposed: ``..._total``)."""
    from prometheus_client.parser import text_string_to_metric_families  # the serve extra, as for the proxy

    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name)


def log_check(log: Path, runs: list[dict]) -> dict:
    """Whether every request router-ml answered in the measured phases is in its decision log (every worker's
    file, :func:`router_ml.decision_log.merged_lines`) exactly once."""
    from collections import Counter

    from router_ml.decision_log import merged_lines

    logged = Counter()
    for _, _, raw in merged_lines(log):
        record = json.loads(raw)
        if record.get("type", "decision") == "decision":
            logged[record.get("request_id")] += 1
    answered = [i for r in runs for i in r["ids"]]
    return {"answered": len(answered), "logged_once": sum(logged[i] == 1 for i in answered),
            "missing": sum(logged[i] == 0 for i in answered), "logged_twice": sum(c > 1 for c in logged.values())}


def figures(label: str, runs: list[dict], cpu_s: float, direct: dict | None) -> dict:
    """One proxy's figures over its phases, under the same keys for router-ml's proxy and each reference."""
    lat = [x for r in runs for x in r["latencies"]]
    errors, lost, answered = {}, {}, {}
    for r in runs:
        for src, dst in ((r["errors"], errors), (r["lost"], lost), (r["answered_by"], answered)):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
    sent = sum(r["sent"] for r in runs)
    out = {"requests": sent, "throughput_rps": round(len(lat) / sum(r["wall_s"] for r in runs), 1),
           "proxy_ms": summary(lat)}
    if direct is not None:
        out["overhead_ms"] = {q: round(out["proxy_ms"][q] - direct[q], 3) for q in ("p50", "p99")}
    slow = [x for r in runs for x in r["slow"]]
    if slow:  # answered, but after more than a second: where in the run (request index, ms, due at s)
        print(f"load_test: {len(slow)} requests via {label} took over 1 s, e.g. {slow[:8]}", file=sys.stderr)
    return {**out, "answered": len(lat), "answered_over_1s": len(slow), "errors": sum(errors.values()),
            "lost": sum(lost.values()), "errors_by_kind": errors, "lost_by_kind": lost,
            "answered_by": dict(sorted(answered.items())), "max_latency_ms": round(max(lat), 1) if lat else None,
            # CPU the proxy's processes used per request sent to it (for router-ml: routing, both HTTP hops,
            # JSON, decision log), counted over its own phases until it fell idle again
            "proxy_cpu_ms_per_request": round(cpu_s * 1000 / max(1, sent), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--router", default=str(ROOT / "models/demo/artifact"), help="router artifact directory")
    parser.add_argument("--rate", type=float, default=200.0, help="offered requests per second (open loop)")
    parser.add_argument("--concurrency", type=int, default=50, help="client connections")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per phase (at most 60)")
    parser.add_argument("--rounds", type=int, default=2, help="direct/proxy rounds in normal mode (at most 5)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the fake upstreams' answer time")
    parser.add_argument("--fault", choices=("kill", "error", "worker"), help="fault mode: kill upstream A half-way, "
                        "make it answer 500 from half-way, or (with --workers 2 or more) SIGTERM one worker half-way "
                        "(the supervisor starts another)")
    parser.add_argument("--stream", action="store_true", help="streaming requests (latency: to the last event; a "
                        "stream that ends in an error event counts as an error, one cut off without it as lost)")
    parser.add_argument("--workers", type=int, default=1, help="router-ml serve --workers N (its CPU counts every "
                        "worker and the supervisor; with the load generator on the same cores, compare capacity by "
                        "CPU per request: N workers scale by N x the 1-worker CPU per request over this one's)")
    parser.add_argument("--scaling", action="store_true", help="with --workers N >= 2: also run a one-worker "
                        "router-ml serve in the same rounds, at --rate / N and at --rate, and report "
                        "capacity_scaling = N x its CPU per request at --rate / N over the N workers' at --rate")
    parser.add_argument("--reference", action="append", choices=REFERENCES, default=[], help="also measure this "
                        "proxy in front of the same upstreams, each round after router-ml's (repeatable)")
    parser.add_argument("--reference-venv", type=Path, help="LiteLLM's own virtual environment (default "
                        "~/.cache/router-ml/litellm-<version>; installed there when missing)")
    args = parser.parse_args()
    if not (Path(args.router) / "manifest.json").is_file():
        raise SystemExit(f"no router artifact at {args.router}; train one first (README quickstart) or pass --router")
    if not (0 < args.duration <= 60 and 1 <= args.rounds <= 5 and 0 < args.rate <= 2000 and args.concurrency >= 1
            and 1 <= args.workers <= per_cpu_limit()):
        raise SystemExit("bounds: 0 < --duration <= 60, 1 <= --rounds <= 5, 0 < --rate <= 2000, --concurrency >= 1, "
                         f"1 <= --workers <= {per_cpu_limit()} (router-ml serve's limit here: 4 per CPU, at least 8)")
    if args.fault == "worker" and args.workers < 2:
        raise SystemExit("--fault worker stops one of several workers: give --workers 2 or more")
    if args.scaling and (args.workers < 2 or args.fault):
        raise SystemExit("--scaling compares --workers N (2 or more) with one worker, in normal mode: give --workers "
                         "2 or more and no --fault")
    if args.fault and args.reference:
        raise SystemExit("--reference compares normal mode only (a reference has no fallbacks to survive --fault): "
                         "drop one of them")
    prepare(args.reference, venv=args.reference_venv)
    texts = prompts()
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="router-ml-load-") as tmp:
        try:
            up = [sys.executable, "-m", "tests.fake_upstream", "--port", "0", "--delay-ms", str(args.delay_ms)]
            a, line_a = start(up, "port")
            procs.append(a)
            b, line_b = start(up, "port")
            procs.append(b)
            port_a, port_b = json.loads(line_a)["port"], json.loads(line_b)["port"]
            providers = Path(tmp) / "providers.toml"
            providers.write_text(catalog(port_a, port_b))

            def serve(log: str, workers: int) -> tuple[subprocess.Popen, str]:
                proc, line = start([sys.executable, "-m", "router_ml.cli", "serve", "--artifact", args.router,
                                    "--providers", str(providers), "--port", "0", "--decision-log",
                                    str(Path(tmp) / log), "--workers", str(workers)], "serving")
                procs.append(proc)
                return proc, "http://" + line.split("http://", 1)[1].split()[0]

            proxy, base = serve("decisions.jsonl", args.workers)
            direct_url = f"http://127.0.0.1:{port_a}/v1/chat/completions"
            # name -> (process, URL, model asked for): router-ml routes; a reference gets what direct gets
            targets = {"proxy": (proxy, base + "/chat/completions", "router-ml")}
            rates = {"proxy": args.rate}
            if args.scaling:  # measured beside the N workers in every round, on the same prompts
                one, one_base = serve(ONE_WORKER_LOG, 1)
                targets[ONE_PER_WORKER] = targets["one-worker"] = (one, one_base + "/chat/completions", "router-ml")
                rates.update({ONE_PER_WORKER: args.rate / args.workers, "one-worker": args.rate})
            for name in dict.fromkeys(args.reference):
                ref, url = start_reference(name, upstreams=upstream_urls(port_a, port_b), workdir=Path(tmp),
                                           venv=args.reference_venv)
                procs.append(ref)
                targets[name] = (ref, url + "/chat/completions", A_MODELS[0])
            # warm every path: connections, the router's caches
            asyncio.run(phase(direct_url, A_MODELS[0], texts, 100, 1.0, args.concurrency))
            for proc, url, model in dict.fromkeys(targets.values()):
                asyncio.run(phase(url, model, texts, 100, 1.0, args.concurrency))
                settle(proc.pid)
            with httpx.Client(trust_env=False) as http:
                before = http.get(base[:-3] + "/metrics").text
            load_before = os.getloadavg()[0]
            t_start = time.monotonic()
            runs: dict[str, list[dict]] = {name: [] for name in ("direct", *targets)}
            cpu = dict.fromkeys(targets, 0.0)

            def measured(name: str, on_half: callable | None = None) -> None:
                proc, url, model = targets[name]
                cpu_before = cpu_snapshot(proc.pid)
                rate = rates.get(name, args.rate)  # a reference: the proxy's rate
                runs[name].append(asyncio.run(phase(url, model, texts, rate, args.duration, args.concurrency,
                                                    on_half=on_half, stream=args.stream)))
                settle(proc.pid)
                cpu[name] += cpu_between(cpu_before, cpu_snapshot(proc.pid))

            workers_before = child_pids(proxy.pid, module="router_ml.workers")
            stopped: list[int] = []

            def stop_one_worker() -> None:
                stopped.append(min(child_pids(proxy.pid, module="router_ml.workers")))
                os.kill(stopped[0], signal.SIGTERM)

            if args.fault == "worker":
                measured("proxy", stop_one_worker)
            elif args.fault:
                measured("proxy", lambda: os.kill(a.pid, signal.SIGKILL if args.fault == "kill" else signal.SIGUSR1))
            else:
                for k in range(args.rounds):
                    runs["direct"].append(asyncio.run(phase(direct_url, A_MODELS[0], texts, args.rate,
                                                            args.duration, args.concurrency, stream=args.stream)))
                    order = list(targets)
                    if k % 2 and args.scaling:  # router-ml's three phases turned round every other round
                        order[:3] = order[:3][::-1]
                    for name in order:
                        measured(name)
            with httpx.Client(trust_env=False) as http:
                after = http.get(base[:-3] + "/metrics").text
            workers_after = child_pids(proxy.pid, module="router_ml.workers")
            deadline = time.monotonic() + 30  # --fault worker: the supervisor starts a new worker in the slot
            while args.fault == "worker" and not workers_after - workers_before and time.monotonic() < deadline:
                time.sleep(0.1)
                workers_after = child_pids(proxy.pid, module="router_ml.workers")
        finally:
            for p in reversed(procs):
                stop(p)
        decision_log = log_check(Path(tmp) / "decisions.jsonl", runs["proxy"])
        one_log = (log_check(Path(tmp) / ONE_WORKER_LOG, runs["one-worker"] + runs[ONE_PER_WORKER])
                   if args.scaling else None)
    lat_d = [x for r in runs["direct"] for x in r["latencies"]]
    direct = None if args.fault else summary(lat_d)
    mine = figures("router-ml", runs["proxy"], cpu["proxy"], direct)
    out = {
        "mode": (f"fault:{args.fault}" if args.fault else "normal") + (" stream" if args.stream else ""),
        "offered_rps": args.rate, "concurrency": args.concurrency, "duration_s": args.duration,
        "rounds": 1 if args.fault else args.rounds, "upstream_delay_ms": args.delay_ms, "workers": args.workers,
        **mine,
        # every request router-ml answered in the measured phases, found in its decision log exactly once?
        "decision_log": decision_log,
    }
    if args.fault == "worker":
        out["worker_stopped"] = {"pid": stopped[0], "replaced": bool(workers_after - workers_before),
                                 "workers_after": len(workers_after)}
    if direct is not None:
        out["direct_ms"] = direct
        out["direct_errors"] = sum(sum(r["errors"].values()) + sum(r["lost"].values()) for r in runs["direct"])
    out["fallback_attempts"] = int(metric_sum(after, "router_ml_fallbacks_total")
                                   - metric_sum(before, "router_ml_fallbacks_total"))
    if args.scaling:
        one = {**figures("one-worker", runs["one-worker"], cpu["one-worker"], direct), "decision_log": one_log}
        each = {"offered_rps": rates[ONE_PER_WORKER],
                **figures(ONE_PER_WORKER, runs[ONE_PER_WORKER], cpu[ONE_PER_WORKER], direct)}
        out["one_worker_per_worker_load"] = each
        out["one_worker"] = one

        def scaling(single: dict) -> float:  # what N workers serve per unit of CPU against one worker
            return round(args.workers * single["proxy_cpu_ms_per_request"]
                         / max(mine["proxy_cpu_ms_per_request"], 1e-9), 3)

        out["capacity_scaling"] = scaling(each)  # each worker compared at the same load
        out["capacity_scaling_same_total_load"] = scaling(one)
    refs = {name: figures(name, runs[name], cpu[name], direct) for name in targets
            if name not in ("proxy", "one-worker", ONE_PER_WORKER)}
    if refs:
        out["reference"] = refs
        # router-ml's CPU per request over each reference's: below 1, the proxy costs less than that reference
        out["cpu_ratio_vs_reference"] = {name: round(mine["proxy_cpu_ms_per_request"]
                                                     / max(ref["proxy_cpu_ms_per_request"], 1e-9), 3)
                                         for name, ref in refs.items()}
    out.update({
        # load average when the measurement started: other work on the machine moves every latency number
        "loadavg_1min": round(load_before, 2),
        "wall_s": round(time.monotonic() - t_start, 1),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
