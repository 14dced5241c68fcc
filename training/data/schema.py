"""The canonical logged-traffic record and the validation that builds it.

Every reader turns its input into :class:`Record` objects through :func:`build_record`, which
checks each field and raises :class:`RecordError` naming the field and what is wrong. A record is:

- a prompt: plain ``prompt`` text, or OpenAI-style chat ``messages`` (the routed text is derived
  from them by :func:`router_ml.messages.routed_text`);
- ``outcomes``: ``{model: Outcome}`` for any subset of models (quality in [0, 1], cost in USD,
  optional token counts, latency, the logging policy's ``propensity`` and the model's ``response``
  text - what an answer scorer learns from);
- optional pairwise ``preferences`` (``model_a``, ``model_b``, ``winner`` in ``a``/``b``/``tie``);
- optional ``sample_id``, ``task``, ``timestamp`` (ISO 8601) and free-form ``metadata``.

A record needs at least one outcome or one preference.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from router_ml.messages import list_turns, message_problem, routed_text
from router_ml.pricing import PriceCatalog

__all__ = [
    "OUTCOME_FIELDS",
    "OUTCOME_KEYS",
    "Outcome",
    "Preference",
    "Record",
    "RecordError",
    "build_record",
    "coerce_cost",
    "coerce_propensity",
    "coerce_quality",
    "is_missing",
    "user_turns",
]

#: the numeric fields of an outcome, in canonical order (one matrix each in a table)
OUTCOME_FIELDS = ("quality", "cost", "input_tokens", "output_tokens", "latency_s", "propensity")
#: every key an outcome object may have: the numeric fields and the model's ``response`` text
OUTCOME_KEYS = (*OUTCOME_FIELDS, "response")
_PROPENSITY_RULE = "propensity must be in (0, 1]: the probability that the logging policy chose this model"
_TRUE = {"true", "t", "yes"}
_FALSE = {"false", "f", "no"}
# Undecodable bytes survive reading as lone surrogates (errors="surrogateescape").
_UNDECODED = re.compile("[\udc80-\udcff]")
_WINNERS = {
    "a": "a", "model_a": "a", "b": "b", "model_b": "b",
    "tie": "tie", "tie (bothbad)": "tie", "draw": "tie",
}


class RecordError(ValueError):
    """One record is invalid; ``field`` names the offending field (dotted path)."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        self.reason = message
        super().__init__(f"field '{field}': {message}" if field else message)

    def __reduce__(self):  # rebuilt from its parts when a worker process sends it back
        return (RecordError, (self.field, self.reason))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one model did on one prompt.

    ``quality`` is in [0, 1] (1 = correct / best); ``cost`` is USD for this call, ``None`` when
    neither logged nor computable from tokens and a price catalog; ``latency_s`` is seconds.
    ``propensity`` in (0, 1] is the probability with which the logging policy (an exploring
    router) chose this model for this prompt - what off-policy estimators divide by; ``None`` =
    not logged (offline evaluations, older logs). ``response`` is the model's answer text (``""``
    when it produced nothing, ``None`` when not recorded): what an answer scorer
    (:mod:`training.cascade`) trains on.
    """

    quality: float
    cost: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_s: float | None = None
    propensity: float | None = None
    response: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data without the fields that are unset."""
        out: dict[str, Any] = {"quality": self.quality}
        for key in OUTCOME_KEYS[1:]:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class Preference:
    """An arena-style pairwise judgement: ``winner`` is ``"a"``, ``"b"`` or ``"tie"``."""

    model_a: str
    model_b: str
    winner: str

    def to_dict(self) -> dict[str, str]:
        return {"model_a": self.model_a, "model_b": self.model_b, "winner": self.winner}


@dataclass(frozen=True, slots=True)
class Record:
    """One prompt with its outcomes; see the module doc for the fields."""

    prompt: str | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    preferences: tuple[Preference, ...] = ()
    sample_id: str | None = None
    task: str | None = None
    timestamp: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The routed text: ``prompt``, or the text derived from ``messages``."""
        if self.prompt is not None:
            return self.prompt
        return routed_text(self.messages or ())

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON object of this record (unset fields left out)."""
        out: dict[str, Any] = {}
        if self.sample_id is not None:
            out["sample_id"] = self.sample_id
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.messages is not None:
            out["messages"] = [dict(m) for m in self.messages]
        if self.task is not None:
            out["task"] = self.task
        if self.timestamp is not None:
            out["timestamp"] = self.timestamp
        out["outcomes"] = {m: o.to_dict() for m, o in self.outcomes.items()}
        if self.preferences:
            out["preferences"] = [p.to_dict() for p in self.preferences]
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out


def is_missing(value: Any) -> bool:
    """True for the spellings of "no value" in tables: None, NaN, empty or ``nan``/``null`` text."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return value.strip().lower() in {"", "nan", "null", "none", "na", "n/a"}
    return False


def _number(value: Any, field: str, what: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | Decimal):  # Decimal: a SQL or Spark export's decimal128 column
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise RecordError(field, f"{what} must be a number, got {value!r}") from None
    else:
        raise RecordError(field, f"{what} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(number):
        raise RecordError(field, f"{what} must be finite, got {value!r}")
    return number


def coerce_quality(value: Any, field: str) -> float:
    """Return a quality in [0, 1]; ``True``/``False`` (bools or strings) are 1 and 0."""
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return 1.0
    if isinstance(value, str) and value.strip().lower() in _FALSE:
        return 0.0
    quality = _number(value, field, "quality")
    if not 0.0 <= quality <= 1.0:
        hint = ""
        if quality > 1.0:
            # a rating on another scale: quarantining would set aside every record of the file
            hint = ("; a score on another scale (a 1-10 judge rating, 1-5 stars, a percentage) is mapped to "
                    "[0, 1] before loading: (score - lowest) / (highest - lowest)")
        raise RecordError(field, f"quality must be in [0, 1], got {value!r}{hint}")
    return quality


def coerce_cost(value: Any, field: str) -> float:
    """Return a cost in USD (a finite number >= 0)."""
    if isinstance(value, bool):
        raise RecordError(field, f"cost must be a number of USD, got {value!r}")
    cost = _number(value, field, "cost")
    if cost < 0:
        raise RecordError(field, f"cost must be >= 0 USD, got {value!r}")
    return cost


def coerce_propensity(value: Any, field: str) -> float:
    """Return a propensity in (0, 1]. 0 is refused: an action the logging policy could not take
    was not logged, and inverse-propensity weights would divide by it."""
    if isinstance(value, bool):
        raise RecordError(field, f"{_PROPENSITY_RULE}, got {value!r} (a boolean)")
    try:
        number = _number(value, field, "propensity")
    except RecordError:
        raise RecordError(field, f"{_PROPENSITY_RULE}, got {value!r}") from None
    if not 0.0 < number <= 1.0:
        raise RecordError(field, f"{_PROPENSITY_RULE}, got {value!r}")
    return number


def _count(value: Any, field: str) -> int | None:
    if is_missing(value):
        return None
    if isinstance(value, bool):
        raise RecordError(field, f"token count must be an integer, got {value!r}")
    number = _number(value, field, "token count")
    if number < 0 or number != int(number):
        raise RecordError(field, f"token count must be an integer >= 0, got {value!r}")
    return int(number)


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RecordError(field, f"expected text, got {type(value).__name__}")
    return value


def _timestamp(value: Any, field: str) -> str | None:
    if is_missing(value):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return _dt.datetime.fromtimestamp(float(value), tz=_dt.UTC).isoformat()
        except (ValueError, OverflowError, OSError):  # past year 9999, or not finite
            hint = "; epoch milliseconds? divide by 1000" if 1e11 <= abs(float(value)) < 1e16 else ""
            raise RecordError(field, f"timestamp {value!r} is not a date (epoch seconds between years 1 and 9999)"
                              f"{hint}") from None
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if not isinstance(value, str):
        raise RecordError(field, f"timestamp must be ISO 8601 text or epoch seconds, got {value!r}")
    try:
        _dt.datetime.fromisoformat(value)
    except ValueError:
        raise RecordError(field, f"timestamp must be ISO 8601, got {value!r}") from None
    return value


def build_outcome(
    model: str, raw: Mapping[str, Any], *, prices: PriceCatalog | None = None
) -> Outcome:
    """Validate one outcome table; derive ``cost`` from tokens and ``prices`` when it is missing."""
    where = f"outcomes.{model}"
    if not isinstance(raw, Mapping):
        raise RecordError(where, f"an outcome must be an object with 'quality', got {raw!r}")
    unknown = set(raw) - set(OUTCOME_KEYS)
    if unknown:
        raise RecordError(where, f"unknown outcome keys {sorted(unknown)}")
    if is_missing(raw.get("quality")):
        raise RecordError(f"{where}.quality", "quality is missing")
    quality = coerce_quality(raw["quality"], f"{where}.quality")
    input_tokens = _count(raw.get("input_tokens"), f"{where}.input_tokens")
    output_tokens = _count(raw.get("output_tokens"), f"{where}.output_tokens")
    cost = None if is_missing(raw.get("cost")) else coerce_cost(raw["cost"], f"{where}.cost")
    if cost is None and prices is not None and model in prices:
        if input_tokens is not None or output_tokens is not None:
            cost = prices.cost(model, input_tokens=input_tokens or 0, output_tokens=output_tokens or 0)
    latency = raw.get("latency_s")
    latency_s = None if is_missing(latency) else _number(latency, f"{where}.latency_s", "latency")
    if latency_s is not None and latency_s < 0:
        raise RecordError(f"{where}.latency_s", f"latency must be >= 0 seconds, got {latency!r}")
    # Only an absent key or null means "not logged": NaN, "" or 0 here is a broken log, not a gap.
    # Table readers turn their empty cells into absent keys before calling this.
    propensity = raw.get("propensity")
    if propensity is not None:
        propensity = coerce_propensity(propensity, f"{where}.propensity")
    response = raw.get("response")
    if response is not None and not isinstance(response, str):
        raise RecordError(f"{where}.response", f"response must be the model's answer text (or null), got "
                                               f"{type(response).__name__}")
    if response is not None and _UNDECODED.search(response):
        raise RecordError(f"{where}.response", "text is not valid UTF-8")
    return Outcome(quality, cost, input_tokens, output_tokens, latency_s, propensity, response)


def _messages(value: Any) -> tuple[Mapping[str, Any], ...]:
    problem = message_problem(value)
    if problem is not None:
        raise RecordError(*problem)
    return tuple(dict(message) for message in value)


def user_turns(turns: Any) -> list[dict[str, str]] | None:
    """A non-empty list of strings as chat messages, one user turn each; None for anything else."""
    if isinstance(turns, list | tuple | np.ndarray) and len(turns) and all(isinstance(t, str) for t in turns):
        return [{"role": "user", "content": str(t)} for t in turns]
    return None


def build_record(
    *,
    prompt: Any = None,
    messages: Any = None,
    outcomes: Mapping[str, Mapping[str, Any]] | None = None,
    preferences: Sequence[Mapping[str, Any]] | None = None,
    sample_id: Any = None,
    task: Any = None,
    timestamp: Any = None,
    metadata: Mapping[str, Any] | None = None,
    prices: PriceCatalog | None = None,
) -> Record:
    """Validate raw fields and return a :class:`Record`, or raise :class:`RecordError`. A prompt that is the
    Python text of a non-empty list of strings (RouterBench's files hold every prompt so) is read as
    chat messages, one user turn per string (:func:`router_ml.messages.list_turns`)."""
    text = _text(prompt, "prompt")
    turns = list_turns(text) if messages is None and text is not None and text[:1] == "[" else None
    if turns is not None:
        text, messages = None, user_turns(turns)
    chat = None if messages is None else _messages(messages)
    if text is not None and chat is not None:
        raise RecordError("prompt", "give either 'prompt' or 'messages', not both")
    record_text = text if chat is None else routed_text(chat)
    if record_text is None:
        raise RecordError("prompt", "prompt is missing (give 'prompt' text or chat 'messages')")
    if not record_text.strip():
        raise RecordError("prompt" if chat is None else "messages", "prompt is empty")
    if _UNDECODED.search(record_text):
        raise RecordError("prompt", "text is not valid UTF-8")
    if outcomes is not None and not isinstance(outcomes, Mapping):
        raise RecordError("outcomes", "outcomes must be an object {model: {quality, cost, ...}}")
    built = {str(m): build_outcome(str(m), o, prices=prices) for m, o in (outcomes or {}).items()}
    prefs = []
    for i, raw in enumerate(preferences or ()):
        where = f"preferences[{i}]"
        if not isinstance(raw, Mapping):
            raise RecordError(where, "a preference must be {model_a, model_b, winner}")
        a, b = _text(raw.get("model_a"), f"{where}.model_a"), _text(raw.get("model_b"), f"{where}.model_b")
        if not a or not b or a == b:
            raise RecordError(where, "a preference needs two different models model_a and model_b")
        winner = _WINNERS.get(str(raw.get("winner", "")).strip().lower())
        if winner is None:
            raise RecordError(f"{where}.winner", f"winner must be a, b or tie, got {raw.get('winner')!r}")
        prefs.append(Preference(a, b, winner))
    if not built and not prefs:
        raise RecordError("outcomes", "the record has no outcome for any model (and no preference)")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise RecordError("metadata", "metadata must be an object")
    record = Record(
        prompt=text,
        messages=chat,
        outcomes=built,
        preferences=tuple(prefs),
        sample_id=_text(sample_id, "sample_id"),
        task=_text(task, "task"),
        timestamp=_timestamp(timestamp, "timestamp"),
        metadata=dict(metadata or {}),
    )
    _check_utf8(record)
    return record


_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, Mapping):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_surrogate(v) for v in value)
    return False


def _check_utf8(record: Record) -> None:
    """Every text of ``record`` can be written as UTF-8: JSON may escape half of an emoji's UTF-16 pair
    (``"\\ud83d"``, a log that cut one in two), which no UTF-8 file or column holds - once a traceback when
    the table was built, now the record's error, naming the field."""
    texts = [record.prompt or "", record.sample_id or "", record.task or ""]
    for model, outcome in record.outcomes.items():
        texts += [model, outcome.response or ""]
    if not (record.messages or record.metadata or record.preferences) and not _SURROGATE.search("".join(texts)):
        return  # the usual record, in one search (the per-row path reads every record through here)
    fields: list[tuple[str, Any]] = [("prompt", record.prompt), ("messages", record.messages),
                                     ("sample_id", record.sample_id), ("task", record.task),
                                     ("metadata", record.metadata)]
    for model, outcome in record.outcomes.items():
        fields += [(f"outcomes.{model}", model), (f"outcomes.{model}.response", outcome.response)]
    for p in record.preferences:
        fields += [("preferences", p.model_a), ("preferences", p.model_b)]
    for name, value in fields:
        if _has_surrogate(value):
            raise RecordError(name, "holds a lone UTF-16 surrogate (as JSON \\udXXX: half of an emoji, cut by the "
                              "program that wrote the line), which is not text; mend or drop the record")
