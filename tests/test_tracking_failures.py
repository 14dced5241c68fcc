"""MLflow tracking when the store misbehaves: a run whose tracking fails part-way still ends (FAILED, with the
error as a tag), names MLflow refuses are renamed instead of losing the batch, SIGTERM ends the open runs, and a
store that is down, cannot be opened or is not there is one line naming the URI and MLFLOW_TRACKING_URI within
seconds - all against real stores in tmp_path and a closed port on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from router_ml.errors import RouterMLError
from training.tracking import ERROR_TAG, RENAMED_KEYS_FILE, Tracker, TrackingStoreError, mlflow_key


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound once, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, cwd, uri: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", *map(str, args)], capture_output=True, text=True,
                         cwd=cwd, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=timeout)
    return out, time.perf_counter() - started


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and "Traceback" not in out.stderr and len(lines) == 1, out.stderr[-3000:]
    return lines[0]


def test_a_run_whose_tracking_fails_part_way_still_ends_failed_with_the_error_tag(tmp_path):
    """An experiment whose artifact location lies under a regular file: log_artifacts failed, tracking was
    disabled for the rest of the run - end_run included - and the run stayed RUNNING forever."""
    import mlflow

    from training.compare import compare_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "afile").write_text("a regular file")
    client = mlflow.MlflowClient(uri)
    client.create_experiment("badart", artifact_location=(tmp_path / "afile" / "art").as_uri())
    files = tmp_path / "router"
    files.mkdir()
    (files / "metrics.json").write_text("{}")
    with Tracker(experiment="badart", tracking_uri=uri, run_name="r") as tracker:
        tracker.set_tags({"router": "mlp"})
        tracker.log_metrics({"aiq": 0.5})
        tracker.log_artifacts(files, "router")  # fails: the artifact location is under a file
        tracker.log_metrics({"after": 1.0})  # skipped: tracking stopped at the error
        run_id = tracker.run_id
        assert tracker.error.startswith("log_artifacts: ")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.info.end_time is not None
    assert run.data.tags[ERROR_TAG].startswith("log_artifacts: ") and run.data.metrics == {"aiq": 0.5}
    # compare leaves it out and says so; named by id, it is refused with the reason
    with pytest.raises(RouterMLError, match=r"no finished training runs .*left out 1 unfinished training run\(s\): "
                                            r"1 FAILED"):
        compare_runs(experiments=["badart"], tracking_uri=uri, plot=None)
    with pytest.raises(RouterMLError, match=rf"run {run_id}: FAILED, not finished .*MLflow tracking stopped "
                                            r"part-way: log_artifacts: "):
        compare_runs(run_ids=[run_id], tracking_uri=uri, plot=None)


def test_names_mlflow_refuses_are_renamed_and_the_rest_of_the_run_is_kept(tmp_path):
    """A model named 'tiny-1b (2024@v1)' made the key 'val.scorer_auc.tiny-1b (2024@v1)': MLflow refused the
    batch, every metric of it was lost, tracking stopped, and the run stayed RUNNING without artifacts."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    weird = "val.scorer_auc.tiny-1b (2024@v1)"
    long = "x" * 300
    assert mlflow_key("val.scorer_auc.tiny-1b") == "val.scorer_auc.tiny-1b"  # accepted names are kept
    assert mlflow_key(weird) == mlflow_key(weird) != mlflow_key("val.scorer_auc.tiny-1b [2024@v1]")  # stable, apart
    assert mlflow_key(weird).startswith("val.scorer_auc.tiny-1b _2024_v1_-")
    for name in ("a/../b", "", "..x", "/abs", "a//b/", long, "modèle (ß)"):
        assert mlflow_key(name) != name and len(mlflow_key(name)) <= 250
    files = tmp_path / "files"
    files.mkdir()
    (files / "note.txt").write_text("kept")
    refused = {weird: 0.9, "val.scorer_auc.frontier-xl": 0.8, "aiq": 0.5, long: 1.0, "a/../b": 2.0, "": 3.0}
    with Tracker(experiment="t", tracking_uri=uri) as tracker:
        tracker.log_params({"model (v1)": "tiny", "ok": 1})
        tracker.set_tags({"group: a|b": "x", "router": "mlp"})
        tracker.log_metrics(refused)
        tracker.log_artifacts(files, "files")
        run_id = tracker.run_id
        assert tracker.error is None
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {mlflow_key(k): v for k, v in refused.items()}
    assert run.data.params == {mlflow_key("model (v1)"): "tiny", "ok": "1"}
    assert run.data.tags[mlflow_key("group: a|b")] == "x"
    renamed = json.loads(Path(client.download_artifacts(run_id, RENAMED_KEYS_FILE, str(tmp_path / "d"))).read_text())
    assert renamed[mlflow_key(weird)] == weird and renamed[mlflow_key(long)] == long and "aiq" not in renamed
    assert {a.path for a in client.list_artifacts(run_id, "files")} == {"files/note.txt"}


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time
    from training.tracking import Tracker, child_run_labels
    uri = sys.argv[1]
    with Tracker(experiment="sig", tracking_uri=uri, run_name="sweep-parent") as parent:
        with child_run_labels("router.hidden=8 seed=1", {"router_ml.sweep.seed": 1}):
            with Tracker(experiment="sig", tracking_uri=uri, run_name="mlp-static",
                         parent_run_id=parent.run_id) as child:
                print(parent.run_id, child.run_id, flush=True)
                time.sleep(120)
""")


def test_sigterm_ends_the_open_runs_killed_and_exits_143(tmp_path):
    """SIGTERM (timeout, Slurm, Kubernetes) killed the process outright: the run - and a sweep's parent run -
    stayed RUNNING, while Ctrl-C ended them."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = tmp_path / "runs.py"
    script.write_text(SIGTERM_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    try:
        parent_id, child_id = proc.stdout.readline().split()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    for run_id in (parent_id, child_id):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.info.end_time is not None
    child = client.get_run(child_id)
    assert child.info.run_name == "mlp-static router.hidden=8 seed=1" and child.data.tags["router_ml.sweep.seed"] == "1"


def test_an_unreachable_server_fails_within_seconds_naming_the_uri_and_the_setting(tmp_path, monkeypatch):
    """compare retried a dead server for minutes, then printed tracebacks, and with --run-id said 'not found';
    train's message did not name MLFLOW_TRACKING_URI."""
    uri = f"http://127.0.0.1:{_closed_port()}"
    expected = f"cannot reach the MLflow tracking server {uri} (MLFLOW_TRACKING_URI)"
    for selection in (["--experiment", "X"], ["--run-id", "0" * 32]):
        out, seconds = _cli("compare", *selection, "--no-plot", cwd=tmp_path, uri=uri)
        assert _one_error_line(out).startswith(f"router-ml: error: {expected}") and seconds < 30
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.perf_counter()
    with Tracker(experiment="t") as tracker:
        tracker.log_metrics({"m": 1.0})
        assert tracker.error.startswith(f"start: {expected}") and tracker.run_id is None
    assert time.perf_counter() - started < 30


def test_a_store_that_cannot_be_opened_fails_within_seconds_naming_the_uri(tmp_path, monkeypatch):
    """An SQLite store that cannot be opened stalled train ~100 s in MLflow's retries, and compare ~105 s before an
    sqlalchemy traceback; a path under a regular file gave a bare '[Errno 17] File exists'."""
    from training.compare import compare_runs

    (tmp_path / "afile").write_text("a regular file")
    (tmp_path / "dir.db").mkdir()
    (tmp_path / "text.db").write_text("not a database")
    cases = {f"sqlite:///{tmp_path / 'dir.db'}": f"{tmp_path / 'dir.db'} is a directory",
             f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}": f"{tmp_path / 'afile'} is a file, not a directory"}
    if Path("/proc/self").is_dir():  # a file system nothing may create a file in
        cases["sqlite:////proc/router-ml-test.db"] = "unable to open database file"
    for uri, why in cases.items():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        started = time.perf_counter()
        with Tracker(experiment="t") as tracker:
            tracker.log_metrics({"m": 1.0})
            assert tracker.error.startswith("start: cannot ") and tracker.error.endswith(why), tracker.error
            assert f"MLflow tracking store {uri} (MLFLOW_TRACKING_URI): " in tracker.error
        assert time.perf_counter() - started < 20, uri
    for name, why in (("dir.db", "is a directory"), ("text.db", "file is not a database")):
        uri = f"sqlite:///{tmp_path / name}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(TrackingStoreError, match=rf"cannot open the MLflow tracking store {uri} "
                                                     rf"\(MLFLOW_TRACKING_URI\): .*{why}"):
            compare_runs(experiments=["X"], plot=None)
    out, seconds = _cli("compare", "--experiment", "X", "--no-plot", cwd=tmp_path,
                        uri=f"sqlite:///{tmp_path / 'dir.db'}")
    assert "(MLFLOW_TRACKING_URI)" in _one_error_line(out) and seconds < 30
    assert (tmp_path / "text.db").read_text() == "not a database"


def test_compare_reads_a_store_and_never_creates_one(tmp_path, monkeypatch):
    """compare, which only reads, created an empty SQLite store (and its directories) where none was."""
    from training.compare import compare_runs

    (tmp_path / "afile").write_text("a regular file")
    missing = tmp_path / "nope" / "sub" / "mlflow.db"
    for uri, message in ((f"sqlite:///{missing}", f"no tracking store at {missing} (MLFLOW_TRACKING_URI); "),
                         (f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}",
                          f"(MLFLOW_TRACKING_URI): {tmp_path / 'afile'} is a file, not a directory"),
                         ((tmp_path / "nope" / "mlruns").as_uri(), f"no tracking store at {tmp_path / 'nope'}")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        with pytest.raises(TrackingStoreError) as caught:
            compare_runs(experiments=["X"], plot=None)
        assert message in str(caught.value), caught.value
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)  # the default store, ./mlflow.db, is not there either
    with pytest.raises(TrackingStoreError, match=r"no tracking store at .*mlflow\.db \(the default store; set "
                                                 r"MLFLOW_TRACKING_URI to use another\)"):
        compare_runs(run_ids=["0" * 32], plot=None)
    assert not (tmp_path / "nope").exists() and not (tmp_path / "mlflow.db").exists()


ENDING_SCRIPT = """
import os, signal, sys, time
from training.tracking import Tracker

with Tracker(experiment="e", tracking_uri=sys.argv[1]) as tracker:
    tracker.log_metrics({"m": 1.0})
    print(tracker.run_id, flush=True)  # (waits for the run's start)
    # SIGTERM sent from the tracking thread while the main thread waits for the run's end (queued after this)
    tracker._submit("kill", lambda: (time.sleep(0.5), os.kill(os.getpid(), signal.SIGTERM)))
print("went on after the SIGTERM", flush=True)
"""


def test_a_sigterm_while_the_run_is_ended_lets_the_end_finish_then_stops(tmp_path):
    """A SIGTERM that came while the run was being ended unwound out of the wait for the end: the end was still
    queued on the tracking thread when the process exited, and the run could stay RUNNING."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = tmp_path / "ending.py"
    script.write_text(ENDING_SCRIPT)
    out = subprocess.run([sys.executable, str(script), uri], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 143 and "went on" not in out.stdout and "Traceback" not in out.stderr, out
    run = mlflow.MlflowClient(uri).get_run(out.stdout.split()[0])
    assert run.info.status == "FINISHED" and run.data.metrics["m"] == 1.0  # the block itself had finished


def test_a_percent_encoded_sqlite_path_is_the_store_mlflow_opens(tmp_path):
    """check_store read 'my%20runs/mlflow.db' literally while MLflow (SQLAlchemy) opens 'my runs/mlflow.db':
    train left an empty stray store beside the real one, and compare refused the real one."""
    from training.compare import compare_runs

    (tmp_path / "my runs").mkdir()
    uri = f"sqlite:///{tmp_path}/my%20runs/mlflow.db"
    with Tracker(experiment="pct", tracking_uri=uri) as tracker:
        tracker.log_metrics({"aiq": 0.5})
    assert tracker.error is None and (tmp_path / "my runs" / "mlflow.db").is_file()
    assert not (tmp_path / "my%20runs" / "mlflow.db").exists()  # (MLflow itself makes that directory, empty)
    with pytest.raises(RouterMLError, match="not a training run of router-ml"):  # the store and run are read
        compare_runs(run_ids=[tracker.run_id], plot=None, log_to_mlflow=False, tracking_uri=uri)
