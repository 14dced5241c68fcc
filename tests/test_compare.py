"""`router-ml sweep`, `compare` and multi-set `evaluate` against a real local MLflow store."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from training.data import load_traffic, write_jsonl
from training.sweep import parse_grid, parse_seeds

from .conftest import DEMO, ROOT, strict_json

FAST = ["--set", "train.epochs=20", "--set", "eval.n_boot=20", "--set", "eval.knob_points=31",
        "--set", "eval.baselines=random,best-single,oracle"]


def run_cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "router_ml.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=900)


def cli_json(*args, cwd, env=None):
    out = run_cli(*args, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return strict_json(out.stdout.strip().splitlines()[-1])


def test_parse_seeds_and_grid():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,3,7") == [0, 3, 7]
    for bad in ("4-0", "a", "1,1"):
        with pytest.raises(Exception, match="--seeds"):
            parse_seeds(bad)
    grid = parse_grid(None, ["router.hidden=64,128", "loss.tradeoff_weight=0,0.05", "eval.n_boot=10"])
    assert len(grid) == 4 and grid[0] == {"router.hidden": "64", "loss.tradeoff_weight": "0", "eval.n_boot": "10"}
    # a list-valued key is set, never swept
    assert parse_grid(None, ["eval.baselines=random,oracle"]) == [{"eval.baselines": "random,oracle"}]
    with pytest.raises(Exception, match="unknown key"):
        parse_grid(None, ["router.hiden=1,2"])
    with pytest.raises(Exception, match="--seeds"):
        parse_grid(None, ["data.seed=1,2"])
    with pytest.raises(Exception, match="router.hidden"):  # every setting is validated before any run
        parse_grid(None, ["router.hidden=64,big"])


def test_a_sweep_too_large_to_run_is_refused_before_anything_is_built(tmp_path):
    """A typo in --seeds or --set (0-100000000) once built a list of 10^8 seeds (5.6 GB) and an MLflow
    parameter of 888 MB before the first run; it is refused by count, and --out naming a file is refused
    before the parent run starts."""
    import tracemalloc

    from training.sweep import MAX_RUNS, run_sweep

    tracemalloc.start()
    with pytest.raises(Exception, match="more than 10,000 seeds"):
        parse_seeds("0-100000000")
    with pytest.raises(Exception, match="more than 10,000 seeds"):
        parse_seeds("0-5000,6000-12000")
    assert tracemalloc.get_traced_memory()[1] < 10_000_000  # nothing the size of the range was built
    tracemalloc.stop()
    assert len(parse_seeds(f"0-{MAX_RUNS - 1}")) == MAX_RUNS
    for bad in ("-1", "0,-3", "1.5", "0-"):
        with pytest.raises(Exception, match="whole numbers >= 0"):
            parse_seeds(bad)
    with pytest.raises(Exception, match="= 100,000 settings, more than 10,000"):
        parse_grid(None, [f"router.hidden={','.join(map(str, range(1, 101)))}",
                          f"train.epochs={','.join(map(str, range(1, 101)))}",
                          f"train.patience={','.join(map(str, range(1, 11)))}"])
    grid_100 = f"router.hidden={','.join(map(str, range(1, 101)))}"
    data = tmp_path / "demo.jsonl"
    data.write_text("")  # never read: both refusals come first
    with pytest.raises(Exception, match="100 settings x 101 seeds = 10,100 runs, more than 10,000"):
        run_sweep(None, data, sets=[grid_100], seeds=list(range(101)), out_dir=tmp_path / "sweep")
    store = tmp_path / "mlflow.db"
    with pytest.raises(Exception, match=r"--out .*demo\.jsonl: exists and is not a directory"):
        run_sweep(None, data, sets=[], seeds=[0], out_dir=data, tracking_uri=f"sqlite:///{store}")
    assert data.read_text() == "" and not store.exists()  # no parent MLflow run was started


def test_a_sweep_keeps_its_fixed_tracking_settings_and_the_settings_done_before_one_fails(tmp_path):
    """--set tracking.enabled=false still started a parent run in ./mlflow.db; a setting the data could not take
    (train_size 5000 of 400 records) failed the sweep after the others had trained and kept no summary."""
    from training.sweep import run_sweep

    data = write_jsonl(load_traffic(DEMO)[0].records[:400], tmp_path / "d.jsonl")
    with pytest.raises(Exception, match="the tracking settings are the sweep's own"):
        parse_grid(None, ["tracking.experiment=a,b"])
    fast = ["train.epochs=1", "eval.n_boot=0", "eval.baselines=random", "router.hidden=16"]
    with pytest.raises(Exception, match=r"sweep: setting train_size=5000 seed 0: .*5000.* the 1 settings done before "
                                        r"it are summarised in"):
        run_sweep(ROOT / "training/configs/mlp_static.toml", data, seeds=[0], out_dir=tmp_path / "sweep",
                  sets=["tracking.enabled=false", "data.train_size=0.7,5000", *(f"{s}" for s in fast)],
                  tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists()  # tracking off: no parent run either
    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())
    assert [s["slug"] for s in summary["settings"]] == ["train_size=0.7"]
    assert summary["failed"]["slug"] == "train_size=5000" and "5000" in summary["failed"]["error"]


def test_sweep_intervals_of_bounded_metrics_stay_in_their_range():
    """A t-interval over two seeds put best_quality at [0.6443, 1.2568]: a quality is in [0, 1]. AIQ, best quality
    and the CPTs are clipped to [0, 1], savings at iso-quality to >= 0; APGR is not bounded and is left as it is."""
    from training.sweep import format_summary, summarise

    def run(quality: float, savings: float, apgr: float) -> dict:
        return {"fit_seconds": 1.0, "test": {"aiq": quality, "best_quality": quality, "cpt_50": quality,
                                             "savings_at_iso_quality": savings, "apgr": apgr,
                                             "baselines": {"random": {"aiq": quality, "best_quality": quality}}}}

    summary = summarise([run(0.99, 0.05, 1.2), run(0.70, 0.60, -0.3)])
    for key in ("aiq", "best_quality", "cpt_50"):
        assert summary[key]["ci95"][1] == 1.0 and 0.0 <= summary[key]["ci95"][0] and summary[key]["clipped"]
    assert summary["baselines"]["random"]["best_quality"]["ci95"][1] == 1.0
    assert summary["savings_at_iso_quality"]["ci95"][0] == 0.0 and summary["savings_at_iso_quality"]["clipped"]
    assert summary["apgr"]["ci95"][0] < -0.3 and summary["apgr"]["ci95"][1] > 1.2 and "clipped" not in summary["apgr"]
    narrow = summarise([run(0.80, 0.5, 0.5), run(0.81, 0.5, 0.5)])["aiq"]
    assert "clipped" not in narrow and 0.0 < narrow["ci95"][0] < narrow["ci95"][1] < 1.0
    text = format_summary({"runs": 2, "seconds": 1.0, "parent_run_id": None,
                           "settings": [{"slug": "default", "summary": summary}]})
    assert "best_quality 0.8450 [" in text and "1.0000]*" in text and "clipped to the metric's range" in text


def test_sweep_children_are_named_and_tagged_by_setting_and_seed_and_compare_shows_them(tmp_path):
    """Every run was named '<kind>-<featurizer>' and a sweep's children carried no tag of their setting or seed,
    so two variants looked the same in MLflow and in compare's table; compare's JSON gave the seed and the test
    records as strings."""
    import mlflow

    from training.compare import compare_runs, format_table
    from training.sweep import run_sweep

    data = write_jsonl(load_traffic(DEMO)[0].records[:300], tmp_path / "d.jsonl")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_sweep(ROOT / "training/configs/mlp_static.toml", data, seeds=[1], out_dir=tmp_path / "sweep",
                       sets=["router.hidden=8,16", "train.epochs=1", "eval.n_boot=0", "eval.baselines=random"],
                       tracking_uri=uri)
    client = mlflow.MlflowClient(uri)
    for setting, hidden in zip(result["settings"], (8, 16), strict=True):
        (run_id,) = setting["run_ids"]
        run = client.get_run(run_id)
        assert run.info.run_name == f"mlp-static router.hidden={hidden} seed=1"
        assert run.data.tags["router_ml.sweep.setting"] == f"router.hidden={hidden}"
        assert run.data.tags["router_ml.sweep.seed"] == "1"
    assert client.get_run(result["parent_run_id"]).info.run_name == "sweep-mlp-static"
    compared = compare_runs(experiments=["router-ml"], tracking_uri=uri, plot=None)
    assert {r["run_name"] for r in compared["runs"]} == {"mlp-static router.hidden=8 seed=1",
                                                          "mlp-static router.hidden=16 seed=1"}
    assert all(r["seed"] == 1 and isinstance(r["test_records"], int) and r["test_records"] > 0
               for r in compared["runs"])
    table = format_table(compared)
    assert "mlp-static router.hidden=8 seed=1" in table and "mlp-static router.hidden=16 seed=1" in table
    assert json.loads(json.dumps(compared))["runs"][0]["seed"] == 1


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2 x 2 sweep (hidden size x seed) on 1,600 demo prompts in its own MLflow store."""
    work = tmp_path_factory.mktemp("sweep")
    table, _ = load_traffic(DEMO)
    data = work / "demo.jsonl"
    write_jsonl(table.records[:1600], data)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    result = cli_json("sweep", "--config", ROOT / "training/configs/mlp_static.toml", "--data", data,
                      "--set", "router.hidden=32,64", "--seeds", "0-1", "--out", work / "sweep", *FAST, "--quiet",
                      cwd=work, env=env)
    return work, data, env, result


@pytest.mark.slow
def test_sweep_runs_children_under_one_parent_and_summarises(swept):
    import mlflow

    work, _, env, result = swept
    assert result["runs"] == 4 and result["tracking_error"] is None
    assert [s["slug"] for s in result["settings"]] == ["hidden=32", "hidden=64"]
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    for setting in result["settings"]:
        aiq = setting["summary"]["aiq"]
        assert aiq["n"] == 2 and aiq["ci95"][0] <= aiq["mean"] <= aiq["ci95"][1]
        values = [client.get_run(r).data.metrics["aiq"] for r in setting["run_ids"]]
        assert aiq["mean"] == pytest.approx(sum(values) / 2)
        for run_id, seed in zip(setting["run_ids"], (0, 1), strict=True):
            run = client.get_run(run_id)
            assert run.data.tags["mlflow.parentRunId"] == result["parent_run_id"]
            assert run.data.params["router.hidden"] == setting["slug"].split("=")[1]
            assert run.data.params["data.seed"] == str(seed)
        assert (work / "sweep" / setting["slug"] / "seed1" / "artifact" / "manifest.json").exists()
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.params["setting0"] == "hidden=32"
    assert parent.data.metrics["setting1.aiq_mean"] == pytest.approx(result["settings"][1]["summary"]["aiq"]["mean"])
    assert json.loads((work / "sweep" / "sweep_summary.json").read_text())["parent_run_id"] == result["parent_run_id"]


@pytest.mark.slow
def test_compare_ranks_comparable_runs_and_refuses_mixed_splits(swept):
    import mlflow

    work, _, env, result = swept
    mixed = run_cli("compare", "--experiment", "router-ml", "--json", cwd=work, env=env)
    assert mixed.returncode == 1
    assert "different splits" in mixed.stderr and "--allow-mixed" in mixed.stderr

    seed0 = "params.`data.seed` = '0'"
    out = cli_json("compare", "--experiment", "router-ml", "--filter", seed0, "--json", "--plot", work / "c.png",
                   cwd=work, env=env)
    expected = {s["run_ids"][0] for s in result["settings"]}
    assert {r["run_id"] for r in out["runs"]} == expected  # sweep parent and child runs of seed 1 left out
    aiqs = [r["aiq"] for r in out["runs"]]
    assert aiqs == sorted(aiqs, reverse=True) and all(a is not None for a in aiqs)
    assert all(r["router"] == "mlp" and r["featurizer"] == "static" and r["fit_seconds"] > 0 for r in out["runs"])
    assert out["mixed"] is False and (work / "c.png").stat().st_size > 10_000
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    logged = {a.path for a in client.list_artifacts(out["comparison_run_id"], "comparison")}
    assert logged == {"comparison/c.png", "comparison/table.json"}

    # the comparison run just logged is not itself listed; --allow-mixed ranks all four, lower-is-better ascending
    both = cli_json("compare", "--experiment", "router-ml", "--allow-mixed", "--sort", "fit_seconds", "--json",
                    "--no-plot", cwd=work, env=env)
    assert len(both["runs"]) == 4 and both["mixed"] is True
    fits = [r["fit_seconds"] for r in both["runs"]]
    assert fits == sorted(fits)
    bad = run_cli("compare", "--experiment", "nope", cwd=work, env=env)
    assert bad.returncode == 1 and "experiment 'nope' not found" in bad.stderr
    assert f"not found in {env['MLFLOW_TRACKING_URI']}; experiments there: ['Default', 'router-ml']" in bad.stderr
    bad = run_cli("compare", "--run-id", "0" * 32, cwd=work, env=env)
    assert bad.returncode == 1 and f"run {'0' * 32}: not found in {env['MLFLOW_TRACKING_URI']}" in bad.stderr
    # a run named by id that is not a finished training run was dropped without a word
    failed = client.create_run(client.get_experiment_by_name("router-ml").experiment_id, tags={"router": "mlp"})
    client.set_terminated(failed.info.run_id, status="FAILED")
    bad = run_cli("compare", "--run-id", failed.info.run_id, "--run-id", result["settings"][0]["run_ids"][0],
                  "--no-plot", cwd=work, env=env)
    assert bad.returncode == 1 and f"run {failed.info.run_id}: FAILED, not finished" in bad.stderr, bad.stderr
    bad = run_cli("compare", "--run-id", out["comparison_run_id"], "--no-plot", cwd=work, env=env)
    assert bad.returncode == 1 and "not a training run of router-ml" in bad.stderr, bad.stderr


@pytest.mark.slow
def test_evaluate_on_several_sets_reports_each_and_the_macro_average(swept):
    work, data, env, result = swept
    router = work / "sweep" / "hidden=32" / "seed0"
    table, _ = load_traffic(DEMO)
    unseen = work / "unseen.jsonl"
    write_jsonl(table.records[1600:2400], unseen)
    two = ("tiny-1b", "frontier-xl")  # out of distribution: only two of the router's five models answered
    pair = work / "pair.jsonl"
    write_jsonl([dataclasses.replace(r, outcomes={m: o for m, o in r.outcomes.items() if m in two})
                 for r in table.records[2400:3200]], pair)
    out = cli_json("evaluate", "--checkpoint", router, "--data", unseen, "--data", pair, "--json", cwd=work, env=env)
    first, second = out["sets"]
    assert first["scored"] == 800 and first["models_missing"] == []
    assert second["models_used"] == list(two) and len(second["models_missing"]) == 3
    assert second["test"]["apgr"] is not None and first["test"].get("apgr") is None
    macro = out["macro"]["test"]
    assert macro["aiq"] == pytest.approx((first["test"]["aiq"] + second["test"]["aiq"]) / 2)
    assert macro["apgr"] is None  # not defined on every set
    assert macro["baselines"]["random"]["aiq"] == pytest.approx(
        (first["test"]["baselines"]["random"]["aiq"] + second["test"]["baselines"]["random"]["aiq"]) / 2)
    # one set: the single-set JSON shape of training's test report
    single = cli_json("evaluate", "--checkpoint", router, "--data", unseen, "--json", cwd=work, env=env)
    assert single["test"]["aiq"] == pytest.approx(first["test"]["aiq"])
    alone = [dataclasses.replace(r, outcomes={m: o for m, o in r.outcomes.items() if m == "tiny-1b"})
             for r in table.records[2400:2500]]
    write_jsonl(alone, work / "one.jsonl")
    bad = run_cli("evaluate", "--checkpoint", router, "--data", work / "one.jsonl", cwd=work, env=env)
    assert bad.returncode == 1 and "at least two of the router's models" in bad.stderr


def test_compare_refuses_an_option_its_mode_does_not_read(tmp_path):
    """`compare --experiment X --data D` once ranked the runs on their own MLflow metrics as if D had been
    scored, and --plot beside --router drew nothing; each mode now names the options it would ignore."""
    store = tmp_path / "mlflow.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    cases = [
        (["--experiment", "router-ml", "--data", DEMO, "--no-plot"],
         "ranks MLflow runs (--experiment/--run-id/--filter) on their logged metrics; --data does not apply"),
        (["--router", tmp_path, "--data", DEMO, "--plot", tmp_path / "c.png", "--no-log"],
         "scores saved routers (--router) on --data; --plot, --no-log do not apply"),
        (["--cascade", tmp_path, "--estimator", "dr", "--n-boot", "5"],
         "summarises cascade reports (--cascade); --estimator, --n-boot do not apply"),
        (["--run-id", "abc", "--split", "test", "--column", "prompt=q"], "--column, --split do not apply"),
        (["--run-id", "abc", "--plot", tmp_path / "c.png", "--no-plot"], "--no-plot contradict each other"),
    ]
    for args, message in cases:
        out = run_cli("compare", *args, cwd=tmp_path, env=env)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr[-2000:])
    assert not store.exists() and not (tmp_path / "c.png").exists()  # refused before anything was opened
