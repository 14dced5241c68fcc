"""The ``router-ml`` command line.

This module owns the runtime commands (``route``, ``serve``, ``feedback``). Other packages add
command groups through the ``router_ml.commands`` entry point group: each entry point is a
function that takes the ``router-ml`` subparsers and adds its commands. The training commands
(``data``, ``train``, ``evaluate``, ``compare``, ``sweep``, ``export``) come that way from
``training.cli``, so the runtime never imports the training package and one console script still
offers every command. Subcommands import what they need when they run, so ``router-ml route``
stays as light as the runtime.
Exit codes: 0 success, 1 a router-ml error (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from router_ml import __version__
from router_ml._json import finite
from router_ml.errors import RouterMLError, UsageError

__all__ = ["COMMAND_GROUP", "RUNTIME_COMMANDS", "add_renamed_option", "build_parser", "main"]

#: the entry point group other packages register command groups under
COMMAND_GROUP = "router_ml.commands"
#: the commands this module defines; running one of them skips entry point discovery
#: (importlib.metadata and the groups' parsers: about 60 ms measured here)
RUNTIME_COMMANDS = ("route", "serve", "feedback")


class _RenamedOption(argparse.Action):
    """The old spelling of a renamed option: stores into the new option's dest and says so on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        command = parser.prog.removeprefix("router-ml ")
        print(f"router-ml: warning: '{command} {option_string}' is deprecated and will be removed; "
              f"use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed_option(parser: argparse.ArgumentParser, new: str, *, old: str, required: bool = False,
                       **kwargs: Any) -> None:
    """Add option ``new`` and keep its former spelling ``old`` working, hidden from ``--help``.

    ``old`` prints a deprecation warning on stderr when used. The two are mutually exclusive, and
    a required option is satisfied by either, so scripts written for ``old`` keep running while
    the help shows only ``new`` (exactly where ``old`` used to be).

    >>> add_renamed_option(parser, "--artifact", old="--router", required=True, help="artifact directory")
    """
    group = parser.add_mutually_exclusive_group(required=required)
    action = group.add_argument(new, **kwargs)
    group.add_argument(old, dest=action.dest, action=_RenamedOption, new=new, help=argparse.SUPPRESS)


def bounded(cast: type, low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` that casts ``cast`` (int or float) and keeps ``low <= value <= high``; NaN is
    refused, infinity only where ``high`` is None. A value out of range is a usage error naming the flag
    (exit code 2), not a traceback from deep inside the command.

    >>> parser.add_argument("--n-boot", type=bounded(int, 0))  # doctest: +SKIP
    """
    kind = "a whole number" if cast is int else "a number"
    rule = f"{kind} >= {low:g}" + ("" if high is None else f" and <= {high:g}")

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}") from None
        if value != value or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {rule}, got {text!r}")
        return value

    return parse


def _log_path(text: str) -> str:
    """``--decision-log``: a path; an empty one (an unset shell variable) is a usage error, not "no log"."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a file path, got {text!r} (an unset shell variable?); "
                                         "--no-decision-log keeps no log")
    return text


def per_cpu_limit() -> int:
    """The most worker processes or onnxruntime threads a command starts: 4 per CPU, at least 8 (more only
    contend for the same cores; a typo such as 100000 would exhaust the machine's memory first)."""
    return max(8, 4 * (os.cpu_count() or 1))


#: the knob on the command line: USD per unit of quality, >= 0 ("inf": the best quality whatever it costs)
KNOB = bounded(float, 0)


def print_json(obj: Any) -> None:
    """Print one JSON object on a line, strict JSON: a NaN or infinity (a metric with no value) is null."""
    print(json.dumps(finite(obj), allow_nan=False))


def _open_input(path: str, what: str):
    """``path`` opened for reading text (``-``: standard input); a missing or unreadable file is a
    :class:`RouterMLError` naming it and ``what`` it was meant to be."""
    if path == "-":
        return contextlib.nullcontext(sys.stdin)
    try:
        return open(path, encoding="utf-8-sig")  # a byte-order mark in front is no JSON
    except OSError as exc:
        raise RouterMLError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _lines(path: str, what: str) -> Iterator[tuple[int, str]]:
    """The non-blank lines of ``path`` (``-``: standard input) with their numbers; a file that is not UTF-8
    text (a UTF-16 export, say) is a :class:`RouterMLError` naming it, not a decoding traceback."""
    with _open_input(path, what) as f:
        try:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    yield n, line
        except UnicodeDecodeError as exc:
            shown = "standard input" if path == "-" else path
            raise RouterMLError(f"{what} {shown}: not UTF-8 text ({exc.reason}); save it as UTF-8 (a UTF-16 export "
                                "from a spreadsheet or PowerShell is a common cause)") from None


def _json_line(line: str, where: str, expected: str = "") -> Any:
    """One JSON line of an input file; not JSON (or nested past what the parser follows) is a
    :class:`RouterMLError` naming ``where``."""
    from router_ml import _json

    try:
        return _json.loads(line)
    except ValueError as exc:
        raise RouterMLError(f"{where}: not valid JSON ({getattr(exc, 'msg', exc)}){expected}") from None


def _prompts_from_file(path: str) -> list[str]:
    from router_ml.messages import message_problem, routed_text

    prompts = []
    for n, line in _lines(path, "the prompts file (--input)"):
        obj = _json_line(line, f"{path}:{n}", "; expected {\"prompt\": ...} or {\"messages\": [...]} per line")
        if isinstance(obj, str):
            prompts.append(obj)
        elif isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
            prompts.append(obj["prompt"])
        elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            problem = message_problem(obj["messages"])  # the proxy's rule: a user turn without content is refused
            if problem is not None:
                raise RouterMLError(f"{path}:{n}: field '{problem[0]}': {problem[1]}")
            prompts.append(routed_text(obj["messages"]))
        else:
            raise RouterMLError(f"{path}:{n}: expected a JSON string, {{\"prompt\": ...}} or {{\"messages\": ...}}")
    return prompts


def add_exploration_options(parser: argparse.ArgumentParser) -> None:
    """The exploration flags ``route`` and ``serve`` share (:mod:`router_ml.exploration`); off by default."""
    group = parser.add_argument_group("exploration (off unless --explore-rate is given)")
    group.add_argument("--explore-rate", type=float, metavar="R",
                       help="probability in [0, 1] of leaving the greedy choice to explore")
    group.add_argument("--explore-policy", choices=("epsilon", "softmax", "curve"),
                       help="explore uniformly over eligible models (epsilon, default), by a softmax of utilities, "
                            "or along the router's cost-quality curve (curve: the choice at a random knob)")
    group.add_argument("--explore-seed", type=int, metavar="S", help="RNG seed (reproducible single-threaded draws)")
    group.add_argument("--explore-max-cost", type=float, metavar="USD",
                       help="never explore a model expected to cost more than this on the prompt")
    group.add_argument("--explore-exclude", action="append", default=[], metavar="MODEL",
                       help="never explore this model (repeatable)")
    group.add_argument("--explore-temperature", type=float, metavar="T",
                       help="softmax: temperature in units of utility (default 0.1)")
    group.add_argument("--explore-uniform-share", type=float, metavar="S",
                       help="curve: share of explored decisions drawn uniformly over eligible models (default 0.25)")


def exploration_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~router_ml.exploration.Exploration` the flags describe, or None; errors name the flag."""
    from router_ml.exploration import Exploration

    given = (("--explore-policy", args.explore_policy), ("--explore-seed", args.explore_seed),
             ("--explore-max-cost", args.explore_max_cost), ("--explore-exclude", args.explore_exclude),
             ("--explore-temperature", args.explore_temperature),
             ("--explore-uniform-share", args.explore_uniform_share))
    if args.explore_rate is None:
        others = [f for f, v in given if v is not None and v != []]
        if others:
            raise UsageError(f"{', '.join(others)} given without --explore-rate; add --explore-rate R to explore")
        return None
    policy = args.explore_policy or "epsilon"
    for flag, value, applies in (("--explore-temperature", args.explore_temperature, "softmax"),
                                 ("--explore-uniform-share", args.explore_uniform_share, "curve")):
        if value is not None and policy != applies:
            raise UsageError(f"{flag} applies to --explore-policy {applies} only, not {policy}; drop it or add "
                                f"--explore-policy {applies}")
    shape = {"temperature": args.explore_temperature, "uniform_share": args.explore_uniform_share}
    try:
        return Exploration(policy, rate=args.explore_rate, seed=args.explore_seed,
                           max_cost_usd=args.explore_max_cost, exclude=tuple(args.explore_exclude),
                           **{k: v for k, v in shape.items() if v is not None})  # else Exploration's defaults
    except ValueError as exc:  # the message names the field: name the flag that sets it
        flags = {"kind": "--explore-policy", "rate": "--explore-rate", "seed": "--explore-seed",
                 "max_cost_usd": "--explore-max-cost", "exclude": "--explore-exclude",
                 "temperature": "--explore-temperature", "uniform_share": "--explore-uniform-share"}
        flag = next((f for field, f in flags.items() if f"exploration {field} " in str(exc)), "--explore-*")
        raise RouterMLError(f"{flag}: {exc}") from None


def cmd_route(args: argparse.Namespace) -> int:
    from router_ml.router import Router

    if args.prompt is None and args.input is None:
        raise UsageError('give a prompt to route ("...") or --input FILE.jsonl (- reads standard input)')
    if args.prompt is not None and args.input is not None:
        raise UsageError("give one prompt or --input FILE, not both")
    exploration = exploration_from_args(args)
    prompts = None if args.input is None else _prompts_from_file(args.input)  # a bad file fails before the load
    router = Router.load(args.artifact, intra_op_threads=args.threads)
    try:
        router = router.with_exploration(exploration)
    except ValueError as exc:
        raise RouterMLError(f"--explore-exclude: {exc}") from None
    if prompts is None:
        print_json(router.route(args.prompt, willingness_to_pay=args.willingness_to_pay).to_dict())
        return 0
    for start in range(0, len(prompts), 256):
        for decision in router.route_batch(prompts[start:start + 256], willingness_to_pay=args.willingness_to_pay):
            print_json(decision.to_dict())
    return 0


def _key_from_env(flag: str, name: str | None) -> str | None:
    import os

    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise RouterMLError(f"{flag} {name}: that environment variable is not set")
    return key


def serve_options(args: argparse.Namespace, served: str | None = None) -> dict[str, Any]:
    """``run_server``'s keyword arguments from the ``serve`` flags (the supervisor and each worker parse the
    same command line); errors name the flag. ``served``: a worker's record of the variants its siblings serve
    (:attr:`router_ml.variants.VariantSource.served`)."""
    from router_ml.variants import VariantSource, parse_variant

    given = [f for f, v in (("--artifact", args.artifact), ("--variant", args.variant), ("--variants", args.variants))
             if v]
    if len(given) != 1:
        raise UsageError("give exactly one of --artifact DIR, --variant NAME=PATH:WEIGHT (repeatable) or "
                            f"--variants FILE.toml (got {', '.join(given) or 'none'})")
    variants = None
    if args.variant:
        variants = VariantSource([parse_variant(v) for v in args.variant], served=served)
    elif args.variants:
        variants = VariantSource(file=args.variants, served=served)
    if args.workers > per_cpu_limit():  # 100000 once forked until the machine ran out of memory
        raise UsageError(f"--workers {args.workers}: at most {per_cpu_limit()} on this machine (4 per CPU, "
                            f"{os.cpu_count()} CPUs); run more replicas behind a load balancer instead")
    if bool(args.cascade) != bool(args.scorer):
        raise UsageError("--cascade POLICY.json and --scorer DIR go together: the policy was fitted on that "
                            "answer scorer's scores ('router-ml cascade evaluate --out DIR' writes DIR/policy.json)")
    api_key = _key_from_env("--api-key-env", args.api_key_env)
    admin_key = _key_from_env("--admin-key-env", args.admin_key_env)
    if admin_key is not None and admin_key == api_key:  # every client could then reload the server
        same = "is the same variable as" if args.admin_key_env == args.api_key_env else "holds the same key as"
        raise UsageError(f"--admin-key-env {args.admin_key_env} {same} --api-key-env {args.api_key_env}, so every "
                            "client could call /admin/reload; give the admin a key of its own")
    return dict(router=args.artifact, variants=variants, providers=args.providers, host=args.host, port=args.port,
                api_key=api_key, admin_key=admin_key,
                decision_log=None if args.no_decision_log else args.decision_log, log_prompts=args.log_prompts,
                log_max_bytes=max(1024, int(args.log_max_mb * (1 << 20))), log_fsync=args.log_fsync,
                max_body_bytes=args.max_body_bytes, willingness_to_pay=args.willingness_to_pay,
                exploration=exploration_from_args(args), drain_s=args.drain_seconds,
                shutdown_timeout_s=args.shutdown_timeout, cascade=args.cascade, scorer=args.scorer)


def cmd_serve(args: argparse.Namespace) -> int:
    options = serve_options(args)
    if args.workers > 1:
        from router_ml.workers import supervise

        argv = list(getattr(args, "argv", None) or sys.argv[1:])
        return supervise(argv[argv.index("serve") + 1:], args.workers, options)
    from router_ml.serve import run_server

    run_server(**options)
    return 0


_LOGGED_ID = re.compile(rb'"request_id"\s*:\s*"([^"\\]{1,200})"')


def _unknown_ids(log: str, ids: set[str]) -> set[str]:
    """Those of ``ids`` no decision line of the log at ``log`` holds (every worker's and rotated file read)."""
    from router_ml import _json
    from router_ml.decision_log import log_files

    missing = set(ids)
    for file in log_files(log):
        with open(file, "rb") as f:
            for raw in f:
                m = _LOGGED_ID.search(raw)  # parse only the lines that name a wanted id
                if m is None or m.group(1).decode("utf-8", "replace") not in missing:
                    continue
                try:
                    obj = _json.loads(raw)
                except ValueError:
                    continue
                if isinstance(obj, dict) and obj.get("type") == "decision":
                    missing.discard(obj.get("request_id"))
                    if not missing:
                        return missing
    return missing


def cmd_feedback(args: argparse.Namespace) -> int:
    from router_ml.decision_log import (
        DecisionLog,
        FeedbackError,
        check_is_log,
        feedback_from,
        feedback_record,
        log_files,
    )

    records, where = [], {}
    if args.file:
        if args.request_id or args.quality is not None or args.thumbs or args.model:
            raise UsageError("give --file or --request-id with --quality/--thumbs (and --model), not both")
        for n, line in _lines(args.file, "the feedback file (--file)"):
            try:  # the same fields and checks as POST /v1/feedback
                records.append(feedback_from(_json_line(line, f"{args.file}:{n}")))
            except FeedbackError as exc:
                raise RouterMLError(f"{args.file}:{n}: {exc}; nothing was recorded") from exc
            where.setdefault(records[-1]["request_id"], f"{args.file}:{n}")
    else:
        if not args.request_id:
            raise UsageError("give --request-id ID with --quality Q or --thumbs up|down, or --file FILE.jsonl")
        records.append(feedback_record(args.request_id, quality=args.quality, thumbs=args.thumbs, model=args.model))
        where[args.request_id] = "--request-id"
    if not log_files(args.log):  # a mistyped path would start a log of feedback that joins nothing
        raise RouterMLError(f"--log {args.log}: no decision log there (nor a worker's or rotated file of it); "
                            "give the --decision-log path 'router-ml serve' writes; nothing was recorded")
    check_is_log(args.log)
    # feedback for a request the log does not hold would join nothing and stop a strict read of the log later
    unknown = _unknown_ids(args.log, set(where))
    if unknown:
        shown = ", ".join(f"{where[i]}: {i}" for i in [i for i in where if i in unknown][:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise RouterMLError(f"--log {args.log}: no decision for request id(s) {shown}{more} (in the log, its rotated "
                            "files or its workers' files); check the ids (x-router-ml-request-id) and the --log "
                            "path; nothing was recorded")
    with DecisionLog(args.log, exclusive=False) as log:  # beside a live server: one whole-line write per record
        for record in records:
            log.write(record)
    print_json({"log": args.log, "recorded": len(records)})
    return 0


def _add_command_groups(sub: argparse._SubParsersAction) -> None:
    """Let every installed ``router_ml.commands`` entry point add its commands.

    Every distribution on the path is asked, and each entry point name is taken once, the first
    on ``sys.path`` winning. (``entry_points()`` keeps only the first copy of each distribution
    name, so a stale copy earlier on the path - an old ``router_ml.egg-info`` in a checkout on
    ``PYTHONPATH`` - would hide the installed one's commands.) A group that fails to load is
    reported on stderr and skipped, so one broken plugin does not take ``route``/``serve`` down.
    """
    from importlib.metadata import distributions

    seen = set()
    for entry in (e for dist in distributions() for e in dist.entry_points.select(group=COMMAND_GROUP)):
        if entry.name in seen:
            continue
        seen.add(entry.name)
        try:
            entry.load()(sub)
        except Exception as exc:  # a third-party plugin may raise anything
            print(f"router-ml: warning: command group {entry.name!r} ({entry.value}) could not be loaded: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)


def build_parser(*, command_groups: bool = True) -> argparse.ArgumentParser:
    """The ``router-ml`` parser; ``command_groups=False`` leaves out the entry-point commands."""
    parser = argparse.ArgumentParser(prog="router-ml", description="Train, export and run learned LLM routers.")
    parser.add_argument("--version", action="version", version=f"router-ml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command_groups:  # first, so that `router-ml --help` lists training before the runtime, as it always has
        _add_command_groups(sub)

    route = sub.add_parser("route", help="route prompts with an exported router (prints JSON decisions)")
    route.add_argument("prompt", nargs="?", help="one prompt")
    add_renamed_option(route, "--artifact", old="--router", required=True,
                       help="artifact directory, or runs:/... / models:/... URI")
    route.add_argument("--input", help="JSONL file of prompts ({\"prompt\"} or {\"messages\"} per line; "
                       "- reads standard input)")
    route.add_argument("--willingness-to-pay", type=KNOB, help="USD per unit of quality (default: the artifact's)")
    route.add_argument("--threads", type=bounded(int, 0, per_cpu_limit()), default=1,
                       help="onnxruntime intra-op threads (default 1; 0: onnxruntime's own default; at most 4 per "
                            "CPU)")
    add_exploration_options(route)
    route.set_defaults(func=cmd_route)

    serve = sub.add_parser("serve", help="OpenAI-compatible proxy: route, call the provider, fall back, log")
    add_renamed_option(serve, "--artifact", old="--router",
                       help="artifact directory, or runs:/... / models:/... URI (one router; or --variant/--variants)")
    serve.add_argument("--variant", action="append", metavar="NAME=PATH:WEIGHT",
                       help="a router variant and its traffic weight (repeatable: an A/B split or a canary)")
    serve.add_argument("--variants", metavar="FILE", help="TOML file of [variants.NAME] tables (artifact, weight); "
                       "re-read on reload")
    serve.add_argument("--providers", required=True, help="provider catalog (TOML): base URLs, key env names, "
                       "prices, fallbacks, rules")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; one that is not "
                       "loopback needs --api-key-env)")
    serve.add_argument("--port", type=bounded(int, 0, 65535), default=8000,
                       help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the key clients must "
                       "send as 'Authorization: Bearer KEY'")
    serve.add_argument("--decision-log", type=_log_path, default="decisions.jsonl", metavar="FILE",
                       help="JSONL decision log (default ./decisions.jsonl; worker k of --workers N writes "
                       "decisions.wk.jsonl beside it, and readers take this path for all of them)")
    serve.add_argument("--no-decision-log", action="store_true", help="keep no decision log")
    serve.add_argument("--log-prompts", action="store_true", help="write the routed prompt text and the answer's "
                       "text into the decision log (needed to train a router, or an answer scorer, on it)")
    serve.add_argument("--log-max-mb", type=bounded(float, 0.001, 1_000_000), default=64.0,
                       help="rotate the decision log at this size")
    serve.add_argument("--log-fsync", action="store_true", help="fsync the decision log after every record")
    serve.add_argument("--max-body-bytes", type=bounded(int, 1), default=1 << 20,
                       help="largest request body (default 1 MiB)")
    serve.add_argument("--willingness-to-pay", type=KNOB, help="default knob (USD per unit of quality; "
                       "default: the artifact's)")
    group = serve.add_argument_group("production (workers, shutdown, hot swap)")
    group.add_argument("--workers", type=bounded(int, 1), default=1, metavar="N",
                       help="worker processes sharing the port, supervised and restarted (default 1: no supervisor)")
    group.add_argument("--drain-seconds", type=bounded(float, 0), default=0.0, metavar="S",
                       help="on SIGTERM, report not "
                       "ready on /ready and keep serving this long before stopping (default 0)")
    group.add_argument("--shutdown-timeout", type=bounded(float, 0), default=30.0, metavar="S",
                       help="then wait this long for "
                       "requests in flight before cancelling them (default 30)")
    group.add_argument("--admin-key-env", metavar="NAME", help="environment variable holding the key "
                       "POST /admin/reload needs (off without it; SIGHUP reloads too)")
    group = serve.add_argument_group("cascade (off unless --cascade is given)")
    group.add_argument("--cascade", metavar="POLICY.json", help="answer routed requests by this cascade policy "
                       "('router-ml cascade evaluate --out DIR' writes DIR/policy.json): cheap model first, its answer "
                       "scored, escalation when the score is low; streaming requests are routed without it")
    group.add_argument("--scorer", metavar="DIR", help="the answer-scorer artifact the policy was fitted with")
    add_exploration_options(serve)
    serve.set_defaults(func=cmd_serve)

    feedback = sub.add_parser("feedback", help="append quality feedback for logged requests to a decision log")
    feedback.add_argument("--log", required=True, help="the decision log (JSONL) written by 'router-ml serve'")
    feedback.add_argument("--request-id", help="the request id (x-router-ml-request-id / router_ml.request_id)")
    rating = feedback.add_mutually_exclusive_group()
    rating.add_argument("--quality", type=float, help="quality in [0, 1]")
    rating.add_argument("--thumbs", choices=("up", "down"), help="up = 1, down = 0")
    feedback.add_argument("--model", help="with --request-id: rate this model's answer within the request (a cascade "
                          "holds one per model it called); default: the answer the request returned")
    feedback.add_argument("--file", help="JSONL of {\"request_id\", \"quality\" | \"thumbs\", \"model\"?, "
                          "\"comment\"?} to join into the log")
    feedback.set_defaults(func=cmd_feedback)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    if not faulthandler.is_enabled():  # a crash inside a native library prints every thread's Python stack
        with contextlib.suppress(Exception):  # (stderr without a file descriptor, e.g. captured: left off)
            faulthandler.enable()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_groups=not argv or argv[0] not in RUNTIME_COMMANDS)
    args = parser.parse_args(argv)
    args.argv = argv  # `serve --workers N` starts its workers with the same command line
    try:
        return args.func(args)
    except UsageError as exc:  # flags that do not go together: bad usage, as argparse's own refusals
        print(f"router-ml: error: {exc}", file=sys.stderr)
        return 2
    except RouterMLError as exc:
        print(f"router-ml: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except OSError as exc:  # a file a command was pointed at: its path and the reason, not a traceback
        print(f"router-ml: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
