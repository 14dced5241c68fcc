"""MLflow tracking: a run's calls made on its own thread arrive whole and in order; files are logged as
they were when logged; reading the run id or the error waits for what was queued."""

from __future__ import annotations

import threading
from pathlib import Path

from training.tracking import Tracker


def test_calls_run_on_the_tracking_thread_in_order_and_files_are_logged_as_they_were(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    seen: list[str] = []
    with Tracker(experiment="t", tracking_uri=uri, run_name="r") as tracker:
        tracker.log_params({"a": 1, "b": [1, 2]})
        tracker.set_tags({"kind": "test"})
        for step in range(20):
            tracker.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        tracker._submit("probe", lambda: seen.append(threading.current_thread().name))
        note = tmp_path / "files" / "note.txt"
        note.parent.mkdir()
        note.write_text("as logged")
        tracker.log_artifacts(note.parent, "files")
        note.write_text("changed after logging")  # log_artifacts waited: the logged copy is the first text
        run_id = tracker.run_id
        assert tracker.error is None
    assert seen == ["router-ml-tracking"] and threading.current_thread().name != seen[0]
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params == {"a": "1", "b": "[1, 2]"} and run.data.tags["kind"] == "test"
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(20))
    local = client.download_artifacts(run_id, "files/note.txt", str(tmp_path / "down"))
    assert Path(local).read_text() == "as logged"


def test_a_failing_call_stops_tracking_and_the_error_is_there_when_read(tmp_path):
    with Tracker(experiment="t", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}") as tracker:
        tracker.log_params({"x": 1})
        tracker.log_params({"x": 2})  # MLflow refuses to change a logged parameter
        tracker.log_metrics({"after": 1.0})  # skipped: tracking stopped at the error
        assert tracker.error is not None and tracker.error.startswith("log_params: ")
        assert tracker.run_id is not None


def test_a_disabled_tracker_starts_no_thread():
    before = threading.active_count()
    with Tracker(experiment="t", enabled=False) as tracker:
        tracker.log_metrics({"m": 1.0})
        assert threading.active_count() == before and tracker.run_id is None and tracker.error is None
