"""MLflow tracking that never stops a training run.

Default (embedded) store: ``sqlite:///<cwd>/mlflow.db`` with artifacts under ``<cwd>/mlruns``
(both ignored by git); ``MLFLOW_TRACKING_URI`` points it anywhere else - for a team, an
``http://`` MLflow server backed by PostgreSQL that also serves the artifacts (``mlflow server
--backend-store-uri postgresql://... --artifacts-destination ...``), so no client needs database
credentials or a shared disk. A URI is only ever reported with its password masked
(:func:`redact_uri`): summaries and comparison tables get printed and logged. Every call is guarded: if
the tracking server is unreachable - at the start or mid-run - the failure is recorded in
:attr:`Tracker.error`, a warning is logged once, further calls are skipped, and training finishes.

A store that cannot be used is found in seconds, not after MLflow's retries (about 100 s for a database,
minutes for a server): an SQLite store is opened once with :mod:`sqlite3` before MLflow is handed it, and
HTTP requests are retried once (:func:`fail_fast`). Every message about the store names its URI and where
the URI came from (``MLFLOW_TRACKING_URI``, or the default store).

**How a run ends.** Leaving the ``with`` block ends the run even when tracking stopped part-way:
``FINISHED`` when the block finished and every call was logged; ``FAILED`` when the block raised, or when a
tracking call failed - the run's MLflow record is then incomplete (the calls after the failure were skipped),
so it must not be ranked as a finished run; its tag ``router_ml.tracking_error`` holds the failure (training
itself went on, and its summary says ``tracking_error``); ``KILLED`` when the process was interrupted
(SIGINT, or SIGTERM - what ``timeout``, Slurm and Kubernetes send: while a run is open in the main thread,
SIGTERM raises :class:`Terminated`, a ``SystemExit`` with code 143, so the runs end before the process exits;
a second SIGTERM meanwhile is ignored, and a handler someone else installed is left alone).

**Names MLflow refuses.** Metric, parameter and tag names may hold only alphanumerics, ``_ - . / :`` and
spaces, at most 250 characters, and must not look like another path (``a//b``, ``./a``); keys built from
data - a model or group named ``tiny-1b (2024@v1)`` - are renamed by :func:`mlflow_key`: each refused
character becomes ``_``, the name is cut to fit, and ``-`` plus six hex digits of the original name's SHA-1
are appended (``val.scorer_auc.tiny-1b _2024_v1_-52d5e4``), so two names never merge and a name is renamed
the same way in every run. A warning names the first renaming, and the run's artifact
``router_ml/renamed_keys.json`` maps every logged name back to the original.

The MLflow calls of a run go, in order, to one thread of their own, so training does not wait on the
tracking store: starting a run (importing MLflow and opening the store, about 4 s) overlaps the fit,
and so do the per-epoch metrics. MLflow keeps its active run per thread, which is why every call of a
run is made on that one thread. Logging files (``log_artifact(s)``, ``log_dict``) and ``register``
wait for everything queued before them and for themselves, as do reading :attr:`Tracker.run_id` and
:attr:`Tracker.error`; leaving the ``with`` block waits for the end of the run.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import os
import posixpath
import queue
import re
import signal
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from router_ml.errors import RouterMLError

__all__ = ["Terminated", "Tracker", "TrackingStoreError", "check_store", "child_run_labels", "default_tracking_uri",
           "fail_fast", "mlflow_key", "quiet_retries", "redact_uri", "store_problem", "uri_setting"]

log = logging.getLogger("router_ml.tracking")

#: the tag that holds why tracking stopped part-way through a run (the run then ends FAILED)
ERROR_TAG = "router_ml.tracking_error"
#: the run artifact that maps renamed metric, parameter and tag names back to the originals
RENAMED_KEYS_FILE = "router_ml/renamed_keys.json"
_MAX_KEY = 250  # MLflow's limit on a metric, parameter or tag name
_MAX_TAG_VALUE = 8000
_KEY_CHARS = re.compile(r"[\w./\- :]*")
_REFUSED_CHAR = re.compile(r"[^\w./\- :]")


class TrackingStoreError(RouterMLError):
    """The tracking store named by the URI cannot be used (the message names the URI and where it came from)."""


class Terminated(SystemExit):
    """SIGTERM while an MLflow run is open: unwinds like Ctrl-C, so the run ends KILLED, then exits 143."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


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


def uri_setting(uri: str) -> str:
    """Where ``uri`` came from, for messages: ``MLFLOW_TRACKING_URI``, the default store, or a URI passed in."""
    if os.environ.get("MLFLOW_TRACKING_URI") == uri:
        return "MLFLOW_TRACKING_URI"
    if not os.environ.get("MLFLOW_TRACKING_URI") and uri == default_tracking_uri():
        return "the default store; set MLFLOW_TRACKING_URI to use another"
    return "the tracking URI given, not MLFLOW_TRACKING_URI"


def _where(uri: str) -> str:
    return f"{redact_uri(uri)} ({uri_setting(uri)})"


def fail_fast() -> None:
    """MLflow's HTTP client set to give up in seconds, not retry a dead server for minutes (its defaults:
    7 retries, exponential backoff, 120 s timeout); settings already in the environment are kept."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@contextlib.contextmanager
def quiet_retries() -> Iterator[None]:
    """urllib3's "Retrying (Retry(...)) after connection broken ..." warning held back: a server that does not
    answer is reported once, by the caller, in one line."""
    logger = logging.getLogger("urllib3.connectionpool")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


_UNREACHABLE = ("Max retries exceeded", "Failed to establish a new connection", "Connection refused",
                "Connection aborted", "timed out", "Name or service not known", "nodename nor servname",
                "No route to host", "Temporary failure in name resolution", "RemoteDisconnected")


def store_problem(uri: str, exc: BaseException) -> str:
    """One line on why the store at ``uri`` failed ``exc``: an HTTP server that does not answer is
    "cannot reach the MLflow tracking server URI (MLFLOW_TRACKING_URI)", anything else names the store too."""
    if isinstance(exc, TrackingStoreError):
        return str(exc)
    text = str(getattr(exc, "message", None) or exc)
    if uri.startswith(("http://", "https://")) and any(marker in text for marker in _UNREACHABLE):
        reason = re.search(r"\[Errno -?\d+\][^'\")]*|Read timed out|Connection aborted", text)
        return (f"cannot reach the MLflow tracking server {_where(uri)}"
                + (f": {reason.group(0).strip()}" if reason else ""))
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"the MLflow tracking store {_where(uri)} failed: {type(exc).__name__}: {first[:500]}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI as SQLAlchemy (MLflow's store) reads it - percent-escapes
    decoded (``my%20runs/mlflow.db`` is ``my runs/mlflow.db``); None for other stores, an in-memory database
    and SQLite's own URI form (``?uri=true``), which are left to MLflow."""
    if not uri.startswith("sqlite:///"):
        return None
    try:
        from sqlalchemy.engine import make_url
    except ImportError:  # MLflow's SQL stores need it; without it MLflow reports the store itself
        return None
    try:
        url = make_url(uri)
    except Exception:  # a URI SQLAlchemy cannot parse: MLflow will say so
        return None
    if str(url.query.get("uri", "")).lower() in ("true", "1"):
        return None
    path = url.database
    return None if path in (None, "", ":memory:") else Path(path)


def _local_store_path(uri: str) -> Path | None:
    """The directory of a file store (``file:///path`` or a plain path; None for other stores)."""
    if uri.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:", "uc:")):
        return Path(uri)
    return None


def _not_a_directory(directory: Path, exc: OSError) -> str:
    """Why ``directory`` cannot be made: the ancestor that is a file, or the error's own reason."""
    for parent in (directory, *directory.parents):
        if parent.exists():
            return f"{parent} is a file, not a directory" if not parent.is_dir() else \
                f"{exc.strerror or exc}: {directory}"
    return str(exc)


def check_store(uri: str, *, create: bool) -> None:
    """Raise :class:`TrackingStoreError` - at once - when the store at ``uri`` cannot be used: an SQLite
    database that cannot be opened (or made, with ``create``), and without ``create`` (reading: ``compare``)
    an SQLite or file store that is not there - reading must not create one. Other stores (a server, a
    database server) are left to their first request."""
    path = _sqlite_path(uri)
    if path is None:
        local = _local_store_path(uri)
        if not create and local is not None and not local.is_dir():
            raise TrackingStoreError(f"no tracking store at {local} ({uri_setting(uri)}); log runs there with "
                                     "'router-ml train' first, or point MLFLOW_TRACKING_URI at the store")
        return
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingStoreError(f"cannot create the MLflow tracking store {_where(uri)}: "
                                     f"{_not_a_directory(path.parent, exc)}") from None
    elif not path.exists():
        blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        raise TrackingStoreError(f"no tracking store at {path} ({uri_setting(uri)})"
                                 + (f": {blocked} is a file, not a directory" if blocked else "")
                                 + "; log runs there with 'router-ml train' first, or point MLFLOW_TRACKING_URI at "
                                 "the store")
    if path.is_dir():
        raise TrackingStoreError(f"cannot open the MLflow tracking store {_where(uri)}: {path} is a directory")
    target = f"file:{urllib.parse.quote(str(path))}?mode={'rwc' if create else 'ro'}"
    try:
        with contextlib.closing(sqlite3.connect(target, uri=True, timeout=5)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise TrackingStoreError(f"cannot open the MLflow tracking store {_where(uri)}: {exc}") from None
    if not create and "experiments" not in tables:
        raise TrackingStoreError(f"no tracking store at {path} ({uri_setting(uri)}): an SQLite file without "
                                 "MLflow's tables; point MLFLOW_TRACKING_URI at the store")


def _key_accepted(key: str) -> bool:
    norm = posixpath.normpath(key)
    return (0 < len(key) <= _MAX_KEY and _KEY_CHARS.fullmatch(key) is not None and norm == key
            and norm != "." and not norm.startswith(("..", "/")))


def mlflow_key(key: str) -> str:
    """``key`` when MLflow accepts it as a metric, parameter or tag name, else a name it accepts: refused
    characters become ``_``, empty, ``.`` and ``..`` path parts become ``_``, the name is cut to fit, and
    ``-`` plus the first six hex digits of the original's SHA-1 is appended (the same key always gets the
    same name, and two keys never one). See the module's docstring."""
    if _key_accepted(key):
        return key
    text = _REFUSED_CHAR.sub("_", key)
    text = "/".join(part if part not in ("", ".", "..") else "_" for part in text.split("/"))
    if text.startswith(".."):
        text = "_" + text[1:]
    suffix = "-" + hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return text[:_MAX_KEY - len(suffix)].rstrip("/") + suffix


#: (run-name suffix, tags) that :func:`child_run_labels` gives the child runs started inside it
_CHILD_LABELS: contextvars.ContextVar[tuple[str, dict[str, str]] | None] = contextvars.ContextVar(
    "router_ml_child_run_labels", default=None)


@contextlib.contextmanager
def child_run_labels(suffix: str, tags: dict[str, Any]) -> Iterator[None]:
    """Child runs (a :class:`Tracker` with a ``parent_run_id``) started inside this block get ``suffix``
    after their run name and ``tags`` from their start: what ``router-ml sweep`` names each setting and seed by."""
    token = _CHILD_LABELS.set((suffix, {k: str(v) for k, v in tags.items()}))
    try:
        yield
    finally:
        _CHILD_LABELS.reset(token)


#: the SIGTERM handler's state: the Tracker that installed it, how many runs are being ended now, and whether
#: a SIGTERM came meanwhile
_sigterm: dict[str, Any] = {"owner": None, "ending": 0, "pending": False}


def _on_sigterm(signum: int, frame: Any) -> None:
    if _sigterm["ending"]:  # a run is being ended: that finishes first, then the process stops (Tracker.__exit__)
        _sigterm["pending"] = True
        return
    raise Terminated()  # each SIGTERM: one swallowed by a __del__ or an except SystemExit does not mute the next


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
        self._renamed: dict[str, str] = {}  # logged name -> original name
        self._owns_sigterm = False

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
        if not self.enabled or self._mlflow is None and what != "start":
            return None
        if self._error is not None and what != "end":  # the end is attempted whatever stopped the rest
            return None
        try:
            return fn()
        except Exception as exc:  # any tracking failure must not end training
            message = f"start: {store_problem(self._uri, exc)}" if what == "start" else \
                f"{what}: {type(exc).__name__}: {exc}"
            if self._error is None:
                self._error = message
                log.warning("MLflow tracking disabled for the rest of this run (%s)", message)
            else:
                log.warning("MLflow run %s could not be ended, so it stays RUNNING in the store (%s)",
                            self._run_id, message)
            return None

    def _serve(self) -> None:
        """The tracking thread: each queued call in order, until the end of the run."""
        while (item := self._calls.get()) is not None:
            what, fn, done = item
            result = None
            try:
                result = self._guard(what, fn)
            except BaseException as exc:  # not an Exception (_guard takes those); a waiting caller still gets on
                self._error = self._error or f"{what}: {type(exc).__name__}: {exc}"
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
        labels = _CHILD_LABELS.get() if self.parent_run_id is not None else None
        run_name, start_tags = self.run_name, {}
        if labels is not None:
            run_name = (f"{run_name} {labels[0]}" if run_name else labels[0])[:_MAX_KEY]  # runs.name: 250 in SQL
            start_tags = {mlflow_key(k): v[:_MAX_TAG_VALUE] for k, v in labels[1].items()}

        def start():
            fail_fast()  # fail fast instead of retrying for minutes when the server is down
            check_store(self._uri, create=True)  # an SQLite store that cannot be opened: now, not after 100 s
            import mlflow

            mlflow.set_tracking_uri(self._uri)
            with quiet_retries():
                known = mlflow.get_experiment_by_name(self.experiment)
            if known is None:
                location = None
                if (path := _sqlite_path(self._uri)) is not None:
                    location = (path.parent.resolve() / "mlruns").as_uri()
                mlflow.create_experiment(self.experiment, artifact_location=location)
            mlflow.set_experiment(self.experiment)
            run = mlflow.start_run(run_name=run_name, nested=self.nested, parent_run_id=self.parent_run_id,
                                   tags=start_tags or None)
            self._mlflow = mlflow
            self._run_id = run.info.run_id

        if self.enabled:
            if threading.current_thread() is threading.main_thread() and _sigterm["owner"] is None \
                    and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)  # the outermost run's; restored when it ends
                _sigterm.update(owner=self, ending=0, pending=False)
                self._owns_sigterm = True
            self._thread = threading.Thread(target=self._serve, name="router-ml-tracking", daemon=True)
            self._thread.start()
            self._submit("start", start)
        return self

    def _end(self, status: str) -> None:
        """On the tracking thread: the renamed names' map, why tracking stopped (then FAILED), the end."""
        mlflow = self._mlflow
        if self._renamed and self._error is None:
            try:
                mlflow.log_dict(dict(sorted(self._renamed.items())), RENAMED_KEYS_FILE)
            except Exception as exc:
                self._error = f"log_dict: {type(exc).__name__}: {exc}"
                log.warning("MLflow tracking disabled for the rest of this run (%s)", self._error)
        if self._error is not None:
            with contextlib.suppress(Exception):  # the store may be gone: the end is still tried
                mlflow.set_tag(ERROR_TAG, self._error[:_MAX_TAG_VALUE])
            if status == "FINISHED":
                status = "FAILED"
                log.warning("MLflow run %s ended FAILED: tracking stopped part-way, so its record is incomplete "
                            "(tag %s); training itself went on", self._run_id, ERROR_TAG)
        mlflow.end_run(status=status)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt | Terminated):
            status = "KILLED"
        else:
            status = "FAILED"
        _sigterm["ending"] += 1
        try:
            self._submit("end", lambda: self._end(status), wait=True)
            if self._thread is not None:
                self._calls.put(None)
                self._thread.join()
                self._thread = None
        finally:
            _sigterm["ending"] -= 1
            if self._owns_sigterm:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _sigterm["owner"] = None
                self._owns_sigterm = False
        if _sigterm["pending"] and not _sigterm["ending"]:  # SIGTERM while the run was ended: stop now
            _sigterm["pending"] = False
            if exc_type is None:  # (an exception already on its way out stops the process anyway)
                raise Terminated()

    def _keys(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` under names MLflow accepts (:func:`mlflow_key`); the first renaming is warned about."""
        out = {}
        for key, value in values.items():
            name = mlflow_key(str(key))
            if name != key and name not in self._renamed:
                if not self._renamed:
                    log.warning("MLflow refuses the name %r (it allows letters, digits, _ - . / : and spaces, up to "
                                "%d characters): logged as %r; the run's %s lists every renamed name", key,
                                _MAX_KEY, name, RENAMED_KEYS_FILE)
                self._renamed[name] = str(key)
            out[name] = value
        return out

    def log_params(self, params: dict[str, Any]) -> None:
        clean = self._keys({k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in params.items()})
        self._submit("log_params", lambda: self._mlflow.log_params(clean))

    def set_tags(self, tags: dict[str, Any]) -> None:
        clean = self._keys({k: str(v)[:_MAX_TAG_VALUE] for k, v in tags.items()})
        self._submit("set_tags", lambda: self._mlflow.set_tags(clean))

    def log_metrics(self, values: dict[str, float | None], step: int | None = None) -> None:
        clean = self._keys({k: float(v) for k, v in values.items() if v is not None})
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
