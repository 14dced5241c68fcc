"""Serving past one core: ``router-ml serve --workers N``, the decision log with many writers, metrics summed
over workers, a dead worker restarted, and graceful shutdown (SIGTERM under load loses nothing).

The servers are real ``router-ml serve`` subprocesses in front of real fake upstreams on 127.0.0.1
(tests/fake_upstream.py); process and request counts stay small (the test machine has 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from router_ml.decision_log import DecisionLog, log_chains, log_files, merged_lines, worker_log_path
from training.data import detect_format
from training.data.decisions import read_decisions

from .conftest import ROOT
from .fake_upstream import FakeUpstream
from .serve_process import MSG, Load, Served, decisions, providers_for
from .test_serving import scrape

WRITER = """
import os, sys, time
from router_ml.decision_log import DecisionLog, feedback_record, utc_now, worker_log_path
slot, n, base, go = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
while not os.path.exists(go):
    time.sleep(0.001)
with DecisionLog(worker_log_path(base, slot), max_bytes=8192, backups=50) as log:
    for i in range(n):
        log.write({"type": "decision", "format_version": 1, "time": utc_now(),
                   "request_id": f"w{slot}-{i}", "prompt": f"prompt {slot} {i}", "status": "ok", "model": "tiny-1b",
                   "chosen": "tiny-1b", "cost_usd": 1e-6, "propensity": 1.0})
        if i % 10 == 0:  # rate a request another worker decided: the reader must join across files
            log.write(feedback_record(f"w{(slot + 1) % 3}-{max(0, i - 50)}", quality=0.5))
        time.sleep(0.001)  # the writers overlap in time however the machine schedules them
"""


def test_many_writers_at_once_and_the_merged_reader_finds_every_record_once(tmp_path):
    """Three processes append to one log at once (each its worker file, rotating every 8 KB); the merged reader
    yields each record exactly once, in time order, and training's decisions reader joins feedback across files."""
    base, go, n = tmp_path / "decisions.jsonl", tmp_path / "go", 400
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(k), str(n), str(base), str(go)], cwd=ROOT)
             for k in range(3)]
    time.sleep(0.5)
    go.touch()
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    chains = log_chains(base)
    assert [chain[-1] for chain in chains] == [worker_log_path(base, k) for k in range(3)]
    assert all(len(chain) > 3 for chain in chains), "each writer rotated several times"
    assert log_files(base) == [f for chain in chains for f in chain]
    lines = [json.loads(raw) for _, _, raw in merged_lines(base)]
    ids = Counter(x["request_id"] for x in lines if x["type"] == "decision")
    assert len(ids) == 3 * n and set(ids.values()) == {1}
    times = [x["time"] for x in lines]
    assert times == sorted(times)
    spans = [(min(t), max(t)) for k in range(3) if (t := [x["time"] for x in lines if x["request_id"][:2] == f"w{k}"])]
    assert max(first for first, _ in spans) < min(last for _, last in spans), "the writers ran at the same time"
    rows = list(read_decisions(base))
    assert len(rows) == 3 * n and sum(r.error is None for r in rows) == 3 * 35  # ids 0, 10 ... 340 rated
    # worker 0 has no request yet: its empty file is still recognised as a decision log, by the others' lines
    quiet = tmp_path / "quiet" / "decisions.jsonl"
    quiet.parent.mkdir()
    quiet.touch()
    shutil.copy(worker_log_path(base, 1), worker_log_path(quiet, 1))
    assert detect_format(quiet) == "decisions" and len(list(read_decisions(quiet))) > 0
    # a single writer's log is what it always was: the path itself and its rotations
    single = tmp_path / "one" / "d.jsonl"
    with DecisionLog(single, max_bytes=1024) as log:
        for i in range(40):
            log.write({"type": "decision", "time": "t", "request_id": f"r{i}", "pad": "x" * 50})
    assert log_files(single)[-1] == single and len(log_files(single)) > 1
    ids = [json.loads(raw)["request_id"] for _, _, raw in merged_lines(single)]
    assert ids[-5:] == [f"r{i}" for i in range(35, 40)]


def _metric(url: str, name: str, labels: tuple = ()) -> float:
    return scrape(httpx.get(url + "/metrics", timeout=10).text).get((name, labels), 0.0)


def test_lines_several_workers_say_at_once_on_one_stderr_stay_whole():
    """Each message is one write (``print`` wrote the text and its newline apart, and two workers reloading at
    once shared a line: measured 4,426 whole lines of 8,000 this way, 8,000 of 8,000 now)."""
    import re

    code = ("import sys\nfrom router_ml._stderr import say\n"
            "for i in range(2000): say(f'w{sys.argv[1]} {i} ' + 'x' * 200)")
    read, write = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k)], stderr=write, cwd=ROOT) for k in range(4)]
    os.close(write)
    with os.fdopen(read, "rb") as f:
        lines = f.read().decode().splitlines()
    assert all(proc.wait(timeout=60) == 0 for proc in procs)
    assert len(lines) == 8000 and all(re.fullmatch(r"router-ml: w\d \d+ x{200}", line) for line in lines)


def test_the_supervisor_sleeps_until_a_signal_or_a_restart_is_due():
    """Workers' deaths and the signals it serves wake the supervisor (SIGCHLD, SIGTERM, ...), so it polls only
    for the first readiness reports and for a restart waiting out its back-off."""
    from router_ml.workers import IDLE_WAIT_S, STARTUP_POLL_S, _Slot, _wait_s

    slots = [_Slot(0), _Slot(1)]
    assert _wait_s(slots, announced=False) == STARTUP_POLL_S
    assert _wait_s(slots, announced=True) == IDLE_WAIT_S  # every worker up: nothing to poll for
    slots[1].restart_at = time.monotonic() + 1.5  # a worker that died young, restarted after its pause
    assert 1.4 < _wait_s(slots, announced=True) <= 1.5
    slots[1].restart_at = time.monotonic() - 1.0  # overdue: no sleep at all
    assert _wait_s(slots, announced=True) == 0.0
    slots[1].proc = object()  # restarted: the pause no longer counts
    assert _wait_s(slots, announced=True) == IDLE_WAIT_S


@pytest.mark.slow  # the session's trained router
def test_workers_share_one_port_sum_their_metrics_and_a_dead_worker_comes_back(trained, tmp_path):
    """Two workers: both take connections, /metrics sums both whichever answers; a SIGKILLed worker is
    restarted and a SIGTERMed one drains and is restarted, under load, losing nothing."""
    log = tmp_path / "decisions.jsonl"
    with FakeUpstream(delay_s=0.005) as up, \
            Served("--artifact", str(trained.artifact), "--providers", str(providers_for(up.base_url, tmp_path)),
                   "--decision-log", str(log), "--workers", "2", cwd=tmp_path) as served:
        assert "2 workers" in served.stderr
        load = Load(served.url, threads=3, close=True).start()  # a new connection per request: both workers serve
        load.wait_answers(60)
        load.stop()
        pids = {httpx.get(served.url + "/health", headers={"connection": "close"}).json()["pid"] for _ in range(30)}
        assert len(pids) == 2, "both workers accept connections on the one port"
        answered = len(load.answered)
        for _ in range(3):  # whichever worker answers the scrape, the counts are the sum over both
            assert _metric(served.url, "router_ml_requests_total", (("status", "ok"),)) == answered
        assert _metric(served.url, "router_ml_variant_decisions_total", (("variant", "default"),)) == answered
        os.kill(pids.pop(), signal.SIGKILL)
        served.wait_for("was killed by SIGKILL")
        for _ in range(100):  # the restarted worker is up once both pids answer again
            if len({httpx.get(served.url + "/health", headers={"connection": "close"}).json()["pid"]
                    for _ in range(10)}) == 2:
                break
        more = Load(served.url, threads=2, close=True).start()
        more.wait_answers(30)
        os.kill(pids.pop(), signal.SIGTERM)  # the other one drains under load: the first keeps the port served
        served.wait_for("exited with code 0")
        more.wait_answers(30, after=time.monotonic())
        more.stop()
        assert not more.failures and not more.statuses and not load.failures and not load.statuses
        total = answered + len(more.answered)
        assert _metric(served.url, "router_ml_requests_total", (("status", "ok"),)) == total  # the dead one's too
        up.mode = "500"  # tiny-1b and its fallbacks fail: circuits open in the workers that see it
        failed = []
        for _ in range(12):
            r = httpx.post(served.url + "/v1/chat/completions", json={"model": "tiny-1b", "messages": MSG},
                           headers={"connection": "close"}, timeout=30)
            assert r.status_code == 502
            failed.append(r.json()["error"]["request_id"])
        for _ in range(3):  # open in any live worker: 1, whichever worker answers
            assert _metric(served.url, "router_ml_circuit_open", (("upstream", "tiny-1b#0"),)) == 1
        assert _metric(served.url, "router_ml_requests_total", (("status", "error"),)) == 12
        assert served.stop() == 0
    assert "Traceback" not in served.stderr, served.stderr
    assert [f.name for f in log_files(log)] == ["decisions.jsonl", "decisions.w1.jsonl"]
    logged = Counter(d["request_id"] for d in decisions(log))
    assert set(logged) == {a[0] for a in load.answered + more.answered} | set(failed)
    assert set(logged.values()) == {1}


@pytest.mark.slow  # the session's trained router
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_answers_and_logs_every_accepted_request_once(trained, tmp_path, workers):
    """SIGTERM while clients keep sending: /ready turns 503, requests keep being served through the drain, then
    the server stops and exits 0 - and every request it accepted was answered, and logged exactly once."""
    log = tmp_path / "decisions.jsonl"
    with FakeUpstream(delay_s=0.05) as up, \
            Served("--artifact", str(trained.artifact), "--providers", str(providers_for(up.base_url, tmp_path)),
                   "--decision-log", str(log), "--workers", str(workers), "--drain-seconds", "0.6",
                   cwd=tmp_path) as served:
        assert httpx.get(served.url + "/ready").json() == {"ready": True, "reason": None}
        load = Load(served.url, threads=6, until_refused=True).start()
        load.wait_answers(30)
        signalled = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(served.url + "/ready", headers={"connection": "close"})
        assert ready.status_code == 503 and ready.json()["reason"].startswith("draining")
        load.join(60)
        assert served.stop() == 0, served.stderr
    assert "Traceback" not in served.stderr and "Cancel" not in served.stderr, served.stderr
    assert not load.statuses, Counter(load.statuses)
    assert sum(t > signalled + 0.3 for _, _, t in load.answered) > 0, "served during the drain"
    logged = Counter(d["request_id"] for d in decisions(log))
    assert set(logged.values()) == {1}
    assert set(logged) == {a[0] for a in load.answered}, "every accepted request answered, every answer logged"
    assert {d["status"] for d in decisions(log)} == {"ok"}


@pytest.mark.slow  # the session's trained router
def test_a_second_server_on_a_log_another_one_writes_is_refused_and_feedback_still_appends(trained, tmp_path):
    """Two servers started in one directory with the same --decision-log would each rotate the other's records
    away: the second is refused at start (a single process or workers), naming the file and the writer; the
    feedback command still appends beside the live server, and the log keeps every record once."""
    log = tmp_path / "decisions.jsonl"
    with FakeUpstream() as up:
        args = ["--artifact", str(trained.artifact), "--providers", str(providers_for(up.base_url, tmp_path)),
                "--decision-log", "decisions.jsonl"]
        with Served(*args, cwd=tmp_path) as first:
            rid = httpx.post(first.url + "/v1/chat/completions", json={"messages": MSG}, timeout=30).json()
            for workers in ("1", "2"):
                second = subprocess.run([sys.executable, "-m", "router_ml.cli", "serve", *args, "--port", "0",
                                         "--workers", workers], cwd=tmp_path, capture_output=True, text=True,
                                        timeout=120)
                assert second.returncode == 1, second.stderr
                assert (f"decision log decisions.jsonl: process {first.proc.pid} is already writing it"
                        in second.stderr), second.stderr
                assert "--decision-log" in second.stderr and "Traceback" not in second.stderr
            rid = rid["router_ml"]["request_id"]
            out = subprocess.run([sys.executable, "-m", "router_ml.cli", "feedback", "--log", str(log), "--request-id",
                                  rid, "--thumbs", "up"], capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert out.returncode == 0, out.stderr
            httpx.post(first.url + "/v1/chat/completions", json={"messages": MSG}, timeout=30).raise_for_status()
            assert first.stop() == 0
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(x["type"], x["request_id"] == rid) for x in lines] == [("decision", True), ("feedback", True),
                                                                    ("decision", False)]
    assert all(f.stat().st_size == 0 for f in log_files(log)[1:])  # a refused server's other worker wrote nothing



@pytest.mark.slow  # the session's trained router
def test_requests_cut_off_by_the_shutdown_timeout_are_logged_as_the_servers_doing(trained, tmp_path):
    """SIGTERM with requests in flight that outlast --shutdown-timeout: the server cancels them, and the
    decision log says so (it said "the caller cancelled the request", blaming clients for a shutdown)."""
    import threading

    from router_ml.serve_app import SHUTDOWN_CANCEL

    log = tmp_path / "decisions.jsonl"
    with FakeUpstream(delay_s=5) as up, \
            Served("--artifact", str(trained.artifact), "--providers", str(providers_for(up.base_url, tmp_path)),
                   "--decision-log", str(log), "--shutdown-timeout", "0.5", cwd=tmp_path) as served:
        outcomes: list[object] = []

        def call() -> None:
            try:
                outcomes.append(httpx.post(served.url + "/v1/chat/completions", json={"messages": MSG},
                                           timeout=30).status_code)
            except httpx.HTTPError as exc:
                outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(up.requests) < 3:  # all three at the upstream, which answers in 5 s
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert served.stop() == 0
        for t in threads:
            t.join(30)
    assert len(outcomes) == 3 and 200 not in outcomes, outcomes
    logged = decisions(log)
    assert len(logged) == 3 and {(d["status"], d["error"]) for d in logged} == {("cancelled", SHUTDOWN_CANCEL)}


@pytest.mark.slow  # the session's trained router
def test_sigint_twice_stops_a_single_process_at_once_without_a_traceback(trained, tmp_path):
    """SIGINT, then SIGINT again, with a request in flight: the server stops without waiting and prints no
    lifespan traceback for the cancellation of its lifespan task."""
    import contextlib
    import threading

    with FakeUpstream(delay_s=5) as up, \
            Served("--artifact", str(trained.artifact), "--providers", str(providers_for(up.base_url, tmp_path)),
                   cwd=tmp_path) as served:
        def call() -> None:
            with contextlib.suppress(httpx.HTTPError):  # cut off: the server stops without answering
                httpx.post(served.url + "/v1/chat/completions", json={"messages": MSG}, timeout=30)

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not up.requests:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        served.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        started = time.monotonic()
        code = served.stop(signal.SIGINT)
        assert time.monotonic() - started < 4  # not the upstream's 5 s
    assert code in (0, 130), code
    assert "Traceback" not in served.stderr and "lifespan" not in served.stderr, served.stderr
