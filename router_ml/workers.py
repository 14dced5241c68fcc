"""``router-ml serve --workers N``: N worker processes serving one port, and the supervisor that runs them.

One Python process uses one core at most. The supervisor binds the listening socket once and starts N
workers (``python -m router_ml.workers``, fresh interpreters rather than forks: no onnxruntime or BLAS
threads are ever copied into a child), each inheriting that socket; the kernel hands every new
connection to one of them. Each worker is a complete ``router-ml serve`` (:func:`router_ml.serve.run_server`)
with its own router variants, upstream connection pools and **circuit breakers**: a worker learns that
an upstream fails from its own requests, so with N workers an upstream's circuit opens in each worker
after that worker's ``breaker_failures`` consecutive failures (``router_ml_circuit_open`` shows 1 while
it is open in any live worker). What the workers share:

- the decision log, without sharing a file: worker ``k`` writes its own and holds its lock
  (:func:`router_ml.decision_log.worker_log_path`; worker 0 the ``--decision-log`` path itself), and every
  reader merges them in time order (:func:`router_ml.decision_log.merged_lines`);
- the metrics: the supervisor points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh temporary directory, and any
  worker's ``/metrics`` is the sum over all of them (:mod:`router_ml.serve_metrics`).

The supervisor restarts a worker that dies (same slot, same log file; after a growing pause when it
keeps dying young, and it gives up - stopping everything, exit 1 - after 5 such deaths in a row), forwards
SIGHUP to every worker (each hot-swaps its variants; a worker that reloaded through ``POST
/admin/reload`` signals the supervisor, which reloads the others), and on SIGTERM or SIGINT forwards
SIGTERM to every worker, waits for each to drain and exit (:mod:`router_ml.serve`), and exits 0. It
prints one ``router-ml: serving ...`` line once every worker is up; a worker that fails to start stops
the whole server with that worker's error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from router_ml._stderr import say
from router_ml.errors import RouterMLError

__all__ = ["supervise", "worker_main"]

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
#: a worker that dies younger than this (seconds) counts as a failed start for the restart back-off
YOUNG_S = 10.0
#: that many young deaths in a row of one slot and the supervisor gives up
MAX_YOUNG_DEATHS = 5
#: the supervisor's poll of the readiness pipe until every worker has reported, and its longest sleep after
STARTUP_POLL_S = 0.2
IDLE_WAIT_S = 5.0


def _status(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"


class _Slot:
    def __init__(self, index: int):
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.young_deaths = 0
        self.restart_at: float | None = None
        self.ready = False
        self.banner = ""


def supervise(serve_argv: list[str], workers: int, options: dict[str, Any]) -> int:
    """Run ``workers`` copies of ``router-ml serve <serve_argv>`` on one socket until SIGTERM/SIGINT (see the
    module doc). ``options``: the parsed ``run_server`` options, checked here before any worker starts."""
    from router_ml.providers import ProviderCatalog
    from router_ml.serve import MULTIPROC_ENV, bind, check_open_bind
    from router_ml.variants import SERVED_ENV

    check_open_bind(options["host"], options["api_key"])
    ProviderCatalog.load(options["providers"])  # a bad catalog fails here once, not in every worker
    sock = bind(options["host"], options["port"])
    metrics_dir = tempfile.mkdtemp(prefix="router-ml-metrics-")
    # the variants the workers serve, recorded by each after a load or reload: a restarted worker starts on them
    env = {**os.environ, MULTIPROC_ENV: metrics_dir, SERVED_ENV: os.path.join(metrics_dir, "served-variants.json")}
    ready_r, ready_w = os.pipe()
    os.set_blocking(ready_r, False)
    slots = [_Slot(k) for k in range(workers)]
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)

    def start(slot: _Slot) -> None:
        cmd = [sys.executable, "-m", "router_ml.workers", "--slot", str(slot.index), "--listen-fd",
               str(sock.fileno()), "--ready-fd", str(ready_w), "--", *serve_argv]
        # its own process group: a Ctrl-C in the terminal reaches the supervisor, which stops the workers
        slot.proc = subprocess.Popen(cmd, pass_fds=(sock.fileno(), ready_w), env=env, process_group=0)
        slot.started, slot.restart_at, slot.ready = time.monotonic(), None, False

    try:
        for slot in slots:
            start(slot)
        return _watch(slots, start, ready_r, metrics_dir, options, sock)
    finally:
        for slot in slots:
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()
        while signal.sigtimedwait(_SIGNALS, 0) is not None:
            pass  # signals that came too late to matter must not kill the process once unblocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        for fd in (ready_r, ready_w):
            os.close(fd)
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _watch(slots: list[_Slot], start: Any, ready_r: int, metrics_dir: str, options: dict[str, Any],
           sock: socket.socket) -> int:
    """The supervisor's loop: readiness reports, dead workers, signals."""
    from prometheus_client.multiprocess import mark_process_dead

    pending = b""
    announced = False
    while True:
        info = signal.sigtimedwait(_SIGNALS, _wait_s(slots, announced))
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            return _stop(slots, options, sock)
        if info is not None and info.si_signo == signal.SIGHUP:
            for slot in slots:  # not back to a worker that reloaded through the admin endpoint and asked
                if slot.proc is not None and slot.proc.poll() is None and slot.proc.pid != info.si_pid:
                    slot.proc.send_signal(signal.SIGHUP)
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(ready_r, 65536):
                pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            report = json.loads(line)
            slot = slots[report["slot"]]
            slot.ready, slot.banner = True, report["banner"]
            if not announced and all(s.ready for s in slots):
                announced = True
                pids = ", ".join(str(s.proc.pid) for s in slots if s.proc is not None)
                say(f"{slots[0].banner} - {len(slots)} workers "
                    f"(pids {pids}) under supervisor pid {os.getpid()}")
        now = time.monotonic()
        for slot in slots:
            code = None if slot.proc is None else slot.proc.poll()
            if code is not None:
                pid, age = slot.proc.pid, now - slot.started
                slot.proc = None
                mark_process_dead(pid, metrics_dir)
                if not slot.ready and not announced:
                    say(f"error: worker {slot.index} (pid {pid}) {_status(code)} before it could serve; stopping")
                    _stop(slots, options, sock)
                    return code if code > 0 else 1
                slot.young_deaths = slot.young_deaths + 1 if age < YOUNG_S else 0
                if slot.young_deaths >= MAX_YOUNG_DEATHS:
                    say(f"error: worker {slot.index} died {slot.young_deaths} times in a row within {YOUNG_S:g} s "
                        f"of starting (last: pid {pid} {_status(code)}); stopping")
                    _stop(slots, options, sock)
                    return 1
                pause = 0.0 if not slot.young_deaths else min(30.0, 0.5 * 2 ** (slot.young_deaths - 1))
                say(f"worker {slot.index} (pid {pid}) {_status(code)} after {age:.1f} s; restarting it"
                    + (f" in {pause:g} s" if pause else ""))
                slot.restart_at = now + pause
            if slot.proc is None and slot.restart_at is not None and now >= slot.restart_at:
                start(slot)
                slot.ready = True  # already announced: a restarted worker's report changes nothing


def _wait_s(slots: list[_Slot], announced: bool) -> float:
    """How long the supervisor may sleep: a worker's death (SIGCHLD) and the signals it serves wake it at
    once, so it polls only for the first readiness reports (read from a pipe) and for a restart that
    waits out its back-off; otherwise it wakes every ``IDLE_WAIT_S`` seconds (an idle supervisor that
    woke five times a second used 0.8 ms of CPU per second here)."""
    if not announced:
        return STARTUP_POLL_S
    now = time.monotonic()
    waits = [slot.restart_at - now for slot in slots if slot.proc is None and slot.restart_at is not None]
    return max(0.0, min([IDLE_WAIT_S, *waits]))


def _stop(slots: list[_Slot], options: dict[str, Any], sock: socket.socket) -> int:
    """SIGTERM every worker and wait for them to drain and exit (a second SIGTERM/SIGINT is passed on: the
    workers stop draining; SIGKILL past the deadline). Returns 0."""
    sock.close()  # no worker starts again: once the last one stops listening, connections are refused
    live = [s.proc for s in slots if s.proc is not None and s.proc.poll() is None]
    for proc in live:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + options["drain_s"] + options["shutdown_timeout_s"] + 10
    while any(proc.poll() is None for proc in live):
        if time.monotonic() > deadline:
            for proc in live:
                if proc.poll() is None:
                    say(f"worker pid {proc.pid} did not stop in time; killing it")
                    proc.kill()
                    proc.wait()
            break
        info = signal.sigtimedwait(_SIGNALS, 0.1)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            for proc in live:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
    return 0


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the supervisor dies, so no orphan keeps serving the port."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_main(argv: list[str] | None = None) -> int:
    """One worker (started by :func:`supervise`): ``--slot K --listen-fd FD --ready-fd FD -- <serve args>``."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload asked for while loading: the files are read now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # the supervisor's blocked signals are inherited
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m router_ml.workers")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("serve_args", nargs=argparse.REMAINDER)
    own = parser.parse_args(argv)
    serve_args = own.serve_args[1:] if own.serve_args[:1] == ["--"] else own.serve_args

    from router_ml.cli import build_parser, serve_options
    from router_ml.serve import Worker, run_server
    from router_ml.variants import SERVED_ENV

    def ready(banner: str) -> None:
        os.write(own.ready_fd, json.dumps({"slot": own.slot, "pid": os.getpid(), "banner": banner}).encode() + b"\n")

    sock = socket.socket(fileno=own.listen_fd)
    try:
        options = serve_options(build_parser(command_groups=False).parse_args(["serve", *serve_args]),
                                served=os.environ.get(SERVED_ENV))
        run_server(**options, worker=Worker(own.slot, sock, ready))
    except RouterMLError as exc:
        say(f"error: worker {own.slot}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
