"""Reading a decision log (``router-ml serve`` / ``RoutedClient``) as logged traffic.

A decision log (:mod:`router_ml.decision_log`) holds one ``decision`` line per routed request and
``feedback`` lines that rate requests by id. This reader joins them: each answered request with
feedback becomes one canonical record - ``sample_id`` = request id, ``prompt`` = the logged routed
text, one outcome for the model that answered (``quality`` from the feedback - thumbs up 1, down 0,
or the score; ``cost``, tokens and latency from the log; the answer's ``response`` text when the
log carries it, as ``--log-prompts`` makes it) - and everything else is rejected with a
reason, never dropped silently:

- ``status``: the request failed or its stream broke off (no complete answer to rate);
- ``feedback``: no feedback for the request (yet);
- ``prompt``: the prompt text was not logged (start ``router-ml serve --log-prompts``);
- feedback for a request id the log does not hold, malformed lines, a truncated last line.

The line's ``propensity`` (the probability with which an exploring router chose ``chosen``; the
runtime writes ``1.0`` when exploration is off) goes on the outcome. A line without it (older logs)
gives propensity ``None``, unknown. A request that a fallback answered (``model`` differs from
``chosen``) is rejected when it carries a propensity: the outcome observed is not that of the
action the logging policy took, so weighting it by that action's propensity would be wrong.

Strict mode stops at the first of these; ``on_error="quarantine"`` sets them aside and counts them.
The last feedback for a request wins. Rotated files (``<stem>.N<suffix>``) and the files of every worker of
``router-ml serve --workers N`` are read too, merged in time order (:func:`router_ml.decision_log.merged_lines`).

Every line's ``format_version`` is checked first (:func:`router_ml.decision_log.line_version`; a line
without one was written before the field existed and is version 1): a line newer than this release
reads stops the read in every mode, naming file:line, since quarantining it would discard a whole
log that only needs a newer router-ml.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from router_ml.decision_log import (
    VERSION_FIELD,
    FeedbackError,
    NewerFormatError,
    feedback_from,
    line_version,
    log_files,
    merged_lines,
)
from router_ml.errors import DataError
from router_ml.pricing import PriceCatalog
from training.data._rows import Row, _convert
from training.data.schema import Record, RecordError, build_record, coerce_propensity

__all__ = ["is_decision_log", "read_decisions"]

_TYPES = ("decision", "feedback")


def is_decision_log(path: Path) -> bool:
    """True when the first non-blank line of ``path`` is a decision-log record."""
    try:
        # the file itself decides; an empty one (worker 0 of several, no request yet): the other workers' files
        for file in [path, *(f for f in log_files(path) if f != path)]:
            with open(file, "rb") as f:
                for line in f:
                    if line.strip():
                        obj = json.loads(line)
                        return isinstance(obj, dict) and obj.get("type") in _TYPES and "request_id" in obj
    except (OSError, ValueError):
        return False
    return False


def _lines(path: Path) -> Iterator[tuple[str, bytes, bool]]:
    for file, n, raw in merged_lines(path):  # every worker's files, in time order
        if raw.strip():
            yield f"{file}:{n}", raw, raw.endswith(b"\n")


def _parse(raw: bytes, complete: bool, location: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        if not complete:
            raise RecordError(None, "truncated last line (no newline and not valid JSON); the writer was "
                              "killed mid-record - opening the log with router-ml moves it aside") from None
        raise RecordError(None, f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or obj.get("type") not in _TYPES:
        raise RecordError("type", "a decision-log line must be an object with type \"decision\" or \"feedback\"")
    try:
        line_version(obj)
    except NewerFormatError as exc:  # not one bad line: the reader is too old for the log
        raise DataError(str(exc), location=location, field=VERSION_FIELD) from None
    except ValueError as exc:
        raise RecordError(VERSION_FIELD, str(exc)) from None
    return obj


def _feedback(obj: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return feedback_from(obj, logged=True)
    except FeedbackError as exc:
        raise RecordError(exc.field, str(exc).split(": ", 1)[-1]) from None


def _record(obj: Mapping[str, Any], feedback: Mapping[str, tuple[float, str]],
            prices: PriceCatalog | None) -> Record:
    request_id = obj.get("request_id")
    status = obj.get("status")
    if status != "ok":
        raise RecordError("status", f"request {request_id} ended with status {status!r} "
                          f"({obj.get('error') or 'no error text'}); no complete answer to learn from")
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise RecordError("model", "an answered request must name the model that answered")
    if request_id not in feedback:
        raise RecordError("feedback", f"no feedback for request {request_id} yet; post it to /v1/feedback or join "
                          f"a file with 'router-ml feedback --log LOG --file FILE'")
    if not isinstance(obj.get("prompt"), str):
        raise RecordError("prompt", "the prompt text was not logged (only its hash); restart 'router-ml serve' "
                          "with --log-prompts to collect training data")
    propensity = obj.get("propensity")
    if propensity is not None:
        propensity = coerce_propensity(propensity, "propensity")
        chosen = obj.get("chosen")
        if isinstance(chosen, str) and chosen != model:
            raise RecordError("propensity", f"request {request_id} was answered by fallback {model!r}, not the chosen "
                              f"{chosen!r}; its outcome is not a draw of the logging policy's choice")
    quality, where = feedback[request_id]
    outcome = {"quality": quality, "cost": obj.get("cost_usd"), "input_tokens": obj.get("input_tokens"),
               "output_tokens": obj.get("output_tokens"), "latency_s": obj.get("latency_s"),
               "propensity": propensity}
    if obj.get("response") is not None:  # logged with --log-prompts: what an answer scorer learns from
        outcome["response"] = obj["response"]
    fallbacks = obj.get("fallbacks") or []
    metadata = {"router_ml": {
        "chosen": obj.get("chosen"), "rule": obj.get("rule"), "willingness_to_pay": obj.get("willingness_to_pay"),
        "provider_model": obj.get("provider_model"), "usage_estimated": obj.get("usage_estimated"),
        "fallbacks": [f.get("upstream") or f.get("model") for f in fallbacks if isinstance(f, Mapping)],
        "feedback": where}}
    return build_record(prompt=obj["prompt"], outcomes={model: {k: v for k, v in outcome.items() if v is not None}},
                        sample_id=request_id, timestamp=obj.get("time"), metadata=metadata, prices=prices)


def read_decisions(path: Path, *, prices: PriceCatalog | None = None, **_: Any) -> Iterator[Row]:
    """Read a decision log (and its rotated files) as canonical records; see the module doc."""
    path = Path(path)
    feedback: dict[str, tuple[float, str]] = {}
    decided: set[str] = set()
    for location, raw, complete in _lines(path):  # pass 1: who was decided, what was rated
        try:
            obj = _parse(raw, complete, location)
            if obj["type"] == "feedback":
                fb = _feedback(obj)
                feedback[fb["request_id"]] = (fb["quality"], location)
            elif isinstance(obj.get("request_id"), str):
                decided.add(obj["request_id"])
        except RecordError:
            pass  # reported in pass 2
    seen_any = False
    for location, raw, complete in _lines(path):
        seen_any = True
        text = raw.decode("utf-8", errors="backslashreplace").rstrip("\n")
        try:
            obj = _parse(raw, complete, location)
            if obj["type"] == "feedback":
                fb = _feedback(obj)
                if fb["request_id"] not in decided:
                    raise RecordError("request_id", f"feedback for request {fb['request_id']}, which this log does "
                                      f"not hold (a typo, or its decision was rotated away)")
                continue
        except RecordError as exc:
            yield Row(location, text, error=exc)
            continue
        yield _convert(location, text, lambda obj=obj: _record(obj, feedback, prices))
    if not seen_any:
        raise DataError("the decision log is empty (no records)", location=str(path))
