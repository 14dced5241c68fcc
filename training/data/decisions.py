"""Reading a decision log (``router-ml serve`` / ``RoutedClient``) as logged traffic.

A decision log (:mod:`router_ml.decision_log`) holds one ``decision`` line per routed request and
``feedback`` lines that rate requests by id. This reader joins them: each answered request with
feedback becomes one canonical record - ``sample_id`` = request id, ``prompt`` = the logged routed
text, one outcome for the model that answered (a cascade: one per rated answer, below) - ``quality``
from the feedback (thumbs up 1, down 0, or the score), ``cost``, tokens and latency from the log, the
answer's ``response`` text when the log carries it, as ``--log-prompts`` makes it - and everything
else is rejected with a reason, never dropped silently:

- ``status``: the request failed or its stream broke off (no complete answer to rate);
- ``feedback``: no feedback for the request (yet);
- ``prompt``: the prompt text was not logged (start ``router-ml serve --log-prompts``);
- ``cascade...``: a malformed ``cascade`` object (the field names the attempt, e.g.
  ``cascade.attempts[1].model``, or ``cascade.answered``);
- feedback for a request id the log does not hold (``request_id``) or naming a ``model`` whose
  answer the request does not hold (``model``), malformed lines, a truncated last line.

Feedback without ``model`` rates the answer the request returned (the line's ``model``); feedback
with ``model`` rates that model's answer, and wins over the request's rating for the same model.

Cascades: a line with ``cascade.attempts`` (:mod:`router_ml.decision_log`) holds one call per model
the cascade made - a cheap model, then, when the answer scorer did not accept its answer, a stronger
one. It becomes one record with one outcome per attempt that answered (``status`` ``"ok"``) and is
rated, each with its own attempt's cost, tokens, latency and ``response`` (the line's top-level
``cost_usd`` and tokens are the sums over every call, and its ``response`` the returned answer only).
A failed attempt gives no outcome; attempts that answered but are unrated are listed in the
metadata's ``router_ml.unrated`` (a request with no rated answer at all is rejected for
``feedback``), and ``router_ml.cascade`` keeps ``policy``, the ``answered`` model and the scorer's
``scores`` per model (``router_ml.feedback``, the rating's file:line on an ordinary record, is
``{model: file:line}`` on a cascade's). A line with ``"cascade": {"skipped": ...}`` (routed without one) reads as any
other line.

The line's ``propensity`` (the probability with which an exploring router chose ``chosen``; the
runtime writes ``1.0`` when exploration is off) goes on the outcome of the policy's draw: the one
answer of an ordinary line, the *first* attempt of a cascade (its ``chosen``, called for every
prompt the policy sent there). A line without it (older logs) gives propensity ``None``, unknown.
An escalated attempt's outcome carries no propensity: whether the stronger model was called was
decided after seeing the first answer, so it is not a draw of a routing policy given the prompt, and
no probability of it was logged. A line carrying a propensity whose draw has no outcome is rejected
(``propensity``): a request that a fallback answered (``model`` differs from ``chosen``) - the
outcome observed is not that of the action the logging policy took, so weighting it by that
action's propensity would be wrong - and, the same way, a cascade whose only rated answers are
escalations (rate the first answer too to keep it). This keeps the loader's rule that a logged
record with one outcome carries its propensity (:mod:`training.data.loader`): from a line with a
propensity, a cascade record always holds its first answer's outcome with it, so a log mixing
ordinary and cascade lines loads and trains (an escalation's cell weighs 1 in the loss). Off-policy
evaluation scores the logged draws alone: an escalation's outcome, observed beside the first call's
without a propensity, is left out of the estimate and counted (:class:`training.evaluation.HeldOut`,
``unlogged_outcomes``).

Strict mode stops at the first of these; ``on_error="quarantine"`` sets them aside and counts them.
The last feedback for a request (and model) wins. Rotated files (``<stem>.N<suffix>``) and the files of every worker of
``router-ml serve --workers N`` are read too, merged in time order (:func:`router_ml.decision_log.merged_lines`).

Every line's ``format_version`` is checked first (:func:`router_ml.decision_log.line_version`; a line
without one was written before the field existed and is version 1): a line newer than this release
reads stops the read in every mode, naming file:line, since quarantining it would discard a whole
log that only needs a newer router-ml.
"""

from __future__ import annotations

import json
import sys
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


def _request_id_of(raw: bytes) -> str | None:
    """The request id of a feedback line that is JSON but was refused (a rating out of range), else None."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("type") == "feedback" and isinstance(obj.get("request_id"), str):
        return obj["request_id"]
    return None


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


def _attempts(obj: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """The validated calls of a cascade's decision line, or None for a line routed without a cascade."""
    cascade = obj.get("cascade")
    if cascade is None:
        return None
    if not isinstance(cascade, Mapping):
        raise RecordError("cascade", "must be an object {policy, answered, attempts} or {skipped}")
    if "attempts" not in cascade and "skipped" in cascade:
        return None  # routed without a cascade (a stream): the line's own fields are its one call
    attempts = cascade.get("attempts")
    if not isinstance(attempts, list) or not attempts:
        raise RecordError("cascade.attempts", "must be a non-empty list of the calls the cascade made")
    seen: set[str] = set()
    for i, attempt in enumerate(attempts):
        where = f"cascade.attempts[{i}]"
        if not isinstance(attempt, Mapping):
            raise RecordError(where, "must be an object {model, status, cost_usd, ...}")
        model = attempt.get("model")
        if not isinstance(model, str) or not model:
            raise RecordError(f"{where}.model", f"must name the model called, got {model!r}")
        if model in seen:
            raise RecordError(f"{where}.model", f"model {model!r} is called twice; a record holds one outcome a model")
        seen.add(model)
        if not isinstance(attempt.get("status"), str):
            raise RecordError(f"{where}.status", f"must be \"ok\" or \"error\", got {attempt.get('status')!r}")
    answered = cascade.get("answered")
    if isinstance(answered, bool) or not isinstance(answered, int) or not 0 <= answered < len(attempts):
        raise RecordError("cascade.answered", f"must be the index (0-{len(attempts) - 1}) of the returned answer "
                          f"in cascade.attempts, got {answered!r}")
    if attempts[answered]["model"] != obj.get("model") or attempts[answered]["status"] != "ok":
        raise RecordError("cascade.answered", f"points at attempt {answered} ({attempts[answered]['model']!r}, "
                          f"status {attempts[answered]['status']!r}), not at the answer of the line's model "
                          f"{obj.get('model')!r}")
    return attempts


#: pass 1's note of one decision: the model that answered (interned: a log of millions of ordinary lines
#: costs one shared string per request, as a set of ids would), for a cascade the models that answered and
#: those whose call failed, None when its cascade is broken (the decision itself is rejected, naming the field)
Answers = str | tuple[list[str], list[str]] | None


def _answers(obj: Mapping[str, Any]) -> Answers:
    try:
        attempts = _attempts(obj)
    except RecordError:
        return None
    if attempts is None:
        model = obj.get("model")
        return sys.intern(model) if isinstance(model, str) else ""
    return ([a["model"] for a in attempts if a["status"] == "ok"],
            [a["model"] for a in attempts if a["status"] != "ok"])


def _check_rated_model(fb: Mapping[str, Any], answers: Answers) -> None:
    """Feedback naming a model must name one whose answer the request holds."""
    model = fb.get("model")
    if model is None or answers is None:
        return
    if isinstance(answers, str):
        answers = [answers], []
    if model in answers[0]:
        return
    held = ", ".join(repr(m) for m in answers[0]) or "none"
    why = "whose call failed, so it gave no answer" if model in answers[1] else "which the request never called"
    raise RecordError("model", f"feedback for model {model!r} of request {fb['request_id']}, {why}; the request's "
                      f"answers: {held} (leave 'model' out to rate the returned answer)")


def _rejected_draw(obj: Mapping[str, Any], call: Mapping[str, Any], cascade: bool) -> RecordError:
    """The error for a line whose propensity has no outcome to go on (module doc)."""
    request_id, chosen, first = obj.get("request_id"), obj.get("chosen"), call["model"]
    if not cascade:
        return RecordError("propensity", f"request {request_id} was answered by fallback {first!r}, not the chosen "
                           f"{chosen!r}; its outcome is not a draw of the logging policy's choice")
    if chosen != first:
        return RecordError("propensity", f"request {request_id}'s cascade first called {first!r}, not the chosen "
                           f"{chosen!r}; none of its answers is a draw of the logging policy's choice")
    if call.get("status") != "ok":
        return RecordError("propensity", f"request {request_id}: the cascade's first call ({first!r}) failed, and "
                           f"its escalation is not a draw of the logging policy's choice")
    return RecordError("propensity", f"request {request_id}: only escalated answers are rated, and an escalation is "
                       f"decided after seeing the first answer, not drawn by the logging policy; rate the first "
                       f"answer too (feedback with \"model\": {first!r}) to keep the request")


def _record(obj: Mapping[str, Any], feedback: Mapping[tuple[str, str | None], tuple[float, str]],
            prices: PriceCatalog | None) -> Record:
    request_id = obj.get("request_id")
    status = obj.get("status")
    if status != "ok":
        raise RecordError("status", f"request {request_id} ended with status {status!r} "
                          f"({obj.get('error') or 'no error text'}); no complete answer to learn from")
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise RecordError("model", "an answered request must name the model that answered")
    attempts = _attempts(obj)
    cascade = attempts is not None
    calls = attempts if cascade else [obj]  # a line without a cascade is its own one call
    rated, unrated = {}, []
    for call in calls:
        if call.get("status") != "ok":
            continue  # a failed escalation: no answer to rate
        rating = feedback.get((request_id, call["model"]))
        if rating is None and call["model"] == model:
            rating = feedback.get((request_id, None))  # the request's rating is the returned answer's
        if rating is None:
            unrated.append(call["model"])
        else:
            rated[call["model"]] = rating
    if not rated:
        answers = f" (its answers: {', '.join(unrated)})" if cascade else ""
        raise RecordError("feedback", f"no feedback for request {request_id}{answers} yet; post it to /v1/feedback "
                          f"or join a file with 'router-ml feedback --log LOG --file FILE'")
    if not isinstance(obj.get("prompt"), str):
        raise RecordError("prompt", "the prompt text was not logged (only its hash); restart 'router-ml serve' "
                          "with --log-prompts to collect training data")
    propensity, first = obj.get("propensity"), calls[0]["model"]
    if propensity is not None:
        propensity = coerce_propensity(propensity, "propensity")
        chosen = obj.get("chosen")
        if first not in rated or (isinstance(chosen, str) and chosen != first):
            raise _rejected_draw(obj, calls[0], cascade)
    outcomes = {}
    for call in calls:
        if call["model"] in rated:
            outcome = {"quality": rated[call["model"]][0], "cost": call.get("cost_usd"),
                       "input_tokens": call.get("input_tokens"), "output_tokens": call.get("output_tokens"),
                       "latency_s": call.get("latency_s"), "response": call.get("response"),
                       "propensity": propensity if call is calls[0] else None}
            outcomes[call["model"]] = {k: v for k, v in outcome.items() if v is not None}
    fallbacks = obj.get("fallbacks") or []
    meta = {"chosen": obj.get("chosen"), "rule": obj.get("rule"), "willingness_to_pay": obj.get("willingness_to_pay"),
            "provider_model": obj.get("provider_model"), "usage_estimated": obj.get("usage_estimated"),
            "fallbacks": [f.get("upstream") or f.get("model") for f in fallbacks if isinstance(f, Mapping)],
            "feedback": rated[model][1] if not cascade else {m: where for m, (_, where) in rated.items()}}
    if cascade:
        meta["unrated"] = unrated
        meta["cascade"] = {"policy": obj["cascade"].get("policy"), "answered": model,
                           "scores": {a["model"]: a["score"] for a in calls if a.get("score") is not None}}
    return build_record(prompt=obj["prompt"], outcomes=outcomes, sample_id=request_id, timestamp=obj.get("time"),
                        metadata={"router_ml": meta}, prices=prices)


def read_decisions(path: Path, *, prices: PriceCatalog | None = None, **_: Any) -> Iterator[Row]:
    """Read a decision log (and its rotated files) as canonical records; see the module doc."""
    path = Path(path)
    if not path.exists():
        raise DataError("no such file", location=str(path))
    if path.is_dir():
        raise DataError("a directory: give the log's file (the one --decision-log named; its rotated and workers' "
                        "files beside it are read with it)", location=str(path))
    feedback: dict[tuple[str, str | None], tuple[float, str]] = {}  # (request id, rated model or None) -> rating
    answers: dict[str, Answers] = {}  # request id -> _answers
    broken: dict[str, str] = {}  # request id -> where and why its feedback line was refused
    for location, raw, complete in _lines(path):  # pass 1: who was decided, what was rated
        try:
            obj = _parse(raw, complete, location)
            if obj["type"] == "feedback":
                fb = _feedback(obj)
                feedback[fb["request_id"], fb.get("model")] = (fb["quality"], location)
            elif isinstance(obj.get("request_id"), str):
                answers[obj["request_id"]] = _answers(obj)
        except RecordError as exc:  # reported in pass 2; a decision left unrated by it names it
            rid = _request_id_of(raw)
            if rid is not None:
                broken.setdefault(rid, f"{location}: {exc}")
    rated = {rid for rid, _ in feedback}
    seen_any = False
    for location, raw, complete in _lines(path):
        seen_any = True
        text = raw.decode("utf-8", errors="backslashreplace").rstrip("\n")
        try:
            obj = _parse(raw, complete, location)
            if obj["type"] == "feedback":
                fb = _feedback(obj)
                if fb["request_id"] not in answers:
                    raise RecordError("request_id", f"feedback for request {fb['request_id']}, which this log does "
                                      f"not hold (a typo, or its decision was rotated away)")
                _check_rated_model(fb, answers[fb["request_id"]])
                continue
        except RecordError as exc:
            yield Row(location, text, error=exc)
            continue
        rid = obj.get("request_id")
        if rid in broken and rid not in rated:  # its only feedback was refused: say so, not "no feedback yet"
            yield Row(location, text, error=RecordError("feedback", f"the feedback for request {rid} was refused "
                                                                    f"({broken[rid]}); fix that line"))
            continue
        yield _convert(location, text, lambda obj=obj: _record(obj, feedback, prices))
    if not seen_any:
        raise DataError("the decision log is empty (no records)", location=str(path))
