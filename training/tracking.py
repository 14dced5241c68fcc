"""MLflow tracking that never stops a training run.

Default (embedded) store: ``sqlite:///<cwd>/mlflow.db`` with artifacts under ``<cwd>/mlruns``
(both ignored by git); ``MLFLOW_TRACKING_URI`` points it anywhere else - for a team, an
``http://`` MLflow server backed by PostgreSQL that also serves the artifacts (``mlflow server
--backend-store-uri postgresql://... --artifacts-destination ...``), so no client needs database
credentials or a shared disk. A URI is only ever reported with its password masked
(:func:`redact_uri`): summaries and comparison tables get printed and logged. Every call is guarded: if
the tracking server is unreachable - at the start or mid-run - the failure is recorded in
:attr:`Tracker.error`, a warning is logged once, further calls are skipped, and training finishes.

The MLflow calls of a run go, in order, to one thread of their own, so training does not wait on the
tracking store: starting a run (importing MLflow and opening the store, about 4 s) overlaps the fit,
and so do the per-epoch metrics. MLflow keeps its active run per thread, which is why every call of a
run is made on that one thread. Logging files (``log_artifact(s)``, ``log_dict``) and ``register``
wait for everything queued before them and for themselves, as do reading :attr:`Tracker.run_id` and
:attr:`Tracker.error`; leaving the ``with`` block waits for the end of the run.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

__all__ = ["Tracker", "default_tracking_uri", "redact_uri"]

log = logging.getLogger("router_ml.tracking")


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user info replaced by ``***`` (``postgresql://u:***@host/db``):
    what a summary may print. URIs without one come back unchanged."""
    scheme, sep, rest = uri.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return uri
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}{slash}{path}"


class Tracker:
    """A guarded MLflow run: ``with Tracker(experiment="x") as t: t.log_metrics({...})``."""

    def __init__(self, *, experiment: str, enabled: bool = True, tracking_uri: str | None = None,
                 run_name: str | None = None, nested: bool = False, parent_run_id: str | None = None):
        self.experiment = experiment
        self.enabled = enabled
        self._uri = tracking_uri or default_tracking_uri()
        #: where the run is logged, password masked (for summaries; the real URI stays private)
        self.tracking_uri = redact_uri(self._uri)
        self.run_name = run_name
        self.nested = nested or parent_run_id is not None
        self.parent_run_id = parent_run_id
        self._run_id: str | None = None
        self._error: str | None = None
        self._mlflow: Any = None
        self._calls: queue.Queue[tuple[str, Callable[[], Any], Future | None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id (None when tracking is off or failed to start); waits for the start."""
        self._drain()
        return self._run_id

    @property
    def error(self) -> str | None:
        """Why tracking stopped (None while it works); waits for the calls queued so far."""
        self._drain()
        return self._error

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled or self._error is not None or self._mlflow is None and what != "start":
            return None
        try:
            return fn()
        except Exception as exc:  # any tracking failure must not end training
            self._error = f"{what}: {type(exc).__name__}: {exc}"
            log.warning("MLflow tracking disabled for the rest of this run (%s)", self._error)
            return None

    def _serve(self) -> None:
        """The tracking thread: each queued call in order, until the end of the run."""
        while (item := self._calls.get()) is not None:
            what, fn, done = item
            result = None
            try:
                result = self._guard(what, fn)
            except BaseException as exc:  # not an Exception (_guard takes those); a waiting caller still gets on
                self._error = f"{what}: {type(exc).__name__}: {exc}"
            finally:
                self._calls.task_done()
                if done is not None:
                    done.set_result(result)
        self._calls.task_done()

    def _submit(self, what: str, fn: Callable[[], Any], *, wait: bool = False) -> Any:
        """Queue ``fn`` on the tracking thread; with ``wait``, return its result once it ran."""
        if self._thread is None:  # tracking off, or outside the ``with`` block: in this thread, as before
            return self._guard(what, fn)
        done: Future | None = Future() if wait else None
        self._calls.put((what, fn, done))
        return done.result() if done is not None else None

    def _drain(self) -> None:
        if self._thread is not None:
            self._calls.join()

    def __enter__(self) -> Tracker:
        def start():
            # fail fast instead of retrying for minutes when the server is down
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            import mlflow

            mlflow.set_tracking_uri(self._uri)
            if mlflow.get_experiment_by_name(self.experiment) is None:
                location = None
                if self._uri.startswith("sqlite:"):
                    location = (Path(self._uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
                mlflow.create_experiment(self.experiment, artifact_location=location)
            mlflow.set_experiment(self.experiment)
            run = mlflow.start_run(run_name=self.run_name, nested=self.nested, parent_run_id=self.parent_run_id)
            self._mlflow = mlflow
            self._run_id = run.info.run_id

        if self.enabled:
            self._thread = threading.Thread(target=self._serve, name="router-ml-tracking", daemon=True)
            self._thread.start()
            self._submit("start", start)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        self._submit("end", lambda: self._mlflow.end_run(status=status), wait=True)
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join()
            self._thread = None

    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in params.items()}
        self._submit("log_params", lambda: self._mlflow.log_params(clean))

    def set_tags(self, tags: dict[str, Any]) -> None:
        clean = {k: str(v) for k, v in tags.items()}
        self._submit("set_tags", lambda: self._mlflow.set_tags(clean))

    def log_metrics(self, values: dict[str, float | None], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in values.items() if v is not None}
        self._submit("log_metrics", lambda: self._mlflow.log_metrics(clean, step=step))

    def log_dict(self, payload: Any, artifact_file: str) -> None:
        self._submit("log_dict", lambda: self._mlflow.log_dict(payload, artifact_file), wait=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._submit("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path), wait=True)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._submit("log_artifacts", lambda: self._mlflow.log_artifacts(str(directory), artifact_path), wait=True)

    def register(self, name: str, artifact_path: str = "artifact") -> str | None:
        """Register this run's exported router as a new version of the registered model ``name``
        (loadable with ``Router.load("models:/<name>/<version>")``); returns the version."""

        def register() -> str:
            client = self._mlflow.MlflowClient()
            try:
                client.get_registered_model(name)
            except self._mlflow.exceptions.MlflowException:
                client.create_registered_model(name)
            source = f"{client.get_run(self._run_id).info.artifact_uri}/{artifact_path}"
            return str(client.create_model_version(name, source=source, run_id=self._run_id).version)

        return self._submit("register", register, wait=True)
