"""The processes of ``scripts/load_test.py``: starting, stopping and timing them, and the reference proxies.

A reference is another proxy put in front of the same fake upstream, in the same run, at the same
offered load, and measured exactly like ``router-ml serve`` (``--reference NAME``):

- ``passthrough``: ``scripts/passthrough_proxy.py``, today's stack (starlette + uvicorn + httpx) with
  nothing on top - the floor a Python proxy on it can reach; its CPU per request is the denominator
  of ``cpu_ratio_vs_reference.passthrough``.
- ``litellm``: LiteLLM's proxy, pinned (``LITELLM_VERSION``), installed on first use into its own
  virtual environment (``~/.cache/router-ml/litellm-<version>`` or ``--reference-venv``) from the
  package registry - never a dependency of router-ml - and configured with every catalog model
  pointing at the fake upstreams, default settings otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import httpx

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ("passthrough", "litellm")
LITELLM_VERSION = "1.108.7"
LITELLM_REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"  # the proxy extra: uvicorn, fastapi, orjson, ...
_INSTALLED = ".router-ml-installed"  # written last: a venv without it is an interrupted install, redone


def start(cmd: list[str], marker: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start a process and return it with the first line of its output that contains ``marker``
    (stdout when the marker is ``port``, as the fake upstream prints it; stderr otherwise)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    stream = proc.stdout if marker == "port" else proc.stderr
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = stream.readline()
        if marker in line:
            return proc, line
        if not line and proc.poll() is not None:
            raise SystemExit(f"{' '.join(cmd)} exited: {proc.stderr.read()}")
    proc.kill()
    raise SystemExit(f"{' '.join(cmd)} did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def child_pids(pid: int, *, module: str | None = None) -> set[int]:
    """The live child processes of ``pid`` (Linux /proc; empty elsewhere); with ``module`` only those running
    ``python -m <module>`` (``router_ml.workers``: ``router-ml serve --workers N``'s workers)."""
    children = {int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and (s := _stat(int(p.name))) and int(s[1]) == pid}
    if module is None:
        return children
    return {c for c in children if ["-m", module] == _cmdline(c)[1:3]}


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # gone meanwhile
        return []


def _tree(pid: int) -> dict[int, list[str]]:
    """``/proc/<p>/stat`` of ``pid`` and its live descendants."""
    stats = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit() and (s := _stat(int(p.name)))}
    tree, grew = {pid}, True
    while grew:
        children = {p for p, s in stats.items() if int(s[1]) in tree} - tree
        tree |= children
        grew = bool(children)
    return {p: stats[p] for p in tree if p in stats}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (Linux /proc; 0 elsewhere), in
    clock ticks (10 ms): what :func:`settle` watches; a phase's CPU is :func:`cpu_between`'s.

    Descendants count because a proxy may serve from child processes (LiteLLM's CLI, ``--workers``)."""
    return sum(int(s[11]) + int(s[12]) for s in _tree(pid).values()) / os.sysconf("SC_CLK_TCK")


class CpuSnapshot(NamedTuple):
    """A process tree's CPU at one moment: per process its clock ticks (every thread it ever had) and
    the nanoseconds each of its live threads ran (``/proc/<p>/task/<t>/schedstat``; empty if unreadable)."""

    ticks: dict[int, int]
    threads: dict[int, dict[int, int]]


def _thread_ns(pid: int) -> dict[int, int]:
    out = {}
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # gone meanwhile, or no schedstat: the ticks only
        return {}
    return out


def cpu_snapshot(pid: int) -> CpuSnapshot:
    tree = _tree(pid)
    return CpuSnapshot(ticks={p: int(s[11]) + int(s[12]) for p, s in tree.items()},
                       threads={p: _thread_ns(p) for p in tree})


def cpu_between(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """CPU seconds the tree used between two snapshots. Clock ticks are 10 ms: over a phase of a few
    hundred requests that is +-0.05 ms a request, a tenth of what is measured. So each process counts
    its threads' nanoseconds instead, where they account for all its work - every thread of the start
    still there and the two figures within the ticks' rounding (a thread that began and ended inside
    the phase shows in the ticks only); otherwise, and for a process born since, its ticks."""
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p, ticks in after.ticks.items():
        coarse = (ticks - before.ticks.get(p, 0)) * tick
        start, end = before.threads.get(p), after.threads.get(p)
        if p in before.ticks and start and end and start.keys() <= end.keys():
            fine = sum(ns - start.get(t, 0) for t, ns in end.items()) / 1e9
            if abs(coarse - fine) <= 2.5 * tick:
                coarse = fine
        total += coarse
    return total


def settle(pid: int, *, idle_cpu_s: float = 0.05, interval_s: float = 0.5, limit_s: float = 30.0) -> None:
    """Wait until the process tree uses under ``idle_cpu_s`` per ``interval_s``: a proxy that fell behind
    keeps working on requests the client gave up on, and that work belongs to its phase, not the next."""
    deadline, last = time.monotonic() + limit_s, cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        now = cpu_seconds(pid)
        if now - last < idle_cpu_s:
            return
        last = now


def prepare(names: list[str], *, venv: Path | None = None) -> None:
    """Install what the references need (LiteLLM, minutes the first time) or fail, before anything starts."""
    if "litellm" in names:
        ensure_litellm(venv or default_litellm_venv())


def start_reference(name: str, *, upstreams: dict[str, str], workdir: Path,
                    venv: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start reference ``name`` in front of ``upstreams`` (model -> base URL ending in /v1); returns the
    process and its base URL. The passthrough forwards everything to the first model's upstream."""
    if name == "passthrough":
        proc, line = start([sys.executable, str(ROOT / "scripts/passthrough_proxy.py"), "--upstream",
                            next(iter(upstreams.values())), "--port", "0"], "serving")
        return proc, line.split("serving ", 1)[1].split()[0]
    if name == "litellm":
        return _start_litellm(upstreams, workdir, venv or default_litellm_venv())
    raise SystemExit(f"--reference {name}: unknown; choose from {', '.join(REFERENCES)}")


def default_litellm_venv() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "router-ml" / f"litellm-{LITELLM_VERSION}"


def ensure_litellm(venv: Path) -> Path:
    """The ``litellm`` command of ``venv``, installing ``LITELLM_REQUIREMENT`` there first if needed (a few
    minutes, from the package registry pip is configured for). Fails naming what pip could not get."""
    exe = venv / "bin" / "litellm"
    marker = venv / _INSTALLED
    if exe.is_file() and marker.is_file() and marker.read_text().strip() == LITELLM_REQUIREMENT:
        return exe
    print(f"load_test: installing {LITELLM_REQUIREMENT} into {venv} (once; a few minutes)", file=sys.stderr)
    if not (venv / "bin" / "python").is_file():
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode:
            raise SystemExit(f"--reference litellm: cannot create a virtual environment at {venv}: "
                             f"{made.stderr.strip()[-500:]}; pass --reference-venv DIR somewhere writable")
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          LITELLM_REQUIREMENT], capture_output=True, text=True)
    if pip.returncode or not exe.is_file():
        text = pip.stdout + pip.stderr
        missing = sorted(set(re.findall(r"(?:No matching distribution found for|satisfies the requirement) (\S+)",
                                        text)))
        what = f"pip could not get {', '.join(missing)}" if missing else "pip failed"
        tail = "\n".join(line for line in text.splitlines() if "is ignored" not in line)[-1500:]
        raise SystemExit(f"--reference litellm: installing {LITELLM_REQUIREMENT} into {venv} failed: {what} "
                         f"(offline, or no wheel for this Python/platform). pip said:\n{tail}\nInstall it there "
                         f"yourself ({venv}/bin/pip install '{LITELLM_REQUIREMENT}') or drop --reference litellm.")
    marker.write_text(LITELLM_REQUIREMENT + "\n")
    return exe


def litellm_config(upstreams: dict[str, str]) -> str:
    """LiteLLM's proxy config: each model name served by its fake upstream as an OpenAI-compatible endpoint."""
    out = ["model_list:"]
    for model, base in upstreams.items():
        out += [f"  - model_name: {model}", "    litellm_params:", f"      model: openai/{model}",
                f"      api_base: {base}", "      api_key: fake-key"]
    return "\n".join(out) + "\n"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_litellm(upstreams: dict[str, str], workdir: Path, venv: Path) -> tuple[subprocess.Popen, str]:
    exe = ensure_litellm(venv)
    config = workdir / "litellm.yaml"
    config.write_text(litellm_config(upstreams))
    port = _free_port()  # LiteLLM's CLI does not print the port it bound, so choose one
    log = workdir / "litellm.log"
    env = {**os.environ,
           # loopback-only benchmark: the load generator sends no key, and LiteLLM refuses to start keyless
           "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
           # offline machine: the bundled price map, not a download that would stall startup
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    with open(log, "w") as out:  # a file, not a pipe nobody reads: a full pipe would stall the proxy
        proc = subprocess.Popen([str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                                 "--num_workers", "1"], cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # importing LiteLLM's proxy takes tens of seconds on a busy machine
    with httpx.Client(trust_env=False, timeout=5) as http:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if http.get(url + "/health/liveliness").status_code == 200:
                    return proc, url + "/v1"
            except httpx.HTTPError:
                pass
            time.sleep(1)
    stop(proc)
    raise SystemExit(f"--reference litellm: {exe} did not start (exit code {proc.returncode}); the end of its "
                     f"log {log}:\n{log.read_text()[-3000:]}")
