"""`router-ml` as a user runs it: a real process, real files, exit codes and stderr; which package
registers which command, and the renamed flags."""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import DEMO, ROOT, TRAIN_RECORDS


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "router_ml.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_inspect_json_prints_exactly_one_object(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "outcomes": {"m1": {"quality": 1, "cost": 0.5}, "m2": {"quality": 0}}}\n'
                    '{"prompt": "b", "outcomes": {"m1": {"quality": 0, "cost": 1.5}}}\n')
    out = run("data", "inspect", path, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert out.stdout.count("\n") == 1
    assert info["records"] == 2 and info["models"] == ["m1", "m2"] and info["rejected"] == 0
    assert info["coverage"] == {"m1": 1.0, "m2": 0.5}
    assert info["mean_quality"] == {"m1": 0.5, "m2": 0.0}
    assert info["mean_cost"] == {"m1": 1.0, "m2": None}
    # the README lists every key, and no other (the list once lacked five that the command printed)
    readme = (ROOT / "README.md").read_text()
    listed = readme.split("`data inspect --json` prints exactly one JSON object:", 1)[1].split("Exit codes", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", listed)) - {"null"}  # "`null` when no cost is known"
    assert documented == set(info), (documented ^ set(info))


def test_inspect_strict_error_goes_to_stderr_with_place(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "outcomes": {"m": {"quality": 1}}}\n'
                    '{"prompt": "b", "outcomes": {"m": {"quality": 1, "cost": -2}}}\n')
    out = run("data", "inspect", path, "--json")
    assert out.returncode == 1 and out.stdout == ""
    assert f"{path}:2: field 'outcomes.m.cost'" in out.stderr


def test_inspect_quarantine_mode_counts(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "outcomes": {"m": {"quality": 1}}}\nnot json\n')
    out = run("data", "inspect", path, "--json", "--on-error", "quarantine", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert (info["records"], info["rejected"]) == (1, 1)
    qfile = tmp_path / "t.jsonl.quarantine.jsonl"
    assert info["quarantine"] == str(qfile) and json.loads(qfile.read_text())["raw"] == "not json"


def test_inspect_human_summary_and_usage_errors(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "outcomes": {"m": {"quality": 1}}}\n')
    out = run("data", "inspect", path)
    assert out.returncode == 0 and "records: 1" in out.stdout and "mean quality" in out.stdout
    assert "responses" not in out.stdout  # the column appears only where answer texts were recorded
    path.write_text('{"prompt": "a", "outcomes": {"m": {"quality": 1, "response": "yes"}, "n": {"quality": 0}}}\n')
    out = run("data", "inspect", path)
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[4:] if line.strip()}
    assert "responses" in out.stdout and rows["m"][-1] == "1" and rows["n"][-1] == "0", out.stdout
    assert run("data", "inspect", tmp_path / "missing.jsonl").returncode == 1
    assert run("data", "frobnicate").returncode == 2
    assert run("data", "inspect", path, "--column", "oops").returncode == 2  # bad usage


def test_convert_round_trip(tmp_path):
    src = tmp_path / "w.csv"
    src.write_text("prompt,m,m|total_cost\nq1,1,0.1\nq2,0,0.2\n")
    out = run("data", "convert", src, "--out", tmp_path / "c.parquet")
    assert out.returncode == 0, out.stderr
    back = json.loads(run("data", "inspect", tmp_path / "c.parquet", "--json").stdout)
    assert back["records"] == 2 and back["mean_cost"] == {"m": pytest.approx(0.15)}


def test_convert_writes_the_format_its_out_names_and_refuses_what_it_cannot_write(tmp_path):
    """--out out.csv once got JSON Lines under a CSV name, --out x.jsonl.gz plain text no reader could open,
    and --out <directory> left a half-written '<dir>.tmp' behind an errno."""
    src = tmp_path / "w.csv"
    src.write_text("prompt,m,m|total_cost\nq1,1,0.1\nq2,0,0.2\n")
    (tmp_path / "existing").mkdir()
    for out_name, message in (("c.csv", "name a .jsonl, .jsonl.gz or .parquet file"),
                              ("c.gz", "name a .jsonl, .jsonl.gz or .parquet file"),
                              ("existing", "a directory; name the file to write, e.g. "),
                              ("newdir/", "a directory; name the file to write")):
        out = run("data", "convert", src, "--out", f"{tmp_path / out_name}{'/' if out_name.endswith('/') else ''}")
        assert out.returncode == 1 and message in out.stderr, (out_name, out.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "w.csv"]  # nothing written, nothing left over
    gz = tmp_path / "sub" / "c.jsonl.gz"  # a missing parent directory is created
    assert run("data", "convert", src, "--out", gz).returncode == 0
    assert gz.read_bytes()[:2] == b"\x1f\x8b"  # gzip's magic
    back = json.loads(run("data", "inspect", gz, "--json").stdout)
    assert back["records"] == 2 and back["mean_cost"] == {"m": pytest.approx(0.15)}


def test_a_failed_canonical_write_leaves_no_temporary_file(tmp_path):
    from training.data import load_traffic, write_jsonl, write_parquet

    src = tmp_path / "w.csv"
    src.write_text("prompt,m,m|total_cost\nq1,1,0.1\nq2,0,0.2\n")
    table, _ = load_traffic(src)

    def records_then_failure():
        yield table[0]
        raise OSError("No space left on device")

    for writer, name in ((write_jsonl, "t.jsonl"), (write_jsonl, "t.jsonl.gz"), (write_parquet, "t.parquet")):
        with pytest.raises(OSError, match="No space left"):
            writer(records_then_failure(), tmp_path / name)
        (tmp_path / "d").mkdir()
        with pytest.raises(OSError):  # the rename onto a directory fails after the whole file was written
            writer(table, tmp_path / "d")
        (tmp_path / "d").rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.csv"]


def test_prices_fill_missing_costs(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "outcomes": {"m": {"quality": 1, "input_tokens": 1000, "output_tokens": 0}}}\n')
    prices = tmp_path / "p.toml"
    prices.write_text('[m]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n')
    info = json.loads(run("data", "inspect", path, "--json", "--prices", prices).stdout)
    assert info["mean_cost"] == {"m": pytest.approx(0.002)}


# --- one console script, commands by package -------------------------------------------------------------

TRAINING_COMMANDS = ("data", "train", "simulate-log", "evaluate", "compare", "sweep", "export", "featurize", "cascade")
RUNTIME_COMMANDS = ("route", "serve", "feedback")
SCRIPT = Path(sys.executable).with_name("router-ml")


def script(*args, env=None, timeout=300):
    """The installed console script itself, as a user runs it (entry points and all)."""
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_the_console_script_lists_every_command_in_the_order_it_always_had():
    out = script("--help")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    listed = re.findall(r"^    ([a-z][\w-]*)\s", out.stdout, flags=re.MULTILINE)
    assert listed == [*TRAINING_COMMANDS, *RUNTIME_COMMANDS]


def test_every_command_and_subcommand_registers_and_has_help():
    """In-process: the parser the script builds has every command, and each one's --help exits 0."""
    from router_ml.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == [*TRAINING_COMMANDS, *RUNTIME_COMMANDS]
    data_sub = next(a for a in sub.choices["data"]._actions if isinstance(a, argparse._SubParsersAction))
    assert list(data_sub.choices) == ["inspect", "convert"]
    for argv in ([c] for c in [*TRAINING_COMMANDS, *RUNTIME_COMMANDS]), (["data", "inspect"], ["data", "convert"],
                                                                          ["cascade", "evaluate"]):
        for args in argv:
            with pytest.raises(SystemExit) as exit_, contextlib.redirect_stdout(io.StringIO()) as help_text:
                parser.parse_args([*args, "--help"])
            assert exit_.value.code == 0 and help_text.getvalue().startswith(f"usage: router-ml {' '.join(args)}")
    # the runtime commands parse without discovering entry points (faster start for route/serve)
    assert list(next(a for a in build_parser(command_groups=False)._actions
                     if isinstance(a, argparse._SubParsersAction)).choices) == list(RUNTIME_COMMANDS)


def test_the_renamed_flags_are_the_only_ones_shown():
    from router_ml.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, new in (("route", "--artifact"), ("serve", "--artifact")):
        text = sub.choices[command].format_help()
        assert new in text and "--router" not in text, command
    # evaluate takes a checkpoint or an artifact: --router DIR, with --checkpoint a visible alias
    assert "--router DIR, --checkpoint DIR" in sub.choices["evaluate"].format_help()


@pytest.mark.slow  # the session's trained router
def test_route_accepts_the_old_router_flag_with_a_deprecation_warning(trained):
    new = script("route", "--artifact", trained.artifact, "Sum 17 and 25.")
    old = script("route", "--router", trained.artifact, "Sum 17 and 25.")
    assert new.returncode == old.returncode == 0, old.stderr
    assert json.loads(old.stdout)["model"] == json.loads(new.stdout)["model"]
    assert "deprecated" not in new.stderr
    assert "router-ml: warning: 'route --router' is deprecated" in old.stderr and "use --artifact" in old.stderr
    both = script("route", "--artifact", trained.artifact, "--router", trained.artifact, "x")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    missing = script("route", "x")
    assert missing.returncode == 2 and "--artifact" in missing.stderr


def test_serve_accepts_the_old_router_flag_with_a_deprecation_warning(tmp_path):
    """The alias reaches the serve command itself (which then refuses an open bind without a key)."""
    out = script("serve", "--router", tmp_path / "missing", "--providers", tmp_path / "p.toml", "--host", "0.0.0.0")
    assert "'serve --router' is deprecated" in out.stderr and "use --artifact" in out.stderr
    assert out.returncode != 0 and "--api-key-env" in out.stderr


@pytest.mark.slow  # the session's trained router
def test_evaluate_takes_router_or_its_checkpoint_alias_without_a_warning(trained, tmp_path):
    from training.data import load_traffic, write_jsonl

    table, _ = load_traffic(DEMO)
    held_out = write_jsonl(table.records[TRAIN_RECORDS:TRAIN_RECORDS + 200], tmp_path / "held_out.jsonl")
    results = []
    for flag in ("--router", "--checkpoint"):
        out = script("evaluate", flag, trained.checkpoint, "--data", held_out, "--json", "--quiet",
                     "--cache-dir", tmp_path / "cache")
        assert out.returncode == 0, out.stderr[-3000:]
        assert "deprecated" not in out.stderr
        results.append(json.loads(out.stdout))
    assert results[0] == results[1]
    assert results[0]["scored"] == 200 and results[0]["dropped_seen"] == 0
    missing = script("evaluate", "--data", held_out)
    assert missing.returncode == 2 and "--router" in missing.stderr


def test_training_commands_name_the_extra_when_it_is_missing(tmp_path):
    """With torch unimportable, `train` stops with one line naming the extra, not a traceback."""
    code = ("import sys; sys.modules['torch'] = None; from router_ml.cli import main; "
            f"sys.exit(main(['train', '--data', {str(DEMO)!r}, '--out', {str(tmp_path / 'r')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        'router-ml: error: this command needs the training extra (torch is missing): pip install "router-ml[train]"']


def _dist(where: Path, name: str, version: str, entry_points: str | None) -> None:
    """A minimal installed distribution (a .dist-info directory) at ``where``."""
    info = where / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if entry_points is not None:
        (info / "entry_points.txt").write_text(f"[router_ml.commands]\n{entry_points}\n")


def test_other_packages_add_command_groups_through_entry_points(tmp_path):
    """Distributions on the path with a `router_ml.commands` entry point add their commands; one whose
    entry point fails to load is reported on stderr and skipped, and every other command stays."""
    (tmp_path / "hello_plugin.py").write_text(
        "def register(sub):\n"
        "    p = sub.add_parser('hello', help='say hello')\n"
        "    p.set_defaults(func=lambda args: print('hello from a plugin') or 0)\n")
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('this plugin is broken')\n")
    stale, installed, later = tmp_path / "stale", tmp_path / "installed", tmp_path / "later"
    # an old copy of the same distribution earlier on the path, without the entry point, must not hide it
    # (importlib.metadata.entry_points() would keep only that first copy of 'hello-plugin')
    _dist(stale, "hello-plugin", "0.9", None)
    _dist(installed, "hello-plugin", "1.0", "hello = hello_plugin:register")
    _dist(installed, "broken-plugin", "1.0", "broken = broken_plugin:register")
    # another distribution later on the path with the same entry point name: the first one wins, this one
    # is never loaded (it would fail)
    _dist(later, "hello-fork", "1.0", "hello = broken_plugin:register")
    path = [str(tmp_path), str(stale), str(installed), str(later), os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(path)}
    listing = script("--help", env=env)
    assert listing.returncode == 0
    listed = re.findall(r"^    ([a-z][\w-]*)\s", listing.stdout, flags=re.MULTILINE)
    assert listed == ["hello", *TRAINING_COMMANDS, *RUNTIME_COMMANDS]  # groups in path order, runtime last
    assert listing.stderr.strip().splitlines() == [
        "router-ml: warning: command group 'broken' (broken_plugin:register) could not be loaded: "
        "RuntimeError: this plugin is broken"]
    hello = script("hello", env=env)
    assert hello.returncode == 0 and hello.stdout == "hello from a plugin\n"


def _imported_modules(tree: ast.AST) -> list[str]:
    """Every module an AST imports: import statements and literal importlib.import_module / __import__."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")):
            names.append(node.args[0].value)
    return names


def test_the_runtime_never_imports_the_training_package():
    modules = sorted((ROOT / "router_ml").rglob("*.py"))
    assert len(modules) > 10
    offenders = {}
    for path in modules:
        found = [m for m in _imported_modules(ast.parse(path.read_text(), filename=str(path)))
                 if m.split(".")[0] == "training"]
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}
    # the walk does see an import of training where there is one
    assert _imported_modules(ast.parse("import importlib\nimportlib.import_module('training.data')\n"
                                       "from training import cli")) == ["importlib", "training", "training.data"]


def test_train_scores_a_gappy_benchmark_exactly_and_says_when_its_test_figures_are_estimates(tmp_path):
    """A table with missing outcomes and no propensity: `train` scores its test split exactly on the rows
    with every outcome when it has at least MIN_EXACT_ROWS of them, even under half; with fewer it
    estimates off-policy and says so on stderr, naming the weights."""
    import numpy as np

    from training.data import write_jsonl
    from training.data.schema import Outcome, Record
    from training.evaluation import MIN_EXACT_ROWS

    rng = np.random.default_rng(0)

    def table(n: int, path: Path) -> Path:
        records = []
        for i in range(n):
            outcomes = {m: Outcome(float(rng.random() < p), c) for m, p, c in (("a", 0.4, 0.1), ("b", 0.7, 0.5),
                                                                             ("c", 0.6, 0.3))}
            if i % 3:  # two rows of three miss one model's outcome
                outcomes.pop("abc"[i % 3])
            records.append(Record(prompt=f"question {i} about topic {i % 7}", outcomes=outcomes))
        return write_jsonl(records, path)

    common = ("--config", ROOT / "training/configs/mlp_static.toml", "--quiet", "--set", "train.epochs=2",
              "--set", "tracking.enabled=false", "--set", "eval.n_boot=0", "--set", "eval.baselines=random")
    big = run("train", "--data", table(600, tmp_path / "big.jsonl"), "--out", tmp_path / "big", "--train-size", "0.7",
              *common)
    assert big.returncode == 0, big.stderr
    summary = json.loads(big.stdout.strip().splitlines()[-1])
    assert summary["test"]["estimator"] == "exact" and "off-policy" not in big.stderr
    assert MIN_EXACT_ROWS <= summary["test_scored"] < summary["test_records"] / 2
    small = run("train", "--data", table(150, tmp_path / "small.jsonl"), "--out", tmp_path / "small",
                "--train-size", "0.7", *common)
    assert small.returncode == 0, small.stderr
    summary = json.loads(small.stdout.strip().splitlines()[-1])
    assert summary["test"]["estimator"] == "ips" and summary["test_scored"] == summary["test_records"]
    assert "the test figures are off-policy estimates (IPS" in small.stderr and "exposure weights" in small.stderr


def test_a_wide_model_column_without_any_kept_outcome_is_named_not_dropped_silently(tmp_path):
    """A model column that no kept record has an outcome in (empty, or filled only on a rejected row) leaves
    that model out of the table: `data inspect` and `train` name it instead of routing among the others
    without a word."""
    path = tmp_path / "wide.csv"
    lines = ["prompt,a,a|total_cost,a|judge,b,b|total_cost,c,c|total_cost,d,d|total_cost"]
    for i in range(60):
        lines.append(f"question {i} about topic {i % 5},{i % 2},0.1,x,{(i // 2) % 2},0.5,,,,")
    lines.append("a rejected row,1,0.1,x,0,0.5,,,2.5,0.2")  # d's only outcome: a quality above 1
    path.write_text("\n".join(lines) + "\n")
    inspect = run("data", "inspect", path, "--on-error", "quarantine", "--quarantine", tmp_path / "q.jsonl")
    assert inspect.returncode == 0, inspect.stderr
    assert "ignored columns: a|judge" in inspect.stdout
    assert "model columns without an outcome in any kept record (not in the table): c, d" in inspect.stdout
    info = json.loads(run("data", "inspect", path, "--json", "--on-error", "quarantine",
                          "--quarantine", tmp_path / "q.jsonl").stdout)
    assert info["models"] == ["a", "b"] and info["models_without_outcomes"] == ["c", "d"] and info["rejected"] == 1
    full = tmp_path / "full.csv"
    full.write_text("\n".join(line.rsplit(",", 4)[0] for line in lines[:-1]) + "\n")  # no c or d at all
    assert json.loads(run("data", "inspect", full, "--json").stdout)["models_without_outcomes"] == []
    out = run("train", "--data", path, "--out", tmp_path / "out", "--on-error", "quarantine",
              "--quarantine", tmp_path / "q2.jsonl", "--config", ROOT / "training/configs/mlp_static.toml",
              "--quiet", "--set", "train.epochs=1", "--set", "tracking.enabled=false", "--set", "eval.n_boot=0",
              "--set", "eval.baselines=random")
    assert out.returncode == 0, out.stderr
    assert f"{path}: the model columns ['c', 'd'] hold no outcome in any kept record" in out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["models_without_outcomes"] == ["c", "d"]


@pytest.mark.parametrize("argv, flag, rule", [
    (["evaluate", "--router", "r", "--data", "d", "--n-boot", "-5"], "--n-boot", "a whole number >= 0"),
    (["compare", "--router", "r", "--data", "d", "--n-boot", "x"], "--n-boot", "a whole number >= 0"),
    (["export", "--checkpoint", "c", "--out", "o", "--willingness-to-pay", "-1"], "--willingness-to-pay",
     "a number >= 0"),
    (["simulate-log", "--data", "d", "--out", "o", "--willingness-to-pay", "nan"], "--willingness-to-pay",
     "a number >= 0"),
    (["route", "--artifact", "a", "hi", "--threads", "-2"], "--threads", "a whole number >= 0"),
    (["route", "--artifact", "a", "hi", "--willingness-to-pay", "-3"], "--willingness-to-pay", "a number >= 0"),
    (["serve", "--artifact", "a", "--providers", "p", "--port", "70000"], "--port", "a whole number >= 0 and <= 65535"),
    (["serve", "--artifact", "a", "--providers", "p", "--log-max-mb", "0"], "--log-max-mb", "a number >= 0.001"),
    # inf was an OverflowError traceback; "" (an unset shell variable) silently turned the log off
    (["serve", "--artifact", "a", "--providers", "p", "--log-max-mb", "inf"], "--log-max-mb",
     "a number >= 0.001 and <= 1e+06"),
    (["serve", "--artifact", "a", "--providers", "p", "--decision-log", ""], "--decision-log", "a file path"),
    (["serve", "--artifact", "a", "--providers", "p", "--shutdown-timeout", "-1"], "--shutdown-timeout",
     "a number >= 0"),
    # 100000 threads once took 16 GB before the first decision; the bound is 4 per CPU (at least 8)
    (["route", "--artifact", "a", "hi", "--threads", "100000"], "--threads", "a whole number >= 0 and <= "),
    (["data", "inspect", "d", "--num-proc", "100000"], "--num-proc", "a whole number >= 1 and <= "),
    (["train", "--data", "d", "--out", "o", "--seed", "-1"], "--seed", "a whole number >= 0"),
])
def test_a_number_out_of_range_is_a_usage_error_naming_the_flag_before_anything_runs(argv, flag, rule):
    out = run(*argv)  # the paths do not exist: the flag is refused before any of them is read
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"argument {flag}: expected {rule}" in out.stderr, out.stderr


@pytest.mark.parametrize("flags", [["--explore-policy", "softmax"], ["--explore-temperature", "0.5"],
                                   ["--explore-uniform-share", "0.5"], ["--explore-seed", "3"]])
@pytest.mark.parametrize("command", ["route", "serve"])
def test_every_exploration_flag_without_a_rate_is_refused_alike(command, flags, tmp_path):
    """--explore-policy, --explore-temperature and --explore-uniform-share without --explore-rate were dropped
    without a word, while --explore-seed was refused: each is refused, before anything is loaded."""
    where = ["hi"] if command == "route" else ["--providers", tmp_path / "p.toml", "--port", "0"]
    out = run(command, "--artifact", tmp_path / "a", *where, *flags, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr  # bad usage, as argparse's own
    assert f"{flags[0]} given without --explore-rate; add --explore-rate R to explore" in out.stderr


@pytest.mark.parametrize(("flags", "says"), [
    (["--explore-temperature", "0.5"], "--explore-temperature applies to --explore-policy softmax only, not epsilon"),
    (["--explore-policy", "curve", "--explore-temperature", "0.5"], "applies to --explore-policy softmax only, not "
                                                                    "curve"),
    (["--explore-policy", "softmax", "--explore-uniform-share", "0.5"], "--explore-uniform-share applies to "
                                                                       "--explore-policy curve only, not softmax"),
])
def test_an_exploration_flag_the_policy_ignores_is_refused(flags, says, tmp_path):
    out = run("route", "--artifact", tmp_path / "a", "hi", "--explore-rate", "0.1", *flags, cwd=tmp_path)
    assert out.returncode == 2 and says in out.stderr, out.stderr


def test_exploration_flags_the_policy_uses_reach_the_router():
    """Unset flags take the Exploration defaults; a flag the policy uses is passed on."""
    from router_ml.cli import build_parser, exploration_from_args

    parse = build_parser(command_groups=False).parse_args
    assert exploration_from_args(parse(["route", "--artifact", "a", "--explore-rate", "0.1"])).to_dict() == {
        "kind": "epsilon", "rate": 0.1, "seed": None, "max_cost_usd": None, "exclude": [], "temperature": 0.1,
        "uniform_share": 0.25}
    softmax = parse(["route", "--artifact", "a", "--explore-rate", "1", "--explore-policy", "softmax",
                     "--explore-temperature", "0.5"])
    curve = parse(["route", "--artifact", "a", "--explore-rate", "1", "--explore-policy", "curve",
                   "--explore-uniform-share", "0.5"])
    assert (exploration_from_args(softmax).temperature, exploration_from_args(curve).uniform_share) == (0.5, 0.5)


@pytest.mark.parametrize("command", ["feedback", "route"])
def test_an_input_file_that_is_not_utf8_is_named_with_the_fix_not_a_traceback(command, tmp_path):
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_bytes(b"\xff\xfe{\x00}\x00")  # what a UTF-16 export (with its byte-order mark) holds
    log = tmp_path / "d.jsonl"
    log.write_text(json.dumps({"type": "decision", "request_id": "rml-1"}) + "\n")
    args = ["--log", log, "--file", utf16] if command == "feedback" else ["--artifact", tmp_path / "a", "--input",
                                                                         utf16]
    out = run(command, *args, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"{utf16}: not UTF-8 text" in out.stderr and "save it as UTF-8" in out.stderr
    assert log.read_text().count("\n") == 1
    deep = tmp_path / "deep.jsonl"  # a line nested past what the parser follows was a RecursionError traceback
    deep.write_text("[" * 200_000 + "]" * 200_000 + "\n")
    args = [a if a != utf16 else deep for a in args]
    out = run(command, *args, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"{deep}:1: not valid JSON (arrays and objects nest too deeply)" in out.stderr
    assert log.read_text().count("\n") == 1


def test_route_input_refuses_a_user_turn_without_content_as_the_proxy_does(trained, tmp_path):
    """It was routed as the empty prompt, where the proxy answers 400."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user"}]}) + "\n")
    out = run("route", "--artifact", trained.artifact, "--input", prompts, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"{prompts}:1: field 'messages[1].content': required for a 'user' message" in out.stderr


@pytest.mark.parametrize("admin", ["CLIENT_KEY", "ADMIN_KEY"])
def test_serve_refuses_an_admin_key_every_client_holds(admin, tmp_path):
    """The same variable for both keys (or two holding one key) let every client call /admin/reload."""
    env = {**os.environ, "CLIENT_KEY": "k-1", "ADMIN_KEY": "k-1"}
    out = subprocess.run([sys.executable, "-m", "router_ml.cli", "serve", "--artifact", "a", "--providers", "p.toml",
                          "--port", "0", "--api-key-env", "CLIENT_KEY", "--admin-key-env", admin],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert out.returncode == 2, out.stderr
    same = "is the same variable as" if admin == "CLIENT_KEY" else "holds the same key as"
    assert f"--admin-key-env {admin} {same} --api-key-env CLIENT_KEY" in out.stderr
    assert "give the admin a key of its own" in out.stderr


def test_serve_refuses_more_workers_than_the_machine_can_hold_before_starting_any(tmp_path):
    """--workers 100000 once forked worker after worker until the machine ran out of memory."""
    from router_ml.cli import per_cpu_limit

    assert per_cpu_limit() == max(8, 4 * (os.cpu_count() or 1))
    out = run("serve", "--artifact", tmp_path / "a", "--providers", tmp_path / "p.toml", "--port", "0",
              "--workers", per_cpu_limit() + 1, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert f"--workers {per_cpu_limit() + 1}: at most {per_cpu_limit()} on this machine" in out.stderr
    for few in ("0", "-1"):  # a number out of range: refused by the parser, exit 2 as the README says
        out = run("serve", "--artifact", tmp_path / "a", "--providers", tmp_path / "p.toml", "--port", "0",
                  "--workers", few, cwd=tmp_path)
        assert out.returncode == 2 and f"--workers: expected a whole number >= 1, got '{few}'" in out.stderr, out.stderr


def test_train_into_a_directory_of_other_files_is_refused_before_any_work(tmp_path):
    """`--out .` in a project once wrote config.json, summary.json and metrics.json over the project's own."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"mine": true}')
    (project / "traffic.jsonl").write_bytes(DEMO.read_bytes())
    out = run("train", "--data", "traffic.jsonl", "--out", ".", "--quiet", cwd=project)
    assert out.returncode == 1, out.stderr
    assert ("--out .: a directory holding config.json, traffic.jsonl, not a router checkpoint "
            "(router-ml-checkpoint/1); train into a new or empty directory") in out.stderr, out.stderr
    assert sorted(p.name for p in project.iterdir()) == ["config.json", "traffic.jsonl"]
    assert (project / "config.json").read_text() == '{"mine": true}'


def test_train_into_an_existing_file_is_refused_before_any_work_and_the_file_kept(tmp_path):
    data = tmp_path / "traffic.jsonl"
    data.write_bytes(DEMO.read_bytes())
    out = run("train", "--data", data, "--out", data, "--quiet", cwd=tmp_path)
    assert out.returncode == 1 and f"--out {data}: exists and is not a directory" in out.stderr, out.stderr
    assert data.read_bytes() == DEMO.read_bytes()


def test_a_crash_in_a_native_library_prints_the_python_stacks(tmp_path):
    """A `train` under load once died of SIGSEGV with nothing on stderr but its progress lines: the CLI turns
    faulthandler on, so such a crash names the Python frames of every thread."""
    code = ("import ctypes\nfrom router_ml.cli import main\nmain(['route', '--artifact', 'missing', 'hi'])\n"
            "ctypes.string_at(0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == -11 and "Fatal Python error: Segmentation fault" in out.stderr, out.stderr[-2000:]
