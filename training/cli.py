"""The training commands of ``router-ml``: ``data inspect|convert``, ``train``, ``evaluate``,
``compare``, ``sweep``, ``export`` and ``cascade evaluate``.

They reach the ``router-ml`` console script through the ``router_ml.commands`` entry point
(``pyproject.toml``), so the runtime (:mod:`router_ml.cli`) offers them without importing this
package. Importing this module stays light - argparse and the runtime's CLI helpers only - and
each command imports the training stack when it runs, so a missing ``train`` extra becomes one
line that says what to install instead of a traceback (or a broken ``router-ml route``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from router_ml.cli import KNOB, add_exploration_options, bounded, per_cpu_limit, print_json
from router_ml.errors import RouterMLError, UsageError
from training import configs
from training.cli_text import (
    fmt,
    print_artifacts,
    print_default_knob,
    print_inspect,
    print_scores,
    print_train_summary,
    seen_note,
    warn_sets,
)

#: the config the training commands read without --config (training.configs: paths only, so building
#: the parser, which every router-ml command does, imports nothing of the training stack)
DEFAULT_CONFIG = str(configs.DEFAULT_CONFIG)

__all__ = ["register"]

TRAIN_EXTRA = 'pip install "router-ml[train]"'


def _needs_train_extra(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a missing third-party package of the training stack into an error that names the extra.

    A missing ``training``/``router_ml`` module is a broken install, not a missing extra, and is
    left to surface as it is. The command runs in a :func:`~training.progress.progress_scope` that
    its ``--quiet`` closes: no progress bars on stderr, wherever they are drawn.
    """

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from training.progress import progress_scope  # light: tqdm is imported when a bar is drawn

        try:
            with progress_scope(not getattr(args, "quiet", False)):
                return command(args)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").partition(".")[0]
            if not top or top in ("training", "router_ml"):
                raise
            raise RouterMLError(f"this command needs the training extra ({exc.name} is missing): "
                                f"{TRAIN_EXTRA}") from exc

    return run


CACHE_HELP = "feature cache (default $ROUTER_ML_CACHE/features or ~/.cache/router-ml/features)"


def _directory(text: str) -> str:
    """An argparse ``type`` for a directory the command writes into: an existing file there is a usage
    error naming the flag, before any data is read (it was an errno from deep inside featurizing)."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory; name a directory (it is created "
                                         "if missing)")
    return text


def _parse_columns(pairs: Sequence[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"--column expects FIELD=COLUMN, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def _add_input_options(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    if positional:
        p.add_argument("path", help="a file, a directory of files, or a Hugging Face dataset id")
    p.add_argument("--format", help="override format detection (jsonl, parquet, wide, routellm, hf, pickle, "
                   "decisions)")
    p.add_argument("--exclude", metavar="FILE", help="prompts to drop before anything else "
                   "(JSONL with eval_prompt/prompt/text, or one prompt per line)")
    p.add_argument("--prices", metavar="FILE", help="price catalog (JSON/TOML) for records with tokens but no cost")
    p.add_argument("--on-error", choices=("raise", "quarantine"), default="raise",
                   help="raise: stop at the first bad record (default); quarantine: set bad records aside")
    p.add_argument("--quarantine", metavar="FILE", help="where rejected records go "
                   "(default ./<input name>.quarantine.jsonl)")
    p.add_argument("--column", action="append", metavar="FIELD=COLUMN",
                   help="column mapping for --format hf (repeatable), e.g. prompt=question")
    p.add_argument("--split", default="train", help="dataset split for --format hf (default train)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow unpickling a RouterBench .pkl (only for files you trust)")


def _load(args: argparse.Namespace):
    from training.data import load_traffic

    return load_traffic(args.path, prices=args.prices, **_load_options(args))


@_needs_train_extra
def cmd_data_inspect(args: argparse.Namespace) -> int:
    from training.data import load_traffic

    table, report = load_traffic(args.path, prices=args.prices, num_proc=args.num_proc, **_load_options(args))
    summary = table.summary()
    info: dict[str, Any] = {**summary, "rejected": report.rejected, "missing_propensity": report.missing_propensity,
                            "excluded": report.excluded,
                            "merged_duplicates": report.merged_duplicates, "format": report.format,
                            "source": report.source, "quarantine": report.quarantine,
                            "ignored_columns": report.ignored_columns, "metadata_columns": report.metadata_columns,
                            "models_without_outcomes": report.models_without_outcomes}
    if args.json:
        print_json(info)
        return 0
    print_inspect(table, report, summary)
    return 0


#: ``data convert --out``: the name's ending chooses the canonical format written
CONVERT_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                    ".jsonl.gz": "jsonl"}


@_needs_train_extra
def cmd_data_convert(args: argparse.Namespace) -> int:
    out = args.out
    kind = next((k for suffix, k in CONVERT_SUFFIXES.items() if out.lower().endswith(suffix)), None)
    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        raise RouterMLError(f"--out {out}: a directory; name the file to write, e.g. {out.rstrip('/')}/traffic.jsonl")
    if kind is None:  # a .csv got JSON Lines under its name, a .gz plain text that no reader could open
        raise RouterMLError(f"--out {out}: name a .jsonl, .jsonl.gz or .parquet file - the ending chooses the "
                            "canonical format written (a wide CSV is read, not written)")
    table, report = _load(args)
    from training.data import write_jsonl, write_parquet

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    (write_parquet if kind == "parquet" else write_jsonl)(table, out)
    print_json({"out": out, "records": len(table), "rejected": report.rejected,
                "missing_propensity": report.missing_propensity, "excluded": report.excluded,
                "models": list(table.models)})
    return 0


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"format": args.format, "exclude": args.exclude, "on_error": args.on_error,
            "quarantine": args.quarantine, "columns": _parse_columns(args.column), "split": args.split,
            "allow_pickle": args.allow_pickle}


def _setup_logging(quiet: bool) -> None:
    """Our progress messages (the ``router_ml`` loggers) at INFO unless ``quiet``; other libraries'
    at WARNING: ONNX Runtime's graph optimizer alone logs some twenty INFO lines per export."""
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="router-ml: %(message)s")
    logging.getLogger("router_ml").setLevel(logging.WARNING if quiet else logging.INFO)


@_needs_train_extra
def cmd_train(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet)
    from training.config import load_config
    from training.pipeline import train_router

    overrides = list(args.set or [])
    if args.train_size is not None:
        overrides.append(f"data.train_size={args.train_size}")
    if args.seed is not None:
        overrides.append(f"data.seed={args.seed}")
    config = load_config(args.config, overrides)
    if config.scorer.kind:  # [scorer] kind: an answer scorer for cascades, not a router
        return _train_scorer(args, config)
    summary = train_router(config, args.path, out_dir=args.out, prices=args.prices, cache_dir=args.cache_dir,
                           progress=not args.quiet, register=args.register, **_load_options(args))
    if summary:  # non-zero ranks under torchrun return nothing
        print_train_summary(summary)
        print_json(summary)
    return 0


def _train_scorer(args: argparse.Namespace, config: Any) -> int:
    from training.cascade.scorer_run import train_scorer

    summary = train_scorer(config, args.path, out_dir=args.out, prices=args.prices, progress=not args.quiet,
                           register=args.register, **_load_options(args))
    test = summary["test"]
    print(f"router-ml: {summary['scorer']} answer scorer trained on {summary['train_triples']} answers in "
          f"{summary['fit_seconds']} s; test AUC {fmt(test.get('scorer_auc'), '.4f')} (pooled); saved to "
          f"{summary['out']}" + (f"; MLflow run {summary['run_id']}" if summary["run_id"] else "; MLflow: not logged"),
          file=sys.stderr)
    print_json(summary)
    return 0


@_needs_train_extra
def cmd_featurize(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet)
    from training.config import load_config
    from training.shards import featurize_shard, parse_shard

    shard = parse_shard(args.shard)
    config = load_config(args.config, list(args.set or []))
    print_json(featurize_shard(config, args.path, shard=shard, cache_dir=args.cache_dir, prices=args.prices,
                                     **_load_options(args)))
    return 0


@_needs_train_extra
def cmd_simulate_log(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet)
    from router_ml.cli import exploration_from_args
    from training.config import load_config
    from training.simulate import simulate_log

    exploration = exploration_from_args(args)
    config = load_config(args.config, list(args.set or []))
    result = simulate_log(config, args.path, out=args.out, bootstrap=_size(args.bootstrap, "--bootstrap"),
                          logged=_size(args.logged, "--logged"), exploration=exploration, seed=args.seed,
                          willingness_to_pay=args.willingness_to_pay, progress=not args.quiet,
                          **_load_options(args))
    if result.get("warning"):
        print(f"router-ml: warning: {result['warning']}", file=sys.stderr)
    print_json(result)
    return 0


def _size(text: str, flag: str) -> float | int:
    """A record count ("1000") or a fraction ("0.05")."""
    try:
        value = float(text)
    except ValueError:
        raise RouterMLError(f"{flag} takes a record count or a fraction, got {text!r}") from None
    return value if value < 1 else int(value)


def _evaluate_options(args: argparse.Namespace) -> dict[str, Any]:
    """What ``evaluate`` and ``compare --router`` pass to :func:`training.pipeline.evaluate_router`."""
    return {"prices": args.prices, "include_seen": args.include_seen, "cache_dir": args.cache_dir,
            "progress": not args.quiet, "estimator": args.estimator, "willingness_to_pay": args.willingness_to_pay,
            "n_boot": args.n_boot,
            **_load_options(args)}


@_needs_train_extra
def cmd_evaluate(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet or args.json)
    from training.pipeline import evaluate_many

    datasets = args.path
    if len(datasets) > 1 and args.quarantine:
        raise UsageError("--quarantine names one file but several --data sets were given; leave it out to get "
                            "one ./<input name>.quarantine.jsonl per set")
    result = evaluate_many(args.router, datasets, artifacts=args.artifact or (), **_evaluate_options(args))
    warn_sets(result)
    if len(datasets) == 1:  # one set: the same JSON shape as training's test report
        single = result["sets"][0]
        if args.json:
            print_json(single)
            return 0
        print_scores(f"{single['router']} on {single['data']}: {single['scored']} prompts scored "
                      f"({seen_note(single)})", single["test"])
        print_default_knob(single)
        print_artifacts(single)
        return 0
    if args.json:
        print_json(result)
        return 0
    for one in result["sets"]:
        note = f"; not in this data: {len(one['models_missing'])} models" if one["models_missing"] else ""
        print_scores(f"{one['data']}: {one['scored']} prompts scored ({seen_note(one)}{note})", one["test"])
        print_default_knob(one)
        print_artifacts(one)
    print_scores(f"macro average over {result['macro']['sets']} sets", result["macro"]["test"])
    return 0


#: which of ``compare``'s options each of its three modes reads (``--quiet`` and ``--json``: all three)
_COMPARE_READS = {
    "--router": {"router", "path", "estimator", "willingness_to_pay", "n_boot", "include_seen", "cache_dir",
                 "format", "exclude", "prices", "on_error", "quarantine", "column", "split", "allow_pickle"},
    "--cascade": {"cascade"},
    "MLflow runs": {"experiment", "run_id", "filter", "allow_mixed", "plot", "no_plot", "no_log"},
}


def _refuse_unread_compare_options(args: argparse.Namespace, mode: str) -> None:
    """An option the chosen mode does not read is an error naming it, not silently ignored (``--data`` beside
    ``--experiment`` once printed the runs' own MLflow figures as if the data had been scored)."""
    given = [flag for dest, (flag, default) in args.compare_options.items()
             if dest not in _COMPARE_READS[mode] and dest not in ("quiet", "json", "sort")
             and getattr(args, dest) != default]
    if given:
        what = {"--router": "scores saved routers (--router) on --data",
                "--cascade": "summarises cascade reports (--cascade)",
                "MLflow runs": "ranks MLflow runs (--experiment/--run-id/--filter) on their logged metrics"}[mode]
        raise UsageError(f"compare {what}; {', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply "
                            "there - leave it out")


@_needs_train_extra
def cmd_compare(args: argparse.Namespace) -> int:
    mode = "--cascade" if args.cascade else "--router" if args.router else "MLflow runs"
    _refuse_unread_compare_options(args, mode)  # also --router or --experiment beside --cascade, and so on
    if mode == "--cascade":
        from training.compare import compare_cascades, format_cascade_table

        result = compare_cascades(args.cascade, sort=args.sort)
        if args.json:
            print_json(result)
        else:
            print(format_cascade_table(result))
        return 0
    if mode == "--router":
        from training.compare import compare_routers, format_router_table

        if not args.path:
            raise UsageError("--router needs --data: the log (or labelled data) to score every router on")
        _setup_logging(args.quiet or args.json)
        result = compare_routers(args.router, args.path, sort=args.sort, **_evaluate_options(args))
        warn_sets({"sets": result["routers"]})
        if args.json:
            print_json(result)
        else:
            print(format_router_table(result))
        return 0
    if args.no_plot and args.plot != args.compare_options["plot"][1]:
        raise UsageError(f"--plot {args.plot} and --no-plot contradict each other; give one")
    from training.compare import compare_runs, format_table

    result = compare_runs(experiments=args.experiment or (), run_ids=args.run_id or (), filter_string=args.filter,
                          sort=args.sort, allow_mixed=args.allow_mixed, plot=None if args.no_plot else args.plot,
                          log_to_mlflow=not args.no_log)
    if args.json:
        print_json(result)
    else:
        print(format_table(result))
    return 0


@_needs_train_extra
def cmd_sweep(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet)
    from training.sweep import format_summary, parse_seeds, run_sweep

    result = run_sweep(args.config, args.path, sets=args.set or [], seeds=parse_seeds(args.seeds), out_dir=args.out,
                       train_size=args.train_size, prices=args.prices, cache_dir=args.cache_dir,
                       progress=not args.quiet, **_load_options(args))
    print(format_summary(result), file=sys.stderr)
    print_json(result)
    return 0


@_needs_train_extra
def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_router

    checkpoint = args.checkpoint
    if args.run_id:
        from router_ml.router import resolve_artifact_path

        checkpoint = resolve_artifact_path(f"runs:/{args.run_id}/router")
    report = export_router(checkpoint, args.out, quantize=args.quantize, default_willingness=args.willingness_to_pay)
    print_json({"out": args.out, **report})
    return 0


@_needs_train_extra
def cmd_cascade_evaluate(args: argparse.Namespace) -> int:
    _setup_logging(args.quiet)
    from training.cascade.command import compact, run_cascade_evaluate

    report = run_cascade_evaluate(router=args.router, scorer=args.scorer, data=args.path, seed=args.seed,
                                  train_size=_size(args.train_size, "--train-size"), out=args.out,
                                  scorer_latency_ms=args.scorer_latency_ms, n_boot=args.n_boot,
                                  headline=args.headline, tracking=not args.no_tracking,
                                  tracking_uri=args.tracking_uri, experiment=args.experiment, **_load_options(args))
    print_json(report if args.full else compact(report))
    return 0


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars or progress messages on stderr (bars show only when stderr is a terminal; "
                        "ROUTER_ML_PROGRESS=1 shows them on a pipe or log file too)")


def _add_scoring_options(p: argparse.ArgumentParser) -> None:
    """How a saved router is scored on data: ``evaluate`` and ``compare --router`` share these."""
    p.add_argument("--estimator", choices=("auto", "ips", "snips", "dr"), default="auto",
                   help="how logged traffic (one model's outcome per prompt) is scored. auto: exact with every "
                        "outcome; with logged propensities snips - self-normalised IPS, the lowest variance of the "
                        "three and never outside the range of the observed qualities; without propensities auto "
                        "refuses. ips, snips, dr (doubly robust, the router's predictions as reward model) force "
                        "an estimate; without propensities it uses exposure weights and is flagged biased")
    p.add_argument("--willingness-to-pay", type=KNOB, metavar="USD",
                   help="report the default-knob point at this knob (USD per unit of quality) instead of the "
                        "router's own (artifact manifest, or what export would ship for a checkpoint)")
    p.add_argument("--n-boot", type=bounded(int, 0), metavar="N",
                   help="bootstrap resamples for the 95%% intervals (default: the "
                   "router's eval.n_boot; 0 = no intervals)")
    p.add_argument("--include-seen", action="store_true",
                   help="keep prompts the router was trained on (dropped by default; checkpoints only)")
    p.add_argument("--cache-dir", type=_directory, help=CACHE_HELP)
    _add_quiet(p)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training commands to the ``router-ml`` parser (the ``router_ml.commands`` entry point)."""
    data = sub.add_parser("data", help="inspect and convert logged traffic")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    inspect = data_sub.add_parser("inspect", help="validate a data set and summarise it")
    _add_input_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print exactly one JSON object")
    inspect.add_argument("--num-proc", type=bounded(int, 1, per_cpu_limit()), default=1, metavar="N",
                         help="validate canonical JSONL/Parquet over N processes (same result as 1; default 1; at "
                              "most 4 per CPU)")
    inspect.set_defaults(func=cmd_data_inspect)
    convert = data_sub.add_parser("convert", help="write any supported input as canonical JSONL/Parquet")
    _add_input_options(convert)
    convert.add_argument("--out", required=True, help="the file to write: .jsonl, .jsonl.gz or .parquet (the ending "
                         "chooses the format)")
    convert.set_defaults(func=cmd_data_convert)

    train = sub.add_parser("train", help="train a router on logged traffic, evaluate it, log to MLflow")
    train.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config (training/configs/*.toml; "
                       "default: auto.toml, the router that selects itself)")
    train.add_argument("--data", required=True, dest="path", help="training data (any supported format)")
    train.add_argument("--out", required=True, help="directory to write the trained router (or scorer) to")
    train.add_argument("--train-size", help="records (count) or share (fraction) for train + validation")
    train.add_argument("--seed", type=bounded(int, 0), help="split and training seed")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    train.add_argument("--cache-dir", type=_directory, help=CACHE_HELP)
    _add_quiet(train)
    train.add_argument("--register", metavar="NAME", help="register the exported router in the MLflow model "
                       "registry under NAME (load it with models:/NAME/VERSION)")
    _add_input_options(train, positional=False)
    train.set_defaults(func=cmd_train)

    simulate = sub.add_parser("simulate-log", help="turn a full-information table into a bootstrap set, the log "
                              "an exploring router trained on it would write (with propensities) and a test set")
    simulate.add_argument("--data", required=True, dest="path", help="full-information data (every model's outcome)")
    simulate.add_argument("--out", required=True, help="directory for bootstrap.jsonl, log.jsonl, test.jsonl")
    simulate.add_argument("--config", default=DEFAULT_CONFIG, help="the bootstrap router's TOML config "
                          "(default: training/configs/auto.toml)")
    simulate.add_argument("--bootstrap", default="0.05", help="bootstrap records: a count or a fraction (0.05)")
    simulate.add_argument("--logged", default="0.65", help="logged records: a count or a fraction (0.65); "
                          "the rest is the test set")
    simulate.add_argument("--seed", type=bounded(int, 0), default=0, help="split and bootstrap-training seed")
    simulate.add_argument("--willingness-to-pay", type=KNOB, help="the deployed knob (default: the artifact's)")
    simulate.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    _add_quiet(simulate)
    add_exploration_options(simulate)
    _add_input_options(simulate, positional=False)
    simulate.set_defaults(func=cmd_simulate_log)

    evaluate = sub.add_parser("evaluate", help="score a trained router on (held-out) data")
    evaluate.add_argument("--router", "--checkpoint", dest="router", required=True, metavar="DIR",
                          help="a checkpoint written by 'router-ml train', or an exported artifact directory "
                               "(scored through the runtime; it lists no training prompts to drop)")
    evaluate.add_argument("--data", required=True, dest="path", action="append",
                          help="data set to score on; repeat for several (per-set and macro-averaged results)")
    evaluate.add_argument("--artifact", action="append", metavar="DIR",
                          help="also score this exported artifact of the checkpoint (fp32 or int8) through the "
                               "runtime on the same prompts (repeatable); printed beside the checkpoint's numbers")
    _add_scoring_options(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print exactly one JSON object")
    _add_input_options(evaluate, positional=False)
    evaluate.set_defaults(func=cmd_evaluate)

    compare = sub.add_parser("compare", help="rank saved routers on one log, or MLflow training runs on the same "
                             "data, and plot their curves")
    compare.add_argument("--router", action="append", metavar="DIR",
                         help="a checkpoint or artifact directory to score on --data (repeatable): ranks the routers "
                              "by the same estimator on the same prompts")
    compare.add_argument("--data", dest="path", metavar="FILE", help="with --router: the log (or labelled data)")
    compare.add_argument("--cascade", action="append", metavar="DIR", help="a 'cascade evaluate --out' directory "
                         "(repeatable, e.g. one per seed): every policy, the router alone and the baselines, as "
                         "mean ± sd over the reports; --sort aiq, savings_at_iso_quality or best_quality")
    compare.add_argument("--experiment", action="append", help="MLflow experiment name (repeatable)")
    compare.add_argument("--run-id", action="append", help="an MLflow run id (repeatable)")
    compare.add_argument("--filter", help="MLflow filter, e.g. \"params.data_fingerprint = '...'\"")
    compare.add_argument("--sort", default="aiq", help="with --router: aiq (default), quality or cost (at the "
                         "default knob); for MLflow runs: aiq, apgr, cpt_50, savings_at_iso_quality, best_quality, "
                         "latency_p50_us or fit_seconds")
    compare.add_argument("--allow-mixed", action="store_true",
                         help="rank runs trained or tested on different data or splits anyway")
    compare.add_argument("--plot", default="comparison.png", help="PNG to write (default ./comparison.png)")
    compare.add_argument("--no-plot", action="store_true", help="table only")
    compare.add_argument("--no-log", action="store_true", help="do not log the figure to MLflow")
    compare.add_argument("--json", action="store_true", help="print exactly one JSON object")
    _add_scoring_options(compare)
    _add_input_options(compare, positional=False)
    compare.set_defaults(func=cmd_compare, compare_options={a.dest: (a.option_strings[0], a.default)
                                                            for a in compare._actions if a.option_strings
                                                            and a.dest != "help"})

    sweep = sub.add_parser("sweep", help="train a grid of settings x seeds as MLflow child runs and summarise")
    sweep.add_argument("--config", default=DEFAULT_CONFIG, help="TOML config the grid starts from (default: "
                       "training/configs/auto.toml)")
    sweep.add_argument("--data", required=True, dest="path")
    sweep.add_argument("--set", action="append", metavar="SECTION.KEY=V1,V2,...",
                       help="values to sweep (repeatable: the grid is every combination)")
    sweep.add_argument("--seeds", default="0", help="seeds, e.g. 0-4 or 0,3,7 (default 0)")
    sweep.add_argument("--train-size", help="records (count) or share (fraction) for train + validation")
    sweep.add_argument("--out", required=True, help="directory for the runs' routers and sweep_summary.json")
    sweep.add_argument("--cache-dir", type=_directory, help=CACHE_HELP)
    _add_quiet(sweep)
    _add_input_options(sweep, positional=False)
    sweep.set_defaults(func=cmd_sweep)

    export = sub.add_parser("export", help="export a trained router to an ONNX artifact directory")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a directory written by 'router-ml train'")
    source.add_argument("--run-id", help="an MLflow run whose 'router' artifact to export")
    export.add_argument("--out", required=True, help="artifact directory to write")
    export.add_argument("--quantize", choices=("int8",), help="dynamic per-channel int8 weights")
    export.add_argument("--willingness-to-pay", type=KNOB, help="default knob (USD per unit of quality; "
                        "default: best predicted quality)")
    export.set_defaults(func=cmd_export)

    featurize = sub.add_parser("featurize", help="featurize shard K of N of a data set into the feature cache "
                               "that 'train' reads (fan it out with any batch engine)")
    featurize.add_argument("--config", default=DEFAULT_CONFIG, help="the TOML config 'train' will use (its "
                           "[featurizer] section counts; default: training/configs/auto.toml, as for train)")
    featurize.add_argument("--data", required=True, dest="path", help="the data 'train' will get, with the same "
                           "input options (the cache key holds the loaded records' fingerprint)")
    featurize.add_argument("--shard", default="0/1", metavar="K/N", help="this worker's share, 0 <= K < N "
                           "(default 0/1: everything)")
    featurize.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    featurize.add_argument("--cache-dir", type=_directory, help="feature cache (default $ROUTER_ML_CACHE/features or "
                           "~/.cache/router-ml/features); pass 'train' the same")
    _add_quiet(featurize)
    _add_input_options(featurize, positional=False)
    featurize.set_defaults(func=cmd_featurize)

    cascade = sub.add_parser("cascade", help="cascades: call a cheap model, score its answer, escalate when low")
    evaluate_cascade = cascade.add_subparsers(dest="cascade_command", required=True, metavar="ACTION").add_parser(
        "evaluate", help="fit cascade policies on the router's validation split, score them on its test split")
    evaluate_cascade.add_argument("--router", required=True, help="the router's exported artifact directory")
    evaluate_cascade.add_argument("--scorer", required=True, help="the answer scorer's exported artifact directory")
    evaluate_cascade.add_argument("--data", required=True, dest="path", help="the data router and scorer were "
                                  "trained on, with every model's response text")
    evaluate_cascade.add_argument("--train-size", required=True, help="as given to 'train' (count or fraction)")
    evaluate_cascade.add_argument("--seed", type=bounded(int, 0), default=0, help="as given to 'train' (default 0)")
    evaluate_cascade.add_argument("--out", help="write report.json, policy.json (+ one per policy family) and "
                                  "curves.png here")
    evaluate_cascade.add_argument("--scorer-latency-ms", type=bounded(float, 0), metavar="MS",
                                  help="the scorer's time per scored answer, for the latency report (default: "
                                  "measured here, the p50 of 200 test answers scored one by one on 1 thread)")
    evaluate_cascade.add_argument("--n-boot", type=bounded(int, 0), default=200,
                                  help="bootstrap resamples (0: no intervals)")
    evaluate_cascade.add_argument("--headline", default="default", metavar="FAMILY",
                                  help="the policy family whose numbers are 'test' and policy.json (default: "
                                  "chain_margin unless another contender's 2-fold cross-validated AIQ on validation is "
                                  "higher by more than 0.01; auto: that contender always; or a family name)")
    evaluate_cascade.add_argument("--full", action="store_true", help="print the curves and per-point tables too")
    evaluate_cascade.add_argument("--experiment", metavar="NAME", help="MLflow experiment of the evaluation's run "
                                  "(default: the router's own, so 'compare --experiment' ranks it beside the routers)")
    evaluate_cascade.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI (default "
                                  "$MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    evaluate_cascade.add_argument("--no-tracking", action="store_true", help="log no MLflow run")
    _add_quiet(evaluate_cascade)
    _add_input_options(evaluate_cascade, positional=False)
    evaluate_cascade.set_defaults(func=cmd_cascade_evaluate)

