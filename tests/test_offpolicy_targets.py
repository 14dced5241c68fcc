"""scripts/offpolicy_targets.py: its statistics, and both parts end to end on a tiny demo table, resumed."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

import pytest

from .conftest import DEMO, ROOT

spec = importlib.util.spec_from_file_location("offpolicy_targets", ROOT / "scripts" / "offpolicy_targets.py")
targets = importlib.util.module_from_spec(spec)
spec.loader.exec_module(targets)


def test_t_interval_and_gap_closed():
    stats = targets.t_interval([1.0, 2.0, 3.0, None])
    assert stats["mean"] == 2.0 and stats["n"] == 3
    half = 4.302653 / 3**0.5  # t(0.975, 2 d.f.) x standard deviation 1 / sqrt(3)
    assert stats["ci95"] == pytest.approx([2.0 - half, 2.0 + half], abs=1e-5)
    assert targets.t_interval([0.5])["ci95"] == [None, None]
    assert targets.gap_closed(0.75, 0.5, 1.0) == 0.5
    assert targets.gap_closed(0.75, 0.5, 0.5) is None  # no gap to close


def test_variants_parse_and_are_checked_before_anything_runs():
    assert targets.parse_variants(["iw=loss.propensity_clip=20,train.epochs=3", "plain="]) == {
        "iw": ["loss.propensity_clip=20", "train.epochs=3"], "plain": []}
    with pytest.raises(SystemExit, match="ceiling"):
        targets.parse_variants(["ceiling=loss.propensity_clip=0"])
    with pytest.raises(SystemExit, match="loss.no_such_key"):
        targets.parse_variants(["x=loss.no_such_key=1"])
    with pytest.raises(SystemExit, match="train.epochs"):  # the settings every run gets are checked too
        targets.parse_variants(["plain="], ["train.epochs=many"])


@pytest.mark.parametrize("argv, message", [
    (["--rates", "1.5"], "--rates '1.5': each exploration rate must be in [0, 1]"),
    (["--rates", "0.2,x"], "--rates '0.2,x': expected exploration rates"),
    (["--seeds", "5-1"], "--seeds '5-1': expected a range like 0-4"),
    (["--logs", "0"], "bounds: --logs >= 1"),
])
def test_a_bad_number_is_a_usage_error_before_anything_is_simulated_or_written(argv, message, tmp_path, capsys):
    """--rates 1.5 once ran every simulation (each failing) and wrote results; --seeds 5-1 was a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        targets.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_default_knob_is_read_where_evaluate_puts_it():
    block = {"quality": 0.7, "cost": 1e-4}
    assert targets.default_knob({"test": {"default_knob": block}}) == block
    assert targets.default_knob({"default_knob": block}) == block
    assert targets.default_knob({"test": {"aiq": 0.7}}) is None


def test_learning_runs_on_the_named_tables_and_on_a_users_own(tmp_path):
    table = tmp_path / "mine.jsonl"
    table.write_text("{}\n")
    args = argparse.Namespace(table=[f"mine={table}"], mmlu_pro=str(tmp_path / "absent.parquet"), train_set=None,
                              out=str(tmp_path), demo_n=4000)
    mine = targets.protocol("mine", args, tmp_path / "mine")
    assert (mine.data, mine.bootstrap, mine.logged, mine.load) == (table, 0.05, 0.65, [])
    routellm = targets.shared_tables(args)["routellm"]
    assert routellm[1][0] == "--exclude" and routellm[1][1].endswith("contaminated_prompts.jsonl")
    with pytest.raises(SystemExit, match="unknown data set 'nope'.*routellm, mmlu-pro-7, mine"):
        targets.protocol("nope", args, tmp_path)
    with pytest.raises(SystemExit, match="absent.parquet not found"):
        targets.protocol("mmlu-pro", args, tmp_path)
    for bad in ("routellm=x.csv", "demo=x.jsonl", "noequals"):
        with pytest.raises(SystemExit, match="--table"):
            targets.shared_tables(argparse.Namespace(**{**vars(args), "table": [bad]}))
    assert mine.config == targets.CONFIG and targets.CONFIG.name == "mlp_static.toml"  # the default
    auto = targets.protocol("mine", argparse.Namespace(**{**vars(args), "config": "auto"}), tmp_path / "mine")
    assert auto.config == ROOT / "training" / "configs" / "auto.toml"
    assert targets.config_path(str(auto.config)) == auto.config
    with pytest.raises(SystemExit, match="--config 'nope': no such config"):
        targets.config_path("nope")
    assert mine.policy == "epsilon" and mine.tag == ""  # uniform exploration names nothing
    curve = targets.protocol("mine", argparse.Namespace(**{**vars(args), "explore_policy": "curve",
                                                           "explore_uniform_share": 0.5}), tmp_path / "mine")
    assert (curve.policy, curve.uniform_share, curve.tag) == ("curve", 0.5, "-curve0.5")
    assert curve.policy_args() == ("--explore-policy", "curve", "--explore-uniform-share", "0.5")
    softmax = targets.protocol("mine", argparse.Namespace(**{**vars(args), "explore_policy": "softmax"}),
                               tmp_path / "mine")
    assert softmax.policy_args() == ("--explore-policy", "softmax")  # the share once made simulate-log refuse it
    assert mine.policy_args() == ()
    with pytest.raises(SystemExit, match="propensity_clip"):  # a variant checked against the chosen config
        targets.parse_variants(["bad=loss.propensity_clip=0.5"], None, auto.config)


@pytest.mark.slow
def test_both_parts_run_on_a_tiny_demo_and_resume(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "offpolicy_targets.py"), "--quick", "--datasets", "demo",
           "--eval-dataset", "demo", "--demo-n", "600", "--logs", "1", "--train-set", "train.epochs=2",
           "--variant", "masked=loss.propensity_clip=0", "--out", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout)
    assert json.loads((tmp_path / "offpolicy_targets.json").read_text()) == result

    demo = result["learning"]["demo"]
    assert (demo["bootstrap_records"], demo["logged_records"]) == (30, 390)
    b, c = demo["aiq"]["bootstrap"]["mean"], demo["aiq"]["ceiling"]["mean"]
    masked = demo["rates"]["0.2"]["masked"]
    assert masked["gap_closed"]["overall"] == pytest.approx((masked["aiq"]["mean"] - b) / (c - b))
    assert demo["closes_half_gap"]["masked"] == (masked["gap_closed"]["overall"] >= 0.5)

    evaluation = result["evaluation"]
    assert set(evaluation["routers"]) == {name for name, _, _ in targets.EVAL_ROUTERS}
    assert evaluation["n_boot"] == targets.N_BOOT and evaluation["ranking_matches_share"] in (0.0, 1.0)
    assert sorted(evaluation["true_ranking"]) == sorted(evaluation["routers"])
    for block in evaluation["routers"].values():
        for key in ("quality", "cost"):
            values = block[key]
            assert values["estimate"]["n"] == 1 and values["coverage"] in (0.0, 1.0)
            assert values["max_abs_error"] == pytest.approx(abs(values["estimate"]["mean"] - values["truth"]))
    # knob 0 sends every prompt to the model with the lowest estimated cost: its truth is that model's mean
    cheapest = evaluation["routers"]["always-cheapest"]
    assert cheapest["willingness_to_pay"] == 0.0
    log_full = (tmp_path / "demo" / "sims" / "seed0-log_full.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in log_full]
    means = [sum(r["outcomes"][m]["quality"] for r in records) / len(records) for m in records[0]["outcomes"]]
    assert min(abs(cheapest["quality"]["truth"] - mean) for mean in means) < 1e-9
    assert evaluation["routers"]["logging-policy"]["willingness_to_pay"] > 0

    kept = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != "offpolicy_targets.json"}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # every step cached: no retraining
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads(again.stdout)
    # nothing simulated, trained or scored again: every file the first run wrote is untouched, none is new
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()
            and p.name != "offpolicy_targets.json"} == kept
    assert resumed["wall_seconds"] < 60  # reading what was kept; a generous bound, as the test may share the cores
    assert {k: v for k, v in resumed.items() if k != "wall_seconds"} == \
        {k: v for k, v in result.items() if k != "wall_seconds"}

    # another estimator on the same simulations and routers: kept beside SNIPS's, the truth shared
    dr_cmd = [*cmd[:2], "--part", "evaluation", "--estimator", "dr", *cmd[2:]]
    dr = subprocess.run(dr_cmd, capture_output=True, text=True, timeout=300)
    assert dr.returncode == 0, dr.stderr[-3000:]
    dr_eval = json.loads(dr.stdout)["evaluation"]
    assert dr_eval["estimator"] == "dr" and evaluation["estimator"] == "snips"
    assert (tmp_path / "offpolicy_targets.dr.json").exists() and (tmp_path / "offpolicy_targets.json").exists()
    for name, block in dr_eval["routers"].items():
        assert block["quality"]["truth"] == evaluation["routers"][name]["quality"]["truth"]
    logged = json.loads((tmp_path / "demo" / "evaluation" / "logging-policy.log0.dr.json").read_text())
    assert logged["command"][-2:] == ["--estimator", "dr"]

    # five kinds of router on the same log: each trained on the logging router's bootstrap records
    kinds_cmd = [*cmd[:2], "--part", "evaluation", "--eval-routers", "kinds", *cmd[2:]]
    kinds = subprocess.run(kinds_cmd, capture_output=True, text=True, timeout=600)
    assert kinds.returncode == 0, kinds.stderr[-3000:]
    kinds_eval = json.loads(kinds.stdout)["evaluation"]
    assert kinds_eval["routers_set"] == "kinds" and (tmp_path / "offpolicy_targets.kinds.json").exists()
    assert set(kinds_eval["routers"]) == {name for name, _, _ in targets.EVAL_ROUTER_KINDS}
    assert kinds_eval["routers"]["logging-policy"]["quality"]["truth"] == \
        evaluation["routers"]["logging-policy"]["quality"]["truth"]
    routers = tmp_path / "demo" / "evaluation-kinds" / "routers"
    for name, (config, settings), _ in targets.EVAL_ROUTER_KINDS[1:]:
        command = json.loads((routers / f"{name}.train.json").read_text())["command"]
        assert command[command.index("--config") + 1].endswith(f"{config}.toml")
        assert command[command.index("--data") + 1] == str(tmp_path / "demo" / "sims" / "seed0-rate0.2-explore0"
                                                            / "bootstrap.jsonl")
        assert all(f"{s}" in command for s in settings)
    summary = json.loads((routers / "mlp.train.json").read_text())["output"]
    assert summary["selection"]["chosen"] == "mlp"


@pytest.mark.slow
def test_completion_bounds_replaces_exactly_the_imputed_cells(tmp_path):
    """scripts/completion_bounds.py patches the pipeline's completion step: each mode trains, says so in
    the summary and replaces every imputed cell; the default mode trains as `router-ml train` does."""
    from .conftest import DEMO

    lines = DEMO.read_text().splitlines()[:900]
    full = [json.loads(line) for line in lines]
    logged = []
    for n, record in enumerate(full[300:]):
        model = sorted(record["outcomes"])[n % len(record["outcomes"])]
        outcome = {**record["outcomes"][model], "propensity": 0.5}
        logged.append({**record, "outcomes": {model: outcome}})
    data, ceiling = tmp_path / "bootstrap_log.jsonl", tmp_path / "ceiling.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in full[:300] + logged))
    ceiling.write_text("".join(json.dumps(r) + "\n" for r in full))
    summaries = {}
    for mode in ("default", "prior", "truth"):
        out = tmp_path / mode
        cmd = [sys.executable, str(ROOT / "scripts" / "completion_bounds.py"), "--train-one", mode, str(ceiling),
               "train", "--config", str(ROOT / "training" / "configs" / "mlp_static.toml"), "--data", str(data),
               "--out", str(out), "--seed", "0", "--quiet", "--set", "train.epochs=2",
               "--set", "tracking.enabled=false", "--set", "eval.n_boot=0", "--set", "eval.baselines=random"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        summaries[mode] = json.loads((out / "summary.json").read_text())["logged_targets"]
    assert summaries["default"]["imputed_cells"] > 0 and "bounds_mode" not in summaries["default"]
    assert summaries["prior"]["bounds_mode"] == "prior" and summaries["truth"]["bounds_mode"] == "truth"
    for mode in ("prior", "truth"):  # every imputed cell replaced, and by something else
        assert summaries[mode]["replaced_cells"] == summaries["default"]["imputed_cells"]
        assert summaries[mode]["mean_abs_change"] > 0.01


def test_the_ceiling_holds_exactly_the_logged_records_of_a_table_without_sample_ids(tmp_path):
    """A RouterBench wide table has no sample ids: the logged records' full outcomes are matched by prompt,
    never the whole table (which would put the test prompts into the ceiling's training data)."""
    from training.data import load_traffic, write_jsonl
    from training.data.schema import Outcome, Record

    full = [Record(prompt=f"question {i}", outcomes={"a": Outcome(float(i % 2), 0.1), "b": Outcome(1.0, 0.3)})
            for i in range(10)]
    table = write_jsonl(full, tmp_path / "table.jsonl")
    log = write_jsonl([Record(prompt=r.prompt, outcomes={"b": Outcome(1.0, 0.3, propensity=0.9)})
                       for r in full[2:6]], tmp_path / "log.jsonl")
    out = tmp_path / "log_full.jsonl"
    targets.write_full_outcomes(log, table, out)
    records = load_traffic(out)[0].records
    assert [r.prompt for r in records] == [f"question {i}" for i in range(2, 6)]
    assert all(set(r.outcomes) == {"a", "b"} for r in records)
    with_ids = write_jsonl([Record(prompt="question 2", sample_id=f"s{i}", outcomes=full[2].outcomes)
                            for i in range(2)], tmp_path / "ids.jsonl")
    logged_once = Record(prompt="question 2", sample_id="s1", outcomes={"a": Outcome(0.0, 0.1, propensity=0.5)})
    id_log = write_jsonl([logged_once], tmp_path / "id_log.jsonl")
    targets.write_full_outcomes(id_log, with_ids, out2 := tmp_path / "id_full.jsonl")
    assert [r.sample_id for r in load_traffic(out2)[0].records] == ["s1"]  # the id decides between equal prompts
    with pytest.raises(SystemExit, match="0 of its records match the 1 records"):
        targets.write_full_outcomes(id_log, table, tmp_path / "none.jsonl")


def test_a_table_too_small_for_the_protocol_is_reported_and_the_other_data_sets_still_run(tmp_path):
    """One --table whose simulate-log fails (a bootstrap set of one record) does not cost the others:
    it is reported with the failed command's error, listed in `failed`, and the exit status is 1."""
    from training.data import load_traffic, write_jsonl

    records = load_traffic(DEMO)[0].records
    tiny = write_jsonl(records[:20], tmp_path / "tiny.jsonl")
    cmd = [sys.executable, str(ROOT / "scripts" / "offpolicy_targets.py"), "--part", "learning", "--datasets",
           "tiny,tiny2", "--table", f"tiny={tiny}", "--table", f"tiny2={tiny}", "--seeds", "0", "--rates", "0.2",
           "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["failed"] == ["tiny", "tiny2"]  # the first failure did not stop the second data set
    for name in ("tiny", "tiny2"):
        assert "simulate-log" in result["learning"][name]["error"] and f"offpolicy_targets: {name}:" in proc.stderr
    assert json.loads((tmp_path / "out" / "offpolicy_targets.json").read_text())["failed"] == ["tiny", "tiny2"]


@pytest.mark.parametrize(("script", "args", "flag"), [
    ("routing_bounds.py", ["--seeds", "5-1"], "--seeds"),
    ("auto_selection_study.py", ["--seeds", "x", "--out", "{tmp}/o"], "--seeds"),
    ("auto_tuning_study.py", ["--jobs", "0", "--out", "{tmp}/o"], "--jobs"),
    ("lexical_study.py", ["--folds", "0", "--protocol", "demo", "--seeds", "0"], "--folds"),  # ran with 0 folds
    ("bench_scale.py", ["--sizes", "x", "--work-dir", "{tmp}/w"], "--sizes"),
    ("reproduce_results.py", ["--variants", "mlp,mf", "--out", "{tmp}/o"], "--variants"),  # was a KeyError
], ids=["routing_bounds", "auto_selection_study", "auto_tuning_study", "lexical_study", "bench_scale",
        "reproduce_results"])
def test_research_scripts_refuse_a_bad_number_as_a_usage_error_before_writing_anything(tmp_path, script, args, flag):
    """A typo in a seed list or a count is argparse's exit 2 naming the flag - no traceback, and no --out
    or --work-dir created - instead of a traceback minutes in, or a run on a meaningless setting."""
    cmd = [sys.executable, str(ROOT / "scripts" / script), *(a.format(tmp=tmp_path) for a in args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"argument {flag}" in proc.stderr or f"error: {flag}: unknown" in proc.stderr, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # nothing created before the arguments were checked
