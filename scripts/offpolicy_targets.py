"""Measure the two targets of learning from logged traffic on simulated logs (``router-ml simulate-log``).

A) LEARNING (``--part learning``): per data set, seed and exploration rate, ``simulate-log`` splits
   the full-information table into a bootstrap set, a log routed by an exploring bootstrap router
   and a test set; ``mlp_static`` (``--config``: another router config, e.g. ``auto``, the default
   router, for every step) is then trained on the bootstrap set alone ("bootstrap"), on the
   bootstrap set plus the log under each training variant, and on the bootstrap set plus the same
   logged prompts with every outcome ("ceiling"), and each is scored exactly on the test set (AIQ).
   Per variant: the share of the bootstrap-to-ceiling gap it closes; the target is half at rate 0.2.
B) EVALUATION (``--part evaluation``): five routers are scored off-policy on 20 logs of the same
   prompts (20 exploration seeds, same split, so the truth is fixed) and exactly on those prompts
   with every outcome, each by ``router-ml evaluate --router DIR --json`` at its default knob
   (``default_knob``: SNIPS on a log, bootstrap intervals): per router the error of the quality
   (target <= 0.01) and cost (within 1%) estimates, the coverage of their 95% intervals (target
   >= 90%), and how often the logs rank the routers as the truth does. ``--estimator dr`` (or ``ips``)
   scores the logs with that estimator instead; its results sit beside SNIPS's in the same ``--out``
   (``<router>.log<k>.dr.json``, ``offpolicy_targets.dr.json``), the simulations and routers shared.
   The five routers (``--eval-routers``): ``knobs`` (default), the logging router at its own knob and
   three others plus a weaker net (:data:`EVAL_ROUTERS`); ``kinds``, five kinds of router trained on
   the same bootstrap records, each at its own default knob (:data:`EVAL_ROUTER_KINDS`; under
   ``evaluation-kinds/``, results in ``offpolicy_targets.kinds.json``).

Every step is a ``router-ml`` command whose output is kept, with the command, under ``--out``: a
re-run skips the steps that finished (resume after an interruption). Figures over seeds (or logs) are the mean with
a 95% t-interval. Prints one JSON object, also written to ``<out>/offpolicy_targets.json``. A LEARNING
data set whose step fails (a table too small for its split, say) is reported under its name with the
failed command's ``error`` and listed in ``failed``; the others still run, and the exit status is 1.

    python scripts/offpolicy_targets.py                                  # both parts, every default
    python scripts/offpolicy_targets.py --part learning --datasets mmlu-pro --seeds 0 --rates 0.2 \\
        --variant masked=loss.logged_targets=mask --variant iw=loss.logged_targets=mask,loss.propensity_clip=20
    python scripts/offpolicy_targets.py --quick                          # 1 seed, rate 0.2, small demo
    python scripts/offpolicy_targets.py --part evaluation --eval-dataset demo --estimator dr
    python scripts/offpolicy_targets.py --part learning --datasets routellm,mmlu-pro-7 --rates 0.2
    python scripts/offpolicy_targets.py --part learning --config auto --rates 0.2 --variant offpolicy=
    python scripts/offpolicy_targets.py --part learning --datasets mine --table mine=my_table.parquet --rates 0.2
    python scripts/offpolicy_targets.py --part evaluation --explore-policy curve   # logs explored along the curve
    python scripts/offpolicy_targets.py --part evaluation --eval-routers kinds     # five kinds of router instead
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "training" / "configs" / "mlp_static.toml"  #: every step's router config unless --config says
#: evaluation-only settings: they change no trained weight, only what training reports (and its time)
FAST_REPORT = ("tracking.enabled=false", "eval.n_boot=0", "eval.baselines=random")
#: bootstrap resamples behind the EVALUATION part's intervals (`router-ml evaluate --n-boot`)
N_BOOT = 200
#: the demo protocol at its full size: 1,000 bootstrap, 13,000 logged, 6,000 test records of 20,000
DEMO = {"n": 20000, "seed": 7, "bootstrap": 0.05, "logged": 0.65}
VARIANTS = ("masked=loss.logged_targets=mask", "offpolicy=")
#: the EVALUATION part's routers: (name, checkpoint, knob as a multiple of the logging router's default).
#: "logging" is the simulated log's bootstrap router, "small" mlp_static trained on 30% of the same
#: bootstrap records. On MMLU-Pro-29 (seed 0) their true qualities lie 0.02-0.1 apart, 0.45 to 0.71:
#: Phi-3-mini (always-cheapest), Phi-3/Gemini-Flash half and half (cheap-mix), Gemini-Flash
#: (cheaper-knob), Flash/Pro (small-subset) and mostly Gemini-Pro (logging-policy).
EVAL_ROUTERS = (
    ("logging-policy", "logging", 1.0),    # the logging router itself, at its own knob, without exploration
    ("small-subset", "small", 2.0),        # a weaker net; at twice the knob it mixes Flash and Pro
    ("cheaper-knob", "logging", 0.1),      # a tenth of the willingness to pay
    ("cheap-mix", "logging", 0.005),       # 1/200 of it: the cheapest model on about half the prompts
    ("always-cheapest", "logging", 0.0),   # willingness to pay 0: the cheapest model, every prompt
)
#: ``--eval-routers kinds``: five kinds of router, each trained on the same bootstrap records and
#: scored at its own default knob - the routers a team would compare on its log. Sources other
#: than "logging" are (config name, settings) for ``router-ml train``.
EVAL_ROUTER_KINDS = (
    ("logging-policy", "logging", 1.0),
    ("auto", ("auto", ()), 1.0),
    ("logreg", ("auto", ("router.auto_pick=logreg",)), 1.0),
    ("mlp", ("auto", ("router.auto_pick=mlp",)), 1.0),
    ("mf", ("mf", ()), 1.0),
)
EVAL_ROUTER_SETS = {"knobs": EVAL_ROUTERS, "kinds": EVAL_ROUTER_KINDS}


def run(cmd: list[str], out: Path) -> dict:
    """Run a ``router-ml`` command and keep its JSON stdout in ``out`` with the command line, atomically;
    when ``out`` exists, return what it kept instead - if the same command made it (a changed setting
    under an old name would otherwise pass for a finished step)."""
    if out.exists():
        kept = json.loads(out.read_text())
        if kept.get("command") != cmd[1:]:
            raise SystemExit(f"{out} was made by another command ({kept.get('command')}), not {cmd[1:]}: "
                             "delete it or choose another --out")
        return kept["output"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"command": cmd[1:], "output": json.loads(lines[-1]) if lines else {}}))
    tmp.replace(out)
    return json.loads(out.read_text())["output"]


def cli(*args: str) -> list[str]:
    """A ``router-ml`` command line from this interpreter's environment (the venv running the script)."""
    return [str(Path(sys.executable).with_name("router-ml")), *args]


def sets(settings) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]`` (empty settings dropped)."""
    return [arg for s in settings if s for arg in ("--set", s)]


def t_interval(values: list[float | None]) -> dict:
    """Mean and 95% t-interval of the present values (the interval is None for fewer than two)."""
    from scipy import stats

    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return {"mean": None, "ci95": [None, None], "n": 0}
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": mean, "ci95": [None, None], "n": 1}
    half = stats.t.ppf(0.975, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(xs)}


class Protocol:
    """One data set's simulated-log protocol and the commands that run it, cached under ``root``: the
    simulations in ``sims/`` (shared by both parts: the evaluation's first log is the learning's seed-0
    log at rate 0.2), each part's routers under ``learning/`` and ``evaluation/``."""

    def __init__(self, data: Path, bootstrap: float | int, logged: float | int, root: Path, extra: list[str],
                 load: tuple[str, ...] = (), config: Path = CONFIG, policy: str = "epsilon",
                 uniform_share: float = 0.25):
        self.data, self.bootstrap, self.logged, self.root, self.extra = data, bootstrap, logged, root, extra
        self.config = config  # the router config of every simulate-log and train
        self.load = list(load)  # how simulate-log reads the table (e.g. --exclude FILE)
        self.policy, self.uniform_share = policy, uniform_share
        # another exploration policy than epsilon names its logs and log-trained routers (never the
        # bootstrap and ceiling routers: the split, and so they, depend on the seed only)
        self.tag = policy_tag(policy, uniform_share, "-")

    def policy_args(self) -> tuple[str, ...]:
        """``simulate-log``'s flags for this protocol's exploration policy (the uniform share applies to curve
        exploration only: simulate-log refuses it beside another policy)."""
        if self.policy == "epsilon":
            return ()
        share = ("--explore-uniform-share", str(self.uniform_share)) if self.policy == "curve" else ()
        return ("--explore-policy", self.policy, *share)

    def simulate(self, *, seed: int, rate: float, explore_seed: int, epsilon: bool = False) -> Path:
        """``simulate-log``'s output directory for this split seed, rate and exploration seed (with
        ``epsilon``: uniform exploration whatever the protocol's policy)."""
        tag = "" if epsilon else self.tag
        out = self.root / "sims" / f"seed{seed}-rate{rate}-explore{explore_seed}{tag}"
        out.mkdir(parents=True, exist_ok=True)
        policy = () if not tag else self.policy_args()
        run(cli("simulate-log", "--data", str(self.data), *self.load, "--out", str(out), "--config", str(self.config),
                "--bootstrap", str(self.bootstrap), "--logged", str(self.logged), "--seed", str(seed),
                "--explore-rate", str(rate), "--explore-seed", str(explore_seed), *policy, "--quiet",
                *sets(FAST_REPORT + tuple(self.extra))), out / "simulation.summary.json")
        return out

    def train(self, data: Path, out: Path, *, seed: int, settings=(), train_size: float = 0.9) -> dict:
        marker = out.with_name(out.name + ".train.json")
        if not marker.exists():  # an interrupted run's partial directory, and a score of an older one
            shutil.rmtree(out, ignore_errors=True)
            out.with_name(out.name + ".eval.json").unlink(missing_ok=True)
        return run(cli("train", "--config", str(self.config), "--data", str(data), "--out", str(out), "--train-size",
                       str(train_size), "--seed", str(seed), "--quiet",
                       *sets(FAST_REPORT + tuple(self.extra) + tuple(settings))), marker)

    def test_aiq(self, checkpoint: Path, test: Path) -> float:
        result = run(cli("evaluate", "--router", str(checkpoint), "--data", str(test), "--json", "--quiet"),
                     checkpoint.with_name(checkpoint.name + ".eval.json"))
        return result["test"]["aiq"]

    def full_outcomes(self, sim: Path, seed: int) -> Path:
        """The logged prompts of ``sim``'s log with every outcome, from the full-information table (the
        same prompts for every rate and exploration seed of a split ``seed``)."""
        out = self.root / "sims" / f"seed{seed}-log_full.jsonl"
        if not out.exists():
            write_full_outcomes(sim / "log.jsonl", self.data, out)
        return out


def record_key(record) -> tuple[str | None, str]:
    """What identifies a record of a table across the files the protocol writes: its ``sample_id`` and
    its prompt's text together (a table without sample ids: the text alone)."""
    return record.sample_id, record.text


def write_full_outcomes(log: Path, data: Path, out: Path) -> None:
    """Write the records of the full-information table ``data`` that ``log`` logged, with every outcome.
    A record is matched by its ``sample_id`` and its prompt's text together: a table without sample ids
    (a RouterBench wide table) matches by the prompt alone, never every record at once. The matches
    must be exactly the log's records, else SystemExit - a ceiling trained on other records (the
    test prompts among them) would be wrong without a sign of it."""
    from training.data import load_traffic, write_jsonl

    logged = load_traffic(log)[0].records
    keys = {record_key(r) for r in logged}
    matched = [r for r in load_traffic(data)[0].records if record_key(r) in keys]
    if len(matched) != len(logged):
        raise SystemExit(f"{data}: {len(matched)} of its records match the {len(logged)} records of {log} by sample "
                         "id and prompt, so the ceiling cannot be built from exactly the logged prompts; was the log "
                         "simulated from this table?")
    write_jsonl(matched, out)


def policy_tag(policy: str, uniform_share: float, sep: str) -> str:
    """What names another exploration policy's files (``-curve``, ``.curve0.5``); none for ``epsilon``."""
    from router_ml.exploration import Exploration

    if policy == "epsilon":
        return ""
    return f"{sep}{policy}" + ("" if uniform_share == Exploration().uniform_share else f"{uniform_share:g}")


def concat(parts: list[Path], out: Path) -> Path:
    """``cat parts > out`` once (canonical JSONL concatenates), atomically."""
    if not out.exists():
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("".join(p.read_text() for p in parts))
        tmp.replace(out)
    return out


def gap_closed(value: float | None, low: float | None, high: float | None) -> float | None:
    """``(value - low) / (high - low)``: the share of the bootstrap-to-ceiling gap closed (None: no gap)."""
    if value is None or low is None or high is None or abs(high - low) < 1e-12:
        return None
    return (value - low) / (high - low)


def learning(proto: Protocol, *, seeds: list[int], rates: list[float], variants: dict[str, list[str]],
             pool: ThreadPoolExecutor) -> dict:
    """Part A on one data set (module doc)."""
    keys = [(s, r) for s in seeds for r in rates]
    sims = dict(zip(keys, pool.map(lambda key: proto.simulate(seed=key[0], rate=key[1], explore_seed=key[0]), keys),
                    strict=True))
    # bootstrap, ceiling and test come from the first rate's uniform-exploration simulation (the same
    # split, whatever the policy), so every policy is compared with the same two routers
    firsts = {s: sims[(s, rates[0])] for s in seeds} if not proto.tag else dict(zip(
        seeds, pool.map(lambda s: proto.simulate(seed=s, rate=rates[0], explore_seed=s, epsilon=True), seeds),
        strict=True))
    jobs = {}  # (seed, name, rate or None) -> (train data, checkpoint dir, settings)
    for s in seeds:
        first = firsts[s]
        base = proto.root / "learning" / f"seed{s}"
        base.mkdir(parents=True, exist_ok=True)
        full_log = proto.full_outcomes(first, s)
        jobs[(s, "bootstrap", None)] = (first / "bootstrap.jsonl", base / "bootstrap", ())
        jobs[(s, "ceiling", None)] = (concat([first / "bootstrap.jsonl", full_log], base / "ceiling.jsonl"),
                                      base / "ceiling", ())
        for r in rates:
            (base / f"rate{r}{proto.tag}").mkdir(exist_ok=True)
            logged = concat([sims[(s, r)] / "bootstrap.jsonl", sims[(s, r)] / "log.jsonl"],
                            base / f"rate{r}{proto.tag}" / "bootstrap_log.jsonl")
            for name, settings in variants.items():
                jobs[(s, name, r)] = (logged, base / f"rate{r}{proto.tag}" / name, settings)

    def train_and_score(key):
        data, out, settings = jobs[key]
        proto.train(data, out, seed=key[0], settings=settings)
        return proto.test_aiq(out, firsts[key[0]] / "test.jsonl")

    aiq = dict(zip(jobs, pool.map(train_and_score, jobs), strict=True))
    boot = [aiq[(s, "bootstrap", None)] for s in seeds]
    ceil = [aiq[(s, "ceiling", None)] for s in seeds]
    result = {"data": str(proto.data), "bootstrap_records": proto.bootstrap, "logged_records": proto.logged,
              "explore_policy": proto.policy, "uniform_share": proto.uniform_share if proto.tag else None,
              "seeds": seeds, "aiq": {"bootstrap": {**t_interval(boot), "per_seed": boot},
                                      "ceiling": {**t_interval(ceil), "per_seed": ceil}}, "rates": {}}
    for r in rates:
        block = {}
        for name in variants:
            values = [aiq[(s, name, r)] for s in seeds]
            per_seed = [gap_closed(v, b, c) for v, b, c in zip(values, boot, ceil, strict=True)]
            overall = gap_closed(statistics.fmean(values), statistics.fmean(boot), statistics.fmean(ceil))
            block[name] = {"aiq": {**t_interval(values), "per_seed": values},
                           "gap_closed": {**t_interval(per_seed), "per_seed": per_seed, "overall": overall}}
        result["rates"][str(r)] = block
    at = result["rates"].get("0.2")
    if at is not None:
        result["closes_half_gap"] = {name: (v["gap_closed"]["overall"] or 0.0) >= 0.5 for name, v in at.items()}
    return result


# --- part B: evaluation -----------------------------------------------------------------------------


def default_knob(result: dict) -> dict | None:
    """The default-knob block of ``router-ml evaluate --json`` (``test.default_knob`` or top level)."""
    return (result.get("test") or {}).get("default_knob") or result.get("default_knob")


def knob_estimate(router_dir: Path, data: Path, out: Path, estimator: str = "auto") -> dict:
    """``router-ml evaluate``'s default-knob point of ``router_dir`` on ``data`` (exact with every
    outcome, on a log SNIPS or ``estimator``) with its bootstrap intervals; the evaluate JSON is kept in ``out``."""
    chosen = [] if estimator == "auto" else ["--estimator", estimator]
    result = run(cli("evaluate", "--router", str(router_dir), "--data", str(data), "--json", "--quiet",
                     "--n-boot", str(N_BOOT), *chosen), out)
    block = default_knob(result)
    if block is None or "ci95" not in block:
        raise RuntimeError(f"{out}: `router-ml evaluate --json` gave no default_knob with ci95; this script needs "
                           "the router-ml that reports them (delete the file after updating)")
    return block


def evaluation(proto: Protocol, *, seed: int, logs: int, rate: float, pool: ThreadPoolExecutor,
               estimator: str = "auto", router_set: str = "knobs") -> dict:
    """Part B (module doc)."""
    sims = list(pool.map(lambda k: proto.simulate(seed=seed, rate=rate, explore_seed=k), range(logs)))
    root = proto.root / f"evaluation{proto.tag}{'' if router_set == 'knobs' else '-' + router_set}"
    root.mkdir(parents=True, exist_ok=True)
    logging_router = sims[0] / "bootstrap_router"
    wtp = json.loads((logging_router / "artifact" / "manifest.json").read_text())["policy"]["willingness_to_pay"]
    checkpoints = {"logging": logging_router, "small": root / "routers" / "small-checkpoint"}
    specs = EVAL_ROUTER_SETS[router_set]
    if any(source == "small" for _, source, _ in specs):
        proto.train(sims[0] / "bootstrap.jsonl", checkpoints["small"], seed=seed, train_size=0.3)
    routers = {}
    for name, source, factor in specs:
        routers[name] = root / "routers" / name
        if isinstance(source, tuple):  # another config, trained on the logging router's bootstrap records
            config, settings = source
            Protocol(proto.data, proto.bootstrap, proto.logged, proto.root, proto.extra,
                     config=config_path(config)).train(sims[0] / "bootstrap.jsonl", routers[name], seed=seed,
                                                       settings=settings)
        elif source == "logging" and factor == 1.0:
            routers[name] = logging_router
        else:
            run(cli("export", "--checkpoint", str(checkpoints[source]), "--out", str(routers[name]),
                    "--willingness-to-pay", repr(wtp * factor)), routers[name].with_name(name + ".export.json"))
    truth_data = proto.full_outcomes(sims[0], seed)
    # (router, log index or None for the truth) -> (router dir, data, evaluate JSON)
    jobs = {(n, None): (d, truth_data, root / f"{n}.truth.json") for n, d in routers.items()}
    suffix = "" if estimator == "auto" else f".{estimator}"
    jobs.update({(n, k): (d, sims[k] / "log.jsonl", root / f"{n}.log{k}{suffix}.json")
                 for n, d in routers.items() for k in range(logs)})
    points = dict(zip(jobs, pool.map(lambda key: knob_estimate(*jobs[key], estimator if key[1] is not None
                                                                else "auto"), jobs), strict=True))
    truth = {n: points[(n, None)] for n in routers}
    est = {key: value for key, value in points.items() if key[1] is not None}
    true_order = sorted(routers, key=lambda n: -truth[n]["quality"])
    ranking = [all(est[(n, k)]["quality"] is not None for n in routers)
               and sorted(routers, key=lambda n: -est[(n, k)]["quality"]) == true_order for k in range(logs)]
    out = {"data": str(proto.data), "seed": seed, "explore_rate": rate, "explore_policy": proto.policy,
           "routers_set": router_set, "logs": logs, "n_boot": N_BOOT,
           "estimator": "snips" if estimator == "auto" else estimator,
           "targets": TARGETS, "true_ranking": true_order, "ranking_matches_share": statistics.fmean(ranking),
           "routers": {}}
    for name in routers:
        block = {"willingness_to_pay": truth[name].get("willingness_to_pay")}
        for key in ("quality", "cost"):
            true = truth[name][key]
            values = [_or_nan(est[(name, k)][key]) for k in range(logs)]
            error = max(abs(v - true) for v in values)  # NaN when a log matched none of the router's choices
            covered = [_or_nan(lo) <= true <= _or_nan(hi) for lo, hi in (est[(name, k)]["ci95"][key]
                                                                      for k in range(logs))]
            block[key] = {"truth": true, "estimate": t_interval(values),
                          "logs_without_estimate": sum(math.isnan(v) for v in values),
                          "max_abs_error": None if math.isnan(error) else error,
                          "max_rel_error": None if math.isnan(error) or not true else error / abs(true),
                          "coverage": statistics.fmean(covered)}
        block["meets_targets"] = meets_targets(block)
        out["routers"][name] = block
    return out


#: EVALUATION targets: quality within 0.01 (absolute), cost within 1% (0.01 USD would be no test at
#: 1e-5-1e-3 USD per request), both 95% intervals covering the truth in at least 90% of the logs
TARGETS = {"quality_max_abs_error": 0.01, "cost_max_rel_error": 0.01, "coverage": 0.9}


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def meets_targets(block: dict) -> dict[str, bool]:
    """Which of :data:`TARGETS` a router's EVALUATION block meets (a missing estimate meets none)."""
    quality, cost = block["quality"], block["cost"]
    return {"quality_error": _or_nan(quality["max_abs_error"]) <= TARGETS["quality_max_abs_error"],
            "cost_error": _or_nan(cost["max_rel_error"]) <= TARGETS["cost_max_rel_error"],
            "coverage": min(quality["coverage"], cost["coverage"]) >= TARGETS["coverage"]}


# --- command line -------------------------------------------------------------------------------------


def parse_variants(texts: list[str] | None, extra: list[str] | None = None,
                   config: Path = CONFIG) -> dict[str, list[str]]:
    """``NAME=SET[,SET...]`` -> {name: [settings]} (``offpolicy=`` is the defaults); each variant's
    settings (with ``extra``) are checked against the config now, not after an hour of simulations."""
    from router_ml.errors import RouterMLError
    from training.config import load_config

    out = {}
    for text in texts or VARIANTS:
        name, _, settings = text.partition("=")
        if not name or name in ("bootstrap", "ceiling") or name in out:
            raise SystemExit(f"--variant {text!r}: expected a new NAME=SECTION.KEY=VALUE[,...] "
                             "(not bootstrap or ceiling)")
        out[name] = [s for s in settings.split(",") if s]
        try:
            load_config(config, [*(extra or ()), *out[name]])
        except RouterMLError as exc:
            raise SystemExit(f"--variant {text!r}: {exc}") from None
    return out


def demo_data(out: Path, n: int) -> Path:
    """The demo generator's traffic at ``n`` records (seed 7), made once under ``out``."""
    path = out / f"demo-data-{n}" / "traffic.jsonl"
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), "--n", str(n), "--seed",
                        str(DEMO["seed"]), "--out-dir", str(path.parent)], check=True, capture_output=True)
    return path


def shared_tables(args: argparse.Namespace) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """The full-information tables the LEARNING part knows by name besides the demo: name -> (path, how
    simulate-log reads it); ``--table NAME=PATH`` adds any other (a user's own table)."""
    from training.protocols import protocols, shared_data_dir

    shared = shared_data_dir()
    routellm = protocols()["routellm"]
    tables = {"mmlu-pro": (Path(args.mmlu_pro), ()),
              "routellm": (routellm["data"], ("--exclude", str(routellm["exclude"]))),
              "mmlu-pro-7": (shared / "mmlu-pro-responses" / "mmlu_pro_responses.parquet", ())}
    for text in args.table or ():
        name, _, path = text.partition("=")
        if not name or not path or name == "demo" or name in tables:
            raise SystemExit(f"--table {text!r}: expected NAME=PATH with a new name (not demo, "
                             f"{', '.join(tables)})")
        tables[name] = (Path(path), ())
    return tables


def protocol(name: str, args: argparse.Namespace, root: Path) -> Protocol:
    """A data set's protocol: the demo (made here) or a full-information table, 5% bootstrap / 65% logged / 30% test."""
    extra, config = list(args.train_set or ()), config_path(getattr(args, "config", None))
    explore = {"policy": getattr(args, "explore_policy", "epsilon"),
               "uniform_share": getattr(args, "explore_uniform_share", 0.25)}
    if name == "demo":
        return Protocol(demo_data(Path(args.out), args.demo_n), round(DEMO["bootstrap"] * args.demo_n),
                        round(DEMO["logged"] * args.demo_n), root, extra, config=config, **explore)
    tables = shared_tables(args)
    if name not in tables:
        raise SystemExit(f"--datasets: unknown data set {name!r}; choose demo, {', '.join(tables)} "
                         "(or name a table with --table NAME=PATH)")
    path, load = tables[name]
    if not path.exists():
        raise SystemExit(f"data set {name}: {path} not found; point $ROUTER_ML_SHARED_DATA (or --mmlu-pro, "
                         "--table) at it")
    return Protocol(path, 0.05, 0.65, root, extra, load, config=config, **explore)


def config_path(name: str | None) -> Path:
    """``--config``: a shipped config's name (``auto``: what ``router-ml train`` trains by default) or a
    TOML path; none = :data:`CONFIG` (``mlp_static``)."""
    if not name:
        return CONFIG
    path = Path(name) if name.endswith(".toml") else ROOT / "training" / "configs" / f"{name}.toml"
    if not path.is_file():
        raise SystemExit(f"--config {name!r}: no such config ({path}); give a name in training/configs "
                         "(auto, mlp_static, ...) or a TOML path")
    return path


def main(argv: list[str] | None = None) -> int:
    from training.protocols import protocols
    from training.sweep import seeds_arg

    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--part", default="learning,evaluation", help="learning, evaluation or both (default)")
    parser.add_argument("--datasets", default="demo,mmlu-pro", help="LEARNING data sets: demo, mmlu-pro, routellm "
                        "(GPT-4 vs Mixtral, contaminated prompts excluded), mmlu-pro-7 (the 7-model MMLU-Pro table "
                        "with answers) or a --table name")
    parser.add_argument("--table", action="append", metavar="NAME=PATH",
                        help="a full-information table (any format `router-ml train` reads) to run the LEARNING "
                        "protocol on as data set NAME (repeatable)")
    parser.add_argument("--seeds", type=seeds_arg, default="0-4", help="LEARNING seeds, e.g. 0-4 or 0,3")
    parser.add_argument("--rates", default="0.05,0.2,0.5", help="LEARNING exploration rates")
    parser.add_argument("--variant", action="append", metavar="NAME=SET[,SET...]",
                        help="a training variant on bootstrap + log (repeatable; default masked and offpolicy)")
    parser.add_argument("--eval-dataset", default="mmlu-pro", help="EVALUATION data set (default mmlu-pro)")
    parser.add_argument("--eval-routers", default="knobs", choices=tuple(EVAL_ROUTER_SETS),
                        help="EVALUATION's five routers: knobs (default; the logging router at four other knobs and "
                        "a weaker net) or kinds (auto, its logistic regression and MLP, MF and the logging router, "
                        "each trained on the bootstrap records, at its own default knob)")
    parser.add_argument("--logs", type=int, default=20, help="EVALUATION logs (exploration seeds 0..N-1)")
    parser.add_argument("--estimator", default="auto", choices=("auto", "ips", "snips", "dr"),
                        help="EVALUATION: `router-ml evaluate --estimator` on the logs (default auto: SNIPS); "
                        "another estimator's results are kept beside SNIPS's in the same --out")
    parser.add_argument("--mmlu-pro", default=str(protocols()["mmlu-pro"]["data"]), help="the MMLU-Pro table "
                        "(default $ROUTER_ML_SHARED_DATA or ../shared/data)/mmlu-pro-29/mmlu_pro_29.parquet")
    parser.add_argument("--demo-n", type=int, default=DEMO["n"], help="demo records (default 20000)")
    parser.add_argument("--config", help="the router config every simulate-log and train uses: a name in "
                        "training/configs (auto = the default router, everything as `router-ml train` does without "
                        "--config) or a TOML path; default mlp_static")
    parser.add_argument("--explore-policy", default="epsilon", choices=("epsilon", "softmax", "curve"),
                        help="both parts: the simulated deployment's exploration policy (simulate-log "
                        "--explore-policy; default epsilon, uniform). LEARNING's bootstrap, ceiling and test are the "
                        "same for every policy")
    parser.add_argument("--explore-uniform-share", type=float, default=0.25,
                        help="--explore-policy curve: the explored share drawn uniformly (default 0.25)")
    parser.add_argument("--train-set", action="append", metavar="SECTION.KEY=VALUE",
                        help="a setting for every simulate-log and train (e.g. train.epochs=3 for a smoke test)")
    parser.add_argument("--jobs", type=int, default=2, help="router-ml processes at once (default 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 1 seed, rate 0.2, the demo at n=4000 "
                        "for both parts (unless --datasets / --eval-dataset say otherwise), 3 logs")
    parser.add_argument("--out", default=str(ROOT / "results" / "offpolicy"), help="cache and result directory")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = parser.parse_args([])
        args.seeds, args.rates = [0], "0.2"
        args.demo_n = min(args.demo_n, 4000)
        args.datasets = "demo" if args.datasets == defaults.datasets else args.datasets
        args.eval_dataset = "demo" if args.eval_dataset == defaults.eval_dataset else args.eval_dataset
        args.logs = min(args.logs, 3)
    seeds = args.seeds  # checked by argparse; every other number below, before anything is simulated or written
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates {args.rates!r}: expected exploration rates like 0.05,0.2,0.5")
    if not all(0 <= r <= 1 for r in rates):
        parser.error(f"--rates {args.rates!r}: each exploration rate must be in [0, 1]")
    if args.logs < 1 or args.jobs < 1 or args.demo_n < 100 or not 0 <= args.explore_uniform_share <= 1:
        parser.error("bounds: --logs >= 1, --jobs >= 1, --demo-n >= 100, 0 <= --explore-uniform-share <= 1")
    variants = parse_variants(args.variant, args.train_set, config_path(args.config))
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.part.split(","))
    if not parts or parts - {"learning", "evaluation"}:
        raise SystemExit(f"--part {args.part!r}: choose learning, evaluation or learning,evaluation")
    result: dict = {"settings": {k: v for k, v in vars(args).items()}}
    failed: list[str] = []
    from training.parallel import share_cores

    share_cores(args.jobs)  # each training's workers: its share of the cores
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        if "learning" in parts:
            result["learning"] = {}
            for name in args.datasets.split(","):
                proto = protocol(name, args, out / name)
                try:
                    result["learning"][name] = learning(proto, seeds=seeds, variants=variants, rates=rates, pool=pool)
                except RuntimeError as exc:  # a step's command failed: the other data sets still run
                    failed.append(name)
                    result["learning"][name] = {"data": str(proto.data), "error": str(exc)}
                    print(f"offpolicy_targets: {name}: {exc}", file=sys.stderr)
        if "evaluation" in parts:
            name = args.eval_dataset
            result["evaluation"] = evaluation(protocol(name, args, out / name), seed=0,
                                              logs=args.logs, rate=0.2, pool=pool, estimator=args.estimator,
                                              router_set=args.eval_routers)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    suffix = "" if args.estimator == "auto" or "evaluation" not in parts else f".{args.estimator}"
    suffix += policy_tag(args.explore_policy, args.explore_uniform_share, ".")  # beside the uniform ones
    if "evaluation" in parts and args.eval_routers != "knobs":
        suffix += f".{args.eval_routers}"
    if failed:
        result["failed"] = failed
    (out / f"offpolicy_targets{suffix}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
