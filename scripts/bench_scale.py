"""Measure router-ml at volume: `data inspect` and `train` end to end on demo sets of growing size.

For each size the demo generator's records are written once into the work dir (and reused by later
runs), then `router-ml data inspect` and `router-ml train` (mlp_static, tracking off, a fresh
feature cache per run) run as subprocesses. Prints one JSON object: per size and stage the median
over ``--runs`` of ``seconds``, ``records_per_s`` and ``peak_rss_mb`` (the subprocess's peak
resident set, from ``wait4``; featurize worker processes count as their own, not summed), for
train also the peak after loading (``peak_rss_after_load_mb``: /proc polled every 0.1 s) and how
far it rose above what loading left (``rss_growth_after_load_mb``: the training half of the memory,
apart from the data loader's), its stage breakdown and the AIQ of
each run; then ``scaling``: train seconds per record at the largest size over the smallest
(``growth_ratio``; at most 1 means time grew at most linearly). A PNG of the curves goes beside.

Data: sizes up to 99,999 are exactly ``make_demo_data.py --n N --seed S``. Larger sets are that
generator's output in chunks of 99,999 records, chunk ``k`` drawn with seed ``S + 1000 * k`` (its
sample ids prefixed ``demo-k-``), generated in parallel processes; the generator keeps the texts of
one chunk distinct, so a larger set can repeat a prompt across chunks, which the grouped split keeps
on one side. Parquet is the JSONL converted by ``router-ml data convert``.

    python scripts/bench_scale.py --sizes 100000,1000000 --work-dir /tmp/bench --runs 2 > bench.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router_ml.cli import bounded  # noqa: E402

CHUNK = 99_999  # the generator's largest set (five-digit sample ids)
STAGE_LINE = re.compile(r"^router-ml: (\w+): [\d.]+s, rss")


def _generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_chunk(task: tuple[int, int, int, str]) -> str:
    """Chunk ``k`` of a set (``n`` records, seed ``seed + 1000 * k``) as JSON lines in ``path``."""
    k, n, seed, path = task
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in _generator().generate(n, seed + 1000 * k):
            if k:
                record["sample_id"] = f"demo-{k}-{record['sample_id'].removeprefix('demo-')}"
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def make_data(n: int, seed: int, work: Path, fmt: str, jobs: int) -> tuple[Path, float]:
    """The demo set of ``n`` records in ``work`` (written once; module doc) and the seconds it took."""
    jsonl = work / f"demo-{n}-s{seed}.jsonl"
    target = jsonl if fmt == "jsonl" else jsonl.with_suffix(".parquet")
    if target.exists():
        return target, 0.0
    started = time.perf_counter()
    if not jsonl.exists():
        tasks = [(k, min(CHUNK, n - k * CHUNK), seed, str(work / f".{jsonl.name}.part{k}"))
                 for k in range((n + CHUNK - 1) // CHUNK)]
        with ProcessPoolExecutor(max(1, min(jobs, len(tasks)))) as pool:
            parts = list(pool.map(_write_chunk, tasks))
        tmp = jsonl.with_name(f".{jsonl.name}.tmp")
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 24):
                        out.write(block)
                os.unlink(part)
        os.replace(tmp, jsonl)
    if fmt == "parquet":
        run = measure([*_cli(), "data", "convert", str(jsonl), "--out", str(target)])
        if run["returncode"]:
            raise SystemExit(f"router-ml data convert failed: {run['stderr'][-2000:]}")
    return target, time.perf_counter() - started


def _cli() -> list[str]:
    return [sys.executable, "-m", "router_ml.cli"]


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; its wall seconds, exit code, output, peak RSS (``wait4``) and the peak RSS polled
    after each ``router-ml: <stage>: ...`` line of its stderr (``rss_after``: stage -> MiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    out: list[str] = []
    err: list[str] = []
    state = {"after": "start"}
    peaks: dict[str, float] = {}

    def read_err() -> None:
        for line in proc.stderr:
            err.append(line)
            if match := STAGE_LINE.match(line):
                state["after"] = match.group(1)

    readers = [threading.Thread(target=lambda: out.extend(proc.stdout)), threading.Thread(target=read_err)]
    for t in readers:
        t.start()
    finished = threading.Event()

    def poll() -> None:
        while not finished.is_set():
            rss = _rss_mb(proc.pid)
            if rss is not None:
                peaks[state["after"]] = max(peaks.get(state["after"], 0.0), rss)
            finished.wait(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    finished.set()
    for t in (*readers, poller):
        t.join()
    return {"seconds": seconds, "returncode": proc.returncode, "stdout": "".join(out), "stderr": "".join(err),
            "peak_rss_mb": usage.ru_maxrss / 1024, "rss_after": peaks}


def _json_line(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 6) if values else None


def _stage_summary(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    seconds = _median([r["seconds"] for r in runs])
    return {"seconds": seconds, "records_per_s": round(n / seconds, 1) if seconds else None,
            "peak_rss_mb": _median([r["peak_rss_mb"] for r in runs]),
            "runs": [{"seconds": round(r["seconds"], 2), "peak_rss_mb": round(r["peak_rss_mb"], 1)} for r in runs]}


def _during(rss_after: dict[str, float], stage_names: list[str]) -> dict[str, float]:
    """Polled peaks keyed by the stage they were taken in (``rss_after`` keys them by the stage before)."""
    following = dict(zip(["start", *stage_names], stage_names, strict=False))
    return {following[k]: round(v, 1) for k, v in rss_after.items() if k in following}


def bench_size(n: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    data, gen_seconds = make_data(n, args.seed, args.work_dir, args.format, args.jobs)
    inspect_runs, train_runs, summaries = [], [], []
    for run in range(args.runs):
        inspect_runs.append(measure([*_cli(), "data", "inspect", str(data), "--json"], env))
        if inspect_runs[-1]["returncode"]:
            raise SystemExit(f"inspect failed on {data}: {inspect_runs[-1]['stderr'][-2000:]}")
        out = args.work_dir / f"run-{n}-{run}"
        cmd = [*_cli(), "train", "--config", str(args.config), "--data", str(data), "--out", str(out),
               "--seed", str(args.seed), "--cache-dir", str(args.work_dir / f"cache-{n}-{run}"),
               "--set", "tracking.enabled=false", *[x for s in args.set for x in ("--set", s)]]
        train_runs.append(measure(cmd, env))
        if train_runs[-1]["returncode"]:
            raise SystemExit(f"train failed on {data}: {train_runs[-1]['stderr'][-3000:]}")
        summaries.append(_json_line(train_runs[-1]["stdout"]))
    train = _stage_summary(train_runs, n)
    after_load = [max((v for k, v in r["rss_after"].items() if k not in ("start",)), default=None)
                  for r in train_runs]
    stage_names = list(summaries[0].get("stages", {}))
    during = [_during(r["rss_after"], stage_names) for r in train_runs]
    growth = [None if peak is None or "load" not in s.get("stages", {}) else peak - s["stages"]["load"]["rss_mb"]
              for peak, s in zip(after_load, summaries, strict=True)]
    train.update({
        "peak_rss_after_load_mb": _median(after_load),
        # what training added on top of the loaded table: the peak after loading minus the RSS loading left
        "rss_growth_after_load_mb": _median(growth),
        "peak_rss_by_stage_mb": {k: _median([d.get(k) for d in during]) for k in stage_names},
        "aiq": _median([s["test"]["aiq"] for s in summaries]),
        "aiqs": [s["test"]["aiq"] for s in summaries],
        "aiq_ci95": summaries[0]["test"].get("ci95", {}).get("aiq"),
        "fit_seconds": _median([s["fit_seconds"] for s in summaries]),
        "stages": {k: _median([s["stages"][k]["seconds"] for s in summaries]) for k in stage_names},
    })
    return {"records": n, "data": str(data), "generate_seconds": round(gen_seconds, 2),
            "inspect": _stage_summary(inspect_runs, n), "train": train}


def scaling(sizes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Train seconds per record at each size; the largest size's over the smallest's (``growth_ratio``)."""
    per = {k: v["train"]["seconds"] / v["records"] for k, v in sizes.items()}
    small, large = min(sizes, key=lambda k: sizes[k]["records"]), max(sizes, key=lambda k: sizes[k]["records"])
    ratio = per[large] / per[small]
    return {"train_seconds_per_record": per, "smallest": int(small), "largest": int(large),
            "growth_ratio": round(ratio, 3), "at_most_linear": ratio <= 1.0}


def plot(sizes: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(sizes, key=lambda k: sizes[k]["records"])
    x = [sizes[k]["records"] for k in ns]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(x, [sizes[k]["inspect"]["seconds"] for k in ns], "o-", label="data inspect")
    left.plot(x, [sizes[k]["train"]["seconds"] for k in ns], "o-", label="train (end to end)")
    for stage in sizes[ns[0]]["train"]["stages"]:
        left.plot(x, [sizes[k]["train"]["stages"].get(stage) for k in ns], ".--", label=f"train: {stage}")
    left.plot(x, [sizes[ns[0]]["train"]["seconds"] * n / x[0] for n in x], ":", color="grey", label="linear")
    left.set(xscale="log", yscale="log", xlabel="records", ylabel="seconds", title="time")
    left.legend(fontsize=7)
    right.plot(x, [sizes[k]["inspect"]["peak_rss_mb"] for k in ns], "o-", label="data inspect")
    right.plot(x, [sizes[k]["train"]["peak_rss_mb"] for k in ns], "o-", label="train")
    right.plot(x, [sizes[k]["train"]["peak_rss_after_load_mb"] for k in ns], "o--", label="train after load")
    right.set(xscale="log", xlabel="records", ylabel="peak RSS (MiB)", title="memory")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def record_counts(text: str) -> list[int]:
    """``--sizes``: comma-separated record counts, each >= 1 -> sorted, each once."""
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated record counts >= 1 like 10000,100000, "
                                         f"got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--sizes", type=record_counts, default="10000,100000,1000000",
                    help="comma-separated record counts")
    ap.add_argument("--work-dir", type=Path, default=Path("bench_scale"), help="data, runs and caches go here")
    ap.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    ap.add_argument("--runs", type=bounded(int, 1), default=2, help="runs per size; medians are reported")
    ap.add_argument("--seed", type=bounded(int, 0), default=3)
    ap.add_argument("--config", type=Path, default=ROOT / "training" / "configs" / "mlp_static.toml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="passed to train")
    ap.add_argument("--jobs", type=bounded(int, 1), default=os.cpu_count() or 1, help="processes generating data")
    ap.add_argument("--png", type=Path, help="the scaling plot (default <work-dir>/bench_scale.png)")
    args = ap.parse_args(argv)
    sizes = args.sizes
    args.work_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    load_before = os.getloadavg()
    results = {str(n): bench_size(n, args, env) for n in sizes}
    png = args.png or args.work_dir / "bench_scale.png"
    plot(results, png)
    report = {"machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "format": args.format, "runs": args.runs, "config": str(args.config), "overrides": args.set,
              "sizes": results, "scaling": scaling(results) if len(results) > 1 else None, "png": str(png)}
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
