"""A throwaway PostgreSQL cluster and an MLflow tracking server on it, for tests (the team setup).

Why a real server: SQLite is the embedded default, but a team logs to ``mlflow server`` backed by
PostgreSQL, and that path - alembic migrations on PostgreSQL, artifacts proxied over HTTP, search
through the REST API - is what ``router-ml train`` and ``compare`` must work against.

The cluster lives in a fresh temporary directory, listens on 127.0.0.1 at a free port (and a
socket in that directory), trusts local connections and runs with fsync off: it only has to live
as long as the test session. ``initdb`` refuses to run as root, so under root (CI containers) the
server runs as the ``postgres`` user that Debian's package creates, else ``nobody``, via
``setpriv``; the directory is handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

#: Debian's package puts the binaries here (not on PATH); other installs put them on PATH.
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: PATH first, else the newest Debian version."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = [Path(d) for d in glob.glob(DEBIAN_BINARIES) if (Path(d) / "initdb").is_file()]
    return max(candidates, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, default=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> tuple[list[str], int, int]:
    """The command prefix that drops root (``initdb`` refuses root), and the uid/gid it runs as."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        user = pwd.getpwnam("nobody")
    prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
    return prefix, user.pw_uid, user.pw_gid


@dataclass
class Postgres:
    bin: Path
    root: Path
    port: int
    user: str = "routerml"

    def url(self, database: str, driver: str = "") -> str:
        """libpq URL of ``database``; ``driver="psycopg2"`` gives SQLAlchemy's spelling for MLflow, which
        names the driver because SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, *args: str) -> subprocess.CompletedProcess:
        prefix, _, _ = _run_as()
        out = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "LC_ALL": "C"}, cwd=self.root)
        if out.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({out.returncode}): {out.stderr[-2000:]}\n{tail}")
        return out

    @classmethod
    def start(cls, bin_dir: Path) -> Postgres:
        _, uid, gid = _run_as()
        root = Path(tempfile.mkdtemp(prefix="router-ml-pg-"))
        os.chown(root, uid, gid)
        pg = cls(bin_dir, root, free_port())
        pg._as_owner(str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", pg.user, "--auth=trust",
                     "-E", "UTF8", "--no-locale", "--no-sync")
        options = f"-p {pg.port} -k {root} -c listen_addresses=127.0.0.1 -F"
        pg._as_owner(str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"),
                     "-o", options, "-w", "-t", "60", "start")
        return pg

    def create_database(self, name: str) -> None:
        self._as_owner(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)

    def stop(self) -> None:
        try:
            self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class MlflowServer:
    process: subprocess.Popen
    url: str
    log: Path

    @classmethod
    def start(cls, backend_uri: str, artifacts: Path, log: Path, *, timeout: float = 180.0) -> MlflowServer:
        """``mlflow server`` on a free port, proxying artifacts to ``artifacts``; returns once /health answers."""
        port = free_port()
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--host", "127.0.0.1",
               "--port", str(port), "--artifacts-destination", str(artifacts), "--workers", "1"]
        # its own session: the server forks uvicorn workers, and stop() ends the whole group. Its server-side
        # job runner (7 huey consumer processes, for GenAI features router-ml does not use) stays off.
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with log.open("w") as handle:
            process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        server = cls(process, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({process.returncode}): {log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        server.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s: {log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)  # a throwaway server: no need to wait long for a graceful exit
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
