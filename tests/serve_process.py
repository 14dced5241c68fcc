"""A real ``router-ml serve`` process for the tests, and a small threaded load against it.

Shared by tests/test_workers.py and tests/test_variants.py: the server is a subprocess started the way a
user starts it (its ``router-ml: serving ...`` line gives the URL), the load is plain httpx clients in
threads that record every answer and every failure, so a test can compare them with the decision log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .conftest import ROOT

MSG = [{"role": "user", "content": "What is the capital of France?"}]


def providers_for(upstream_url: str, directory: Path) -> Path:
    """The demo catalog with every model pointed at ``upstream_url`` (``http://127.0.0.1:PORT/v1``)."""
    root = upstream_url.removesuffix("/v1")
    path = directory / "providers.toml"
    path.write_text((ROOT / "data/demo/providers.toml").read_text()
                    .replace("http://127.0.0.1:9100", root).replace("http://localhost:9100", root))
    return path


class Served:
    """``router-ml serve ARGS --port 0`` in ``cwd``; ``url`` once it printed its serving line. Every later stderr
    line lands in ``lines`` (a reader thread), so the pipe never fills."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
        self.proc = subprocess.Popen([sys.executable, "-m", "router_ml.cli", "serve", *args, "--port", "0"],
                                     cwd=cwd, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.proc.stderr.readline()
            self.lines.append(line)
            if "serving" in line or not line or time.monotonic() > deadline:
                break
        if "serving" not in line:
            self.proc.kill()
            raise AssertionError("router-ml serve did not start:\n" + "".join(self.lines) + self.proc.stderr.read())
        self.url = "http://" + line.split("http://", 1)[1].split()[0].removesuffix("/v1")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < count:
            assert time.monotonic() < deadline, f"no {count} x {text!r} on stderr:\n" + "".join(self.lines)
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(10)
        self.proc.stderr.close()
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.stop()


class Load:
    """``threads`` clients posting chat completions back to back until :meth:`stop` - or, with
    ``until_refused``, until the server refuses connections. ``answered``: (request id, variant, the time
    the answer came) of every 200; ``statuses``: every other status; ``failures``: transport errors."""

    def __init__(self, url: str, *, threads: int = 4, close: bool = False, until_refused: bool = False,
                 headers: dict[str, str] | None = None):
        self.url, self.close, self.until_refused = url, close, until_refused
        self.headers = {**(headers or {}), **({"connection": "close"} if close else {})}
        self.answered: list[tuple[str, str | None, float]] = []
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=self.headers) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                body = {"messages": [{"role": "user", "content": f"client {index} question {n}: what is {n} + 1?"}]}
                try:
                    r = http.post("/v1/chat/completions", json=body)
                except httpx.TransportError as exc:
                    with self._lock:
                        self.failures.append(type(exc).__name__)
                    if self.until_refused and isinstance(exc, httpx.ConnectError):
                        return
                    time.sleep(0.01)
                    continue
                with self._lock:
                    if r.status_code == 200:
                        info = r.json()["router_ml"]
                        self.answered.append((info["request_id"], info.get("variant"), time.monotonic()))
                    else:
                        self.statuses.append(r.status_code)

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def after(self, t: float, until: float = float("inf")) -> list[tuple[str, str | None, float]]:
        """The answers that came between monotonic times ``t`` and ``until``."""
        return [a for a in list(self.answered) if t < a[2] < until]

    def wait_answers(self, n: int, *, after: float = 0.0, timeout: float = 60) -> None:
        """Wait for ``n`` answers (that came after monotonic time ``after``)."""
        deadline = time.monotonic() + timeout
        while len(self.after(after)) < n:
            assert time.monotonic() < deadline, f"only {len(self.answered)} answers; failures {self.failures[:5]}"
            time.sleep(0.02)

    def stop(self, timeout: float = 60) -> None:
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float = 60) -> None:
        for t in self._threads:
            t.join(timeout)
            assert not t.is_alive(), "a load thread did not finish"


def decisions(log: Path) -> list[dict]:
    """Every decision line of a (multi-worker, rotated) log, in the merged reader's time order."""
    from router_ml.decision_log import merged_lines

    lines = [json.loads(raw) for _, _, raw in merged_lines(log)]
    return [x for x in lines if x["type"] == "decision"]
