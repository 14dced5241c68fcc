"""The ``router-ml`` command line.

Subcommands import what they need when they run, so ``router-ml route`` stays as light as the
runtime and commands that need the training stack say which extra to install when it is missing.
Exit codes: 0 success, 1 a router-ml error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from router_ml import __version__
from router_ml.errors import RouterMLError

__all__ = ["main"]


def _need_training() -> None:
    try:
        import training.data  # noqa: F401
    except ImportError as exc:
        raise RouterMLError(
            f'this command needs the training extra ({exc.name} is missing): '
            f'pip install "router-ml[train]"') from exc


def _parse_columns(pairs: Sequence[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise RouterMLError(f"--column expects FIELD=COLUMN, got {pair!r}")
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
    _need_training()
    from training.data import load_traffic

    return load_traffic(args.path, prices=args.prices, **_load_options(args))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def cmd_data_inspect(args: argparse.Namespace) -> int:
    table, report = _load(args)
    summary = table.summary()
    info: dict[str, Any] = {**summary, "rejected": report.rejected, "excluded": report.excluded,
                            "merged_duplicates": report.merged_duplicates, "format": report.format,
                            "source": report.source, "quarantine": report.quarantine,
                            "ignored_columns": report.ignored_columns}
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{report.source}  ({report.format})")
    print(f"  records: {summary['records']}   rejected: {report.rejected}   excluded: {report.excluded}"
          f"   merged duplicates: {report.merged_duplicates}")
    print(f"  outcomes: {summary['outcomes']}   preferences: {summary['preferences']}   "
          f"chat records: {summary['chat_records']}   tasks: {summary['tasks']}")
    if report.quarantine:
        print(f"  quarantine: {report.quarantine}")
    width = max(len(m) for m in table.models)
    print(f"\n  {'model':<{width}}  coverage  mean quality  mean cost (USD)")
    for m in table.models:
        print(f"  {m:<{width}}  {summary['coverage'][m]:>8.3f}  {_fmt(summary['mean_quality'][m], '>12.4f')}"
              f"  {_fmt(summary['mean_cost'][m], '>15.3e')}")
    print(f"\n  fingerprint: {summary['fingerprint']}")
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    table, report = _load(args)
    from training.data import write_jsonl, write_parquet

    out = args.out
    writer = write_parquet if out.endswith(".parquet") else write_jsonl
    writer(table, out)
    print(json.dumps({"out": out, "records": len(table), "rejected": report.rejected,
                      "excluded": report.excluded, "models": list(table.models)}))
    return 0


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"format": args.format, "exclude": args.exclude, "on_error": args.on_error,
            "quarantine": args.quarantine, "columns": _parse_columns(args.column), "split": args.split,
            "allow_pickle": args.allow_pickle}


def _setup_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="router-ml: %(message)s")


def cmd_train(args: argparse.Namespace) -> int:
    _need_training()
    _setup_logging(args.quiet)
    from training.config import load_config
    from training.pipeline import train_router

    overrides = list(args.set or [])
    if args.train_size is not None:
        overrides.append(f"data.train_size={args.train_size}")
    if args.seed is not None:
        overrides.append(f"data.seed={args.seed}")
    config = load_config(args.config, overrides)
    summary = train_router(config, args.path, out_dir=args.out, prices=args.prices, cache_dir=args.cache_dir,
                           progress=not args.quiet, register=args.register, **_load_options(args))
    if summary:  # non-zero ranks under torchrun return nothing
        test = summary["test"]
        print(f"router-ml: {summary['router']} trained on {summary['train_records']} records in "
              f"{summary['fit_seconds']} s; test AIQ {_fmt(test.get('aiq'), '.4f')}, best quality "
              f"{_fmt(test.get('best_quality'), '.4f')}; saved to {summary['out']}"
              + (f"; MLflow run {summary['run_id']}" if summary["run_id"] else "; MLflow: not logged"),
              file=sys.stderr)
        print(json.dumps(summary))
    return 0


def _print_scores(title: str, test: dict[str, Any]) -> None:
    print(title)
    rows = [("router", test)] + list(test["baselines"].items())
    two_model = test.get("apgr") is not None
    print(f"  {'':<12} {'AIQ':>8} {'savings@iso':>12} {'best quality':>13}" + (f" {'APGR':>7} {'CPT50':>7}"
                                                                                 if two_model else ""))
    for name, values in rows:
        savings = _fmt(values.get("savings_at_iso_quality"), ">12.3f")
        line = f"  {name:<12} {_fmt(values.get('aiq'), '>8.4f')} {savings} {_fmt(values.get('best_quality'), '>13.4f')}"
        if two_model:
            cpt = values.get("cpt_50")
            line += f" {_fmt(values.get('apgr'), '>7.3f')} {_fmt(None if cpt is None else 100 * cpt, '>6.1f')}%"
        print(line)


def cmd_evaluate(args: argparse.Namespace) -> int:
    _need_training()
    _setup_logging(args.quiet or args.json)
    from training.pipeline import evaluate_many

    datasets = args.path
    if len(datasets) > 1 and args.quarantine:
        raise RouterMLError("--quarantine names one file but several --data sets were given; leave it out to get "
                            "one ./<input name>.quarantine.jsonl per set")
    result = evaluate_many(args.router, datasets, prices=args.prices, include_seen=args.include_seen,
                           cache_dir=args.cache_dir, progress=not args.quiet, **_load_options(args))
    if len(datasets) == 1:  # one set: the same JSON shape as training's test report
        single = result["sets"][0]
        if args.json:
            print(json.dumps(single))
            return 0
        _print_scores(f"{single['router']} on {single['data']}: {single['scored']} prompts scored "
                      f"({single['dropped_seen']} seen in training dropped)", single["test"])
        return 0
    if args.json:
        print(json.dumps(result))
        return 0
    for one in result["sets"]:
        note = f"; not in this data: {len(one['models_missing'])} models" if one["models_missing"] else ""
        _print_scores(f"{one['data']}: {one['scored']} prompts scored ({one['dropped_seen']} seen in training "
                      f"dropped{note})", one["test"])
    _print_scores(f"macro average over {result['macro']['sets']} sets", result["macro"]["test"])
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    _need_training()
    from training.compare import compare_runs, format_table

    result = compare_runs(experiments=args.experiment or (), run_ids=args.run_id or (), filter_string=args.filter,
                          sort=args.sort, allow_mixed=args.allow_mixed, plot=None if args.no_plot else args.plot,
                          log_to_mlflow=not args.no_log)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    _need_training()
    _setup_logging(args.quiet)
    from training.sweep import format_summary, parse_seeds, run_sweep

    result = run_sweep(args.config, args.path, sets=args.set or [], seeds=parse_seeds(args.seeds), out_dir=args.out,
                       train_size=args.train_size, prices=args.prices, cache_dir=args.cache_dir,
                       progress=False, **_load_options(args))
    print(format_summary(result), file=sys.stderr)
    print(json.dumps(result))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _need_training()
    from training.export import export_router

    checkpoint = args.checkpoint
    if args.run_id:
        import mlflow

        checkpoint = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{args.run_id}/router")
    report = export_router(checkpoint, args.out, quantize=args.quantize, default_willingness=args.willingness_to_pay)
    print(json.dumps({"out": args.out, **report}))
    return 0


def _prompts_from_file(path: str) -> list[str]:
    from router_ml.messages import routed_text

    prompts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RouterMLError(f"{path}:{n}: not valid JSON ({exc.msg}); expected {{\"prompt\": ...}} or "
                                    f"{{\"messages\": [...]}} per line") from exc
            if isinstance(obj, str):
                prompts.append(obj)
            elif isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
                prompts.append(obj["prompt"])
            elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
                prompts.append(routed_text(obj["messages"]))
            else:
                raise RouterMLError(f"{path}:{n}: expected a JSON string, {{\"prompt\": ...}} or {{\"messages\": ...}}")
    return prompts


def cmd_route(args: argparse.Namespace) -> int:
    from router_ml.router import Router

    if (args.prompt is None) == (args.input is None):
        raise RouterMLError("give one prompt or --input FILE (not both)")
    router = Router.load(args.router, intra_op_threads=args.threads)
    if args.prompt is not None:
        print(json.dumps(router.route(args.prompt, willingness_to_pay=args.willingness_to_pay).to_dict()))
        return 0
    prompts = _prompts_from_file(args.input)
    for start in range(0, len(prompts), 256):
        for decision in router.route_batch(prompts[start:start + 256], willingness_to_pay=args.willingness_to_pay):
            print(json.dumps(decision.to_dict()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from router_ml.serve import run_server

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise RouterMLError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    run_server(router=args.router, providers=args.providers, host=args.host, port=args.port, api_key=api_key,
               decision_log=None if args.no_decision_log else args.decision_log, log_prompts=args.log_prompts,
               log_max_bytes=int(args.log_max_mb * (1 << 20)), log_fsync=args.log_fsync,
               max_body_bytes=args.max_body_bytes, willingness_to_pay=args.willingness_to_pay)
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from router_ml.decision_log import FEEDBACK_FIELDS, DecisionLog, FeedbackError, feedback_record

    records = []
    if args.file:
        if args.request_id or args.quality is not None or args.thumbs:
            raise RouterMLError("give --file or --request-id with --quality/--thumbs, not both")
        with open(args.file, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise FeedbackError("request_id", "each line must be an object "
                                            "{\"request_id\", \"quality\" | \"thumbs\"}")
                    unknown = set(obj) - set(FEEDBACK_FIELDS)
                    if unknown:
                        raise FeedbackError(sorted(unknown)[0], "unknown field (allowed: request_id, quality, "
                                            "thumbs, comment)")
                    records.append(feedback_record(obj.get("request_id"), quality=obj.get("quality"),
                                                   thumbs=obj.get("thumbs"), comment=obj.get("comment")))
                except json.JSONDecodeError as exc:
                    raise RouterMLError(f"{args.file}:{n}: not valid JSON ({exc.msg})") from exc
                except FeedbackError as exc:
                    raise RouterMLError(f"{args.file}:{n}: {exc}; nothing was recorded") from exc
    else:
        if not args.request_id:
            raise RouterMLError("give --request-id ID with --quality Q or --thumbs up|down, or --file FILE.jsonl")
        quality = args.quality
        records.append(feedback_record(args.request_id, quality=quality, thumbs=args.thumbs))
    with DecisionLog(args.log) as log:
        for record in records:
            log.write(record)
    print(json.dumps({"log": args.log, "recorded": len(records)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="router-ml", description="Train, export and run learned LLM routers.")
    parser.add_argument("--version", action="version", version=f"router-ml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="inspect and convert logged traffic")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    inspect = data_sub.add_parser("inspect", help="validate a data set and summarise it")
    _add_input_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print exactly one JSON object")
    inspect.set_defaults(func=cmd_data_inspect)
    convert = data_sub.add_parser("convert", help="write any supported input as canonical JSONL/Parquet")
    _add_input_options(convert)
    convert.add_argument("--out", required=True, help="output path (.jsonl or .parquet)")
    convert.set_defaults(func=cmd_data_convert)

    train = sub.add_parser("train", help="train a router on logged traffic, evaluate it, log to MLflow")
    train.add_argument("--config", help="TOML config (training/configs/*.toml); defaults when omitted")
    train.add_argument("--data", required=True, dest="path", help="training data (any supported format)")
    train.add_argument("--out", required=True, help="directory to write the trained router to")
    train.add_argument("--train-size", help="records (count) or share (fraction) for train + validation")
    train.add_argument("--seed", type=int, help="split and training seed")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    train.add_argument("--cache-dir", help="feature cache (default $ROUTER_ML_CACHE or ~/.cache/router-ml)")
    train.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    train.add_argument("--register", metavar="NAME", help="register the exported router in the MLflow model "
                       "registry under NAME (load it with models:/NAME/VERSION)")
    _add_input_options(train, positional=False)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="score a trained router on (held-out) data")
    evaluate.add_argument("--router", required=True, help="a directory written by 'router-ml train'")
    evaluate.add_argument("--data", required=True, dest="path", action="append",
                          help="data set to score on; repeat for several (per-set and macro-averaged results)")
    evaluate.add_argument("--include-seen", action="store_true",
                          help="keep prompts the router was trained on (dropped by default)")
    evaluate.add_argument("--cache-dir")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.add_argument("--json", action="store_true", help="print exactly one JSON object")
    _add_input_options(evaluate, positional=False)
    evaluate.set_defaults(func=cmd_evaluate)

    compare = sub.add_parser("compare", help="rank MLflow training runs on the same data and plot their curves")
    compare.add_argument("--experiment", action="append", help="MLflow experiment name (repeatable)")
    compare.add_argument("--run-id", action="append", help="an MLflow run id (repeatable)")
    compare.add_argument("--filter", help="MLflow filter, e.g. \"params.data_fingerprint = '...'\"")
    compare.add_argument("--sort", default="aiq", help="aiq (default), apgr, cpt_50, savings_at_iso_quality, "
                         "best_quality, latency_p50_us or fit_seconds")
    compare.add_argument("--allow-mixed", action="store_true",
                         help="rank runs trained or tested on different data or splits anyway")
    compare.add_argument("--plot", default="comparison.png", help="PNG to write (default ./comparison.png)")
    compare.add_argument("--no-plot", action="store_true", help="table only")
    compare.add_argument("--no-log", action="store_true", help="do not log the figure to MLflow")
    compare.add_argument("--json", action="store_true", help="print exactly one JSON object")
    compare.set_defaults(func=cmd_compare)

    sweep = sub.add_parser("sweep", help="train a grid of settings x seeds as MLflow child runs and summarise")
    sweep.add_argument("--config", help="TOML config the grid starts from")
    sweep.add_argument("--data", required=True, dest="path")
    sweep.add_argument("--set", action="append", metavar="SECTION.KEY=V1,V2,...",
                       help="values to sweep (repeatable: the grid is every combination)")
    sweep.add_argument("--seeds", default="0", help="seeds, e.g. 0-4 or 0,3,7 (default 0)")
    sweep.add_argument("--train-size", help="records (count) or share (fraction) for train + validation")
    sweep.add_argument("--out", required=True, help="directory for the runs' routers and sweep_summary.json")
    sweep.add_argument("--cache-dir")
    sweep.add_argument("--quiet", action="store_true")
    _add_input_options(sweep, positional=False)
    sweep.set_defaults(func=cmd_sweep)

    export = sub.add_parser("export", help="export a trained router to an ONNX artifact directory")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a directory written by 'router-ml train'")
    source.add_argument("--run-id", help="an MLflow run whose 'router' artifact to export")
    export.add_argument("--out", required=True, help="artifact directory to write")
    export.add_argument("--quantize", choices=("int8",), help="dynamic per-channel int8 weights")
    export.add_argument("--willingness-to-pay", type=float, help="default knob (USD per unit of quality; "
                        "default: best predicted quality)")
    export.set_defaults(func=cmd_export)

    route = sub.add_parser("route", help="route prompts with an exported router (prints JSON decisions)")
    route.add_argument("prompt", nargs="?", help="one prompt")
    route.add_argument("--router", required=True, help="artifact directory, or runs:/... / models:/... URI")
    route.add_argument("--input", help="JSONL file of prompts ({\"prompt\"} or {\"messages\"} per line)")
    route.add_argument("--willingness-to-pay", type=float, help="USD per unit of quality (default: the artifact's)")
    route.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    route.set_defaults(func=cmd_route)

    serve = sub.add_parser("serve", help="OpenAI-compatible proxy: route, call the provider, fall back, log")
    serve.add_argument("--router", required=True, help="artifact directory, or runs:/... / models:/... URI")
    serve.add_argument("--providers", required=True, help="provider catalog (TOML): base URLs, key env names, "
                       "prices, fallbacks, rules")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs "
                       "--api-key-env)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the key clients must "
                       "send as 'Authorization: Bearer KEY'")
    serve.add_argument("--decision-log", default="decisions.jsonl", metavar="FILE",
                       help="JSONL decision log (default ./decisions.jsonl)")
    serve.add_argument("--no-decision-log", action="store_true", help="keep no decision log")
    serve.add_argument("--log-prompts", action="store_true", help="write the routed prompt text into the decision "
                       "log (needed to train on it)")
    serve.add_argument("--log-max-mb", type=float, default=64.0, help="rotate the decision log at this size")
    serve.add_argument("--log-fsync", action="store_true", help="fsync the decision log after every record")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    serve.add_argument("--willingness-to-pay", type=float, help="default knob (USD per unit of quality; "
                       "default: the artifact's)")
    serve.set_defaults(func=cmd_serve)

    feedback = sub.add_parser("feedback", help="append quality feedback for logged requests to a decision log")
    feedback.add_argument("--log", required=True, help="the decision log (JSONL) written by 'router-ml serve'")
    feedback.add_argument("--request-id", help="the request id (x-router-ml-request-id / router_ml.request_id)")
    rating = feedback.add_mutually_exclusive_group()
    rating.add_argument("--quality", type=float, help="quality in [0, 1]")
    rating.add_argument("--thumbs", choices=("up", "down"), help="up = 1, down = 0")
    feedback.add_argument("--file", help="JSONL of {\"request_id\", \"quality\" | \"thumbs\"} to join into the log")
    feedback.set_defaults(func=cmd_feedback)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RouterMLError as exc:
        print(f"router-ml: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
