"""The team MLflow setup: `train` logs to an `mlflow server` backed by a real PostgreSQL database, and
`compare` lists those runs. SQLite stays the embedded default.

The server fixture starts its own PostgreSQL cluster (tests/pg_server.py). Without PostgreSQL
binaries or psycopg2 the test skips on a workstation, but fails under CI=true: .ci/run installs
both, so a skip there would hide a broken team setup.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from training.data import load_traffic, write_jsonl
from training.tracking import Tracker, default_tracking_uri, redact_uri

from .conftest import DEMO, ROOT
from .pg_server import MlflowServer, Postgres, find_pg_bin
from .test_compare import FAST, cli_json, run_cli


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI must install it (.ci/run: apt-get install -y postgresql; pip install '.[dev]')")
    pytest.skip(why)


def test_default_store_is_sqlite_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team:5000")
    assert default_tracking_uri() == "http://mlflow.team:5000"


def test_reported_uris_never_carry_a_password():
    assert redact_uri("postgresql://ml:s3cret@db.internal:5432/mlflow") == "postgresql://ml:***@db.internal:5432/mlflow"
    assert redact_uri("https://bob:pw:with:colons@mlflow.team/prefix") == "https://bob:***@mlflow.team/prefix"
    for unchanged in ("http://127.0.0.1:5000", "postgresql://ml@db/mlflow", "sqlite:////tmp/a@b:c/mlflow.db",
                      "databricks"):
        assert redact_uri(unchanged) == unchanged
    tracker = Tracker(experiment="x", enabled=False, tracking_uri="postgresql://ml:s3cret@db/mlflow")
    assert tracker.tracking_uri == "postgresql://ml:***@db/mlflow"  # what the training summary prints


@pytest.fixture(scope="session")
def team_server(tmp_path_factory):
    """PostgreSQL (throwaway cluster) + `mlflow server` on it, serving artifacts from a temp directory."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        _unavailable("PostgreSQL binaries (initdb) not found on PATH or in /usr/lib/postgresql/*/bin")
    try:
        import psycopg2  # noqa: F401 - mlflow's PostgreSQL driver
    except ImportError:
        _unavailable("psycopg2 is not installed (the dev extra has psycopg2-binary)")
    work = tmp_path_factory.mktemp("team-mlflow")
    pg = Postgres.start(bin_dir)
    try:
        pg.create_database("mlflow")
        server = MlflowServer.start(pg.url("mlflow", driver="psycopg2"), work / "artifacts", work / "mlflow-server.log")
        try:
            yield pg, server, work
        finally:
            server.stop()
    finally:
        pg.stop()


@pytest.mark.slow
def test_runs_logged_to_a_postgres_backed_server_are_listed_by_compare(team_server):
    import psycopg2

    pg, server, work = team_server
    table, _ = load_traffic(DEMO)
    data = write_jsonl(table.records[:800], work / "demo800.jsonl")
    env = {"MLFLOW_TRACKING_URI": server.url}
    summaries = {}
    for hidden in (32, 64):  # two settings, same data and split: comparable runs
        summaries[hidden] = cli_json("train", "--config", ROOT / "training/configs/mlp_static.toml", "--data", data,
                                     "--out", work / f"h{hidden}", "--set", f"router.hidden={hidden}",
                                     "--set", "tracking.experiment=team", *FAST, "--quiet", cwd=work, env=env)
        assert summaries[hidden]["tracking_error"] is None
        assert summaries[hidden]["tracking_uri"] == server.url and summaries[hidden]["run_id"]

    out = cli_json("compare", "--experiment", "team", "--json", "--plot", work / "team.png", cwd=work, env=env)
    assert out["tracking_uri"] == server.url and out["mixed"] is False
    listed = {r["run_id"]: r for r in out["runs"]}
    assert set(listed) == {s["run_id"] for s in summaries.values()}
    for s in summaries.values():
        row = listed[s["run_id"]]
        assert row["aiq"] == pytest.approx(s["test"]["aiq"]) and row["router"] == "mlp"
        assert row["data_fingerprint"] == s["data_fingerprint"] and row["fit_seconds"] > 0
    # the curves came back through the server's artifact proxy, and the figure went up the same way
    assert out["comparison_run_id"] and (work / "team.png").stat().st_size > 10_000
    uploaded = list((work / "artifacts").rglob("comparison/team.png"))
    assert len(uploaded) == 1, list((work / "artifacts").rglob("*"))[:20]

    # the people's table (no figure) names both runs
    text = run_cli("compare", "--experiment", "team", "--no-plot", cwd=work, env=env)
    assert text.returncode == 0, text.stderr[-2000:]
    assert all(s["run_id"][:8] in text.stdout for s in summaries.values())

    # the same store read directly from the database (no server): the password never reaches the output
    # (the throwaway cluster trusts local connections, so any password is accepted)
    direct = {"MLFLOW_TRACKING_URI": pg.url("mlflow", driver="psycopg2").replace("routerml@", "routerml:hunter2@")}
    raw = run_cli("compare", "--experiment", "team", "--json", "--no-plot", cwd=work, env=direct)
    assert raw.returncode == 0, raw.stderr[-2000:]
    assert "hunter2" not in raw.stdout + raw.stderr
    same = json.loads(raw.stdout.strip().splitlines()[-1])
    assert same["tracking_uri"].startswith("postgresql+psycopg2://routerml:***@127.0.0.1:")
    assert {r["run_id"] for r in same["runs"]} == set(listed)

    # and the runs really are rows of the PostgreSQL database, with their metrics
    with psycopg2.connect(pg.url("mlflow")) as conn, conn.cursor() as cur:
        cur.execute("SELECT r.run_uuid, m.value FROM runs r JOIN metrics m ON m.run_uuid = r.run_uuid "
                    "WHERE m.key = 'aiq' AND r.status = 'FINISHED'")
        stored = dict(cur.fetchall())
    for s in summaries.values():
        assert stored[s["run_id"]] == pytest.approx(s["test"]["aiq"])
    assert not list(Path(work).glob("mlflow.db")), "a run fell back to the embedded SQLite store"
