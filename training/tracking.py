"""MLflow tracking that never stops a training run.

Default (embedded) store: ``sqlite:///<cwd>/mlflow.db`` with artifacts under ``<cwd>/mlruns``
(both ignored by git); ``MLFLOW_TRACKING_URI`` points it anywhere else - for a team, an
``http://`` MLflow server backed by PostgreSQL that also serves the artifacts (``mlflow server
--backend-store-uri postgresql://... --artifacts-destination ...``), so no client needs database
credentials or a shared disk. A URI is only ever reported with its password masked
(:func:`redact_uri`): summaries and comparison tables get printed and logged. Every call is guarded: if
the tracking server is unreachable - at the start or mid-run - the failure is recorded in
:attr:`Tracker.error`, a warning is logged once, further calls are skipped, and training finishes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
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
        self.run_id: str | None = None
        self.error: str | None = None
        self._mlflow: Any = None

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled or self.error is not None or self._mlflow is None and what != "start":
            return None
        try:
            return fn()
        except Exception as exc:  # any tracking failure must not end training
            self.error = f"{what}: {type(exc).__name__}: {exc}"
            log.warning("MLflow tracking disabled for the rest of this run (%s)", self.error)
            return None

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
            self.run_id = run.info.run_id

        self._guard("start", start)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        self._guard("end", lambda: self._mlflow.end_run(status=status))

    def log_params(self, params: dict[str, Any]) -> None:
        clean = {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in params.items()}
        self._guard("log_params", lambda: self._mlflow.log_params(clean))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._guard("set_tags", lambda: self._mlflow.set_tags({k: str(v) for k, v in tags.items()}))

    def log_metrics(self, values: dict[str, float | None], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in values.items() if v is not None}
        self._guard("log_metrics", lambda: self._mlflow.log_metrics(clean, step=step))

    def log_dict(self, payload: Any, artifact_file: str) -> None:
        self._guard("log_dict", lambda: self._mlflow.log_dict(payload, artifact_file))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._guard("log_artifact", lambda: self._mlflow.log_artifact(str(path), artifact_path))

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._guard("log_artifacts", lambda: self._mlflow.log_artifacts(str(directory), artifact_path))

    def register(self, name: str, artifact_path: str = "artifact") -> str | None:
        """Register this run's exported router as a new version of the registered model ``name``
        (loadable with ``Router.load("models:/<name>/<version>")``); returns the version."""

        def register() -> str:
            client = self._mlflow.MlflowClient()
            try:
                client.get_registered_model(name)
            except self._mlflow.exceptions.MlflowException:
                client.create_registered_model(name)
            source = f"{client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
            return str(client.create_model_version(name, source=source, run_id=self.run_id).version)

        return self._guard("register", register)
