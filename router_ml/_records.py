"""What the routed client records about a request: the route, each failed attempt, and its errors.

These are plain data shared by the deciding, calling, streaming and serving modules; none of them
does I/O. ``Failure`` is the one internal exception: it classifies a failed attempt (``kind``)
before the client decides whether to retry, fall back or give up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router_ml.decision_log import FORMAT_VERSION, VERSION_FIELD, utc_now
from router_ml.errors import RouterMLError
from router_ml.messages import content_text

__all__ = ["Attempt", "BREAKER_KINDS", "Failure", "RequestError", "RouteInfo", "StreamInterrupted", "UpstreamError",
           "request_chars", "usage_of"]

#: failure kinds that count against an upstream's circuit breaker (a 4xx or 429 says nothing about its health)
BREAKER_KINDS = frozenset({"timeout", "connect", "dropped", "http_5xx", "malformed", "interrupted"})


class RequestError(RouterMLError, ValueError):
    """The request itself is malformed (HTTP 400); ``field`` names the offending field."""

    def __init__(self, field: str | None, message: str):
        self.field = field
        super().__init__(f"field '{field}': {message}" if field else message)


@dataclass
class Attempt:
    """One failed call: the model, the upstream (``model#replica``), why, and after how long."""

    model: str
    upstream: str | None
    kind: str  # timeout, connect, dropped, http_5xx, http_429, http_4xx, malformed, circuit_open, interrupted
    reason: str
    status: int | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "upstream": self.upstream, "kind": self.kind, "reason": self.reason,
                "status": self.status, "elapsed_s": round(self.elapsed_s, 6)}


@dataclass
class RouteInfo:
    """What router-ml did for one request: the decision, who answered, what was tried, tokens and cost."""

    request_id: str
    chosen: str
    rule: str | None
    willingness_to_pay: float | None
    scores: dict[str, float] | None
    prompt_sha256: str
    routing_ms: float
    stream: bool = False
    model: str | None = None
    provider_model: str | None = None
    upstream: str | None = None
    fallbacks: list[Attempt] = field(default_factory=list)
    status: str = "pending"  # ok, error, interrupted, cancelled
    error: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage_estimated: bool = False
    cost_usd: float | None = None
    latency_s: float | None = None
    propensity: float = 1.0  # the probability the routing policy gave ``chosen``: 1.0 for rules, pins, no exploration
    explored: bool = False  # ``chosen`` is an explored model, not the router's greedy choice
    policy: dict[str, Any] | None = None  # what reproduces the decision: Router.policy_record(knob)
    variant: str | None = None  # the serve config's router variant that decided (router_ml.variants); None: no split
    costs: Mapping[str, float] | None = None  # the router's expected USD cost per model (not logged: the prices are)
    # a cascade's steps (router_ml.cascade): the policy, the point, every attempt with its score, which was
    # returned; or {"skipped": why} for a routed request served without one. None: no cascade configured
    cascade: dict[str, Any] | None = None
    cascade_responses: list[str | None] | None = None  # each attempt's answer text, logged with the prompts

    def to_dict(self) -> dict[str, Any]:
        wtp = self.willingness_to_pay
        return {"request_id": self.request_id, "chosen": self.chosen, "rule": self.rule,
                "willingness_to_pay": None if wtp is None or math.isinf(wtp) else wtp,
                "model": self.model, "provider_model": self.provider_model, "upstream": self.upstream,
                "fallbacks": [a.to_dict() for a in self.fallbacks], "status": self.status, "error": self.error,
                "stream": self.stream, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "usage_estimated": self.usage_estimated, "cost_usd": self.cost_usd, "latency_s": self.latency_s,
                "routing_ms": self.routing_ms, "propensity": self.propensity, "explored": self.explored,
                **({"variant": self.variant} if self.variant is not None else {}),
                **({"cascade": self.cascade} if self.cascade is not None else {})}

    def record(self, prompt: str | None, response: str | None = None) -> dict[str, Any]:
        """The decision-log record (:mod:`router_ml.decision_log`); ``prompt`` and the answer's ``response``
        text only when prompt logging is on."""
        out: dict[str, Any] = {"type": "decision", VERSION_FIELD: FORMAT_VERSION, "time": utc_now(),
                               "request_id": self.request_id, "prompt_sha256": self.prompt_sha256}
        if prompt is not None:
            out["prompt"] = prompt
        if response is not None:
            out["response"] = response
        out.update(self.to_dict())
        cascade, responses = self.cascade, self.cascade_responses
        if prompt is not None and cascade is not None and responses is not None:
            out["cascade"] = {**cascade, "attempts": [{**a, "response": r} for a, r in
                                                      zip(cascade["attempts"], responses, strict=True)]}
        out["scores"] = self.scores
        out["policy"] = self.policy
        return out


class UpstreamError(RouterMLError):
    """Every model of the fallback chain failed (HTTP 502 in the proxy); ``info.fallbacks`` lists the attempts."""

    def __init__(self, info: RouteInfo, message: str):
        self.info = info
        self.attempts = list(info.fallbacks)
        super().__init__(message)


class StreamInterrupted(RouterMLError):
    """A streamed answer broke after its first event (the model cannot change mid-answer)."""


class Failure(Exception):
    """One attempt failed (internal to the client): ``kind`` decides retry, fallback and the breaker."""

    def __init__(self, kind: str, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.kind, self.reason, self.status, self.retry_after = kind, reason, status, retry_after


def usage_of(data: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(prompt_tokens, completion_tokens)`` from a completion or chunk's ``usage``; None where absent or invalid."""
    usage = data.get("usage")
    if not isinstance(usage, Mapping):
        return None, None
    pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
    ok = [isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (pt, ct)]
    return (pt if ok[0] else None), (ct if ok[1] else None)


def request_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    """Characters of the request's message text: the basis of a token estimate when the provider reports none."""
    total = 0
    for m in messages:
        try:
            total += len(content_text(m.get("content")))
        except TypeError:
            pass
    return total
