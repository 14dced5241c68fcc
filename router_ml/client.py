"""Calling the chosen provider: an OpenAI-shaped client that routes, retries, falls back and accounts.

>>> from router_ml.client import RoutedClient
>>> client = RoutedClient.from_files("models/demo/artifact", "providers.toml")   # doctest: +SKIP
>>> r = client.chat.completions.create(model="router-ml",
...                                    messages=[{"role": "user", "content": "Sum 17 and 25."}])  # doctest: +SKIP
>>> r.choices[0].message.content, r.router_ml.model, r.router_ml.cost_usd                        # doctest: +SKIP
('42', 'tiny-1b', 1.3e-06)

One request: the routed text (:func:`router_ml.routed_text`) goes through the catalog's static
rules, then the learned router (unless ``model`` names a catalog model, which pins it); the chosen
model is called, and on failure - connect error, timeout, HTTP 5xx, 429 (waiting ``Retry-After``
when it is short), a malformed body, a stream that breaks before its first event - the call is
retried with exponential backoff (``settings.max_retries`` times) and then the next model of the
fallback chain is tried. A circuit breaker per upstream opens after ``breaker_failures``
consecutive failures, skips that upstream for ``breaker_reset_s`` seconds, then lets one probe
request through. Every request ends, within ``settings.request_timeout_s``, with an answer or an
:class:`UpstreamError` listing every attempt and why it failed.

Streaming (``stream=True``) passes server-sent events through one by one. Once the first event
has been delivered the answer cannot move to another model; an upstream that breaks later ends
the stream with an explicit error event (and :class:`StreamInterrupted` in this client).

:class:`AsyncRoutedClient` is the implementation (one pooled httpx transport per upstream host;
use it from one event loop). :class:`RoutedClient` is the same client for synchronous code:
it runs an :class:`AsyncRoutedClient` on a private event-loop thread. API keys are read once from
the environment variables the catalog names and never appear in errors, records or reprs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from router_ml.decision_log import DecisionLog, utc_now
from router_ml.errors import CatalogError, RouterMLError
from router_ml.messages import message_problem, routed_text
from router_ml.providers import ProviderCatalog, Replica
from router_ml.router import Router

__all__ = ["AsyncRoutedClient", "Attempt", "ChatCompletion", "CircuitBreaker", "RequestError", "RouteInfo",
           "RoutedClient", "StreamInterrupted", "UpstreamError"]

_logger = logging.getLogger("router_ml")
#: body fields that steer router-ml and are removed before the request goes upstream
ROUTER_FIELDS = ("willingness_to_pay",)
#: request header that sets the knob (USD per unit of quality; "inf" = best predicted quality)
KNOB_HEADER = "x-router-ml-willingness-to-pay"
_BREAKER_KINDS = {"timeout", "connect", "dropped", "http_5xx", "malformed", "interrupted"}


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

    def to_dict(self) -> dict[str, Any]:
        wtp = self.willingness_to_pay
        return {"request_id": self.request_id, "chosen": self.chosen, "rule": self.rule,
                "willingness_to_pay": None if wtp is None or math.isinf(wtp) else wtp,
                "model": self.model, "provider_model": self.provider_model, "upstream": self.upstream,
                "fallbacks": [a.to_dict() for a in self.fallbacks], "status": self.status, "error": self.error,
                "stream": self.stream, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "usage_estimated": self.usage_estimated, "cost_usd": self.cost_usd, "latency_s": self.latency_s,
                "routing_ms": self.routing_ms}

    def record(self, prompt: str | None) -> dict[str, Any]:
        """The decision-log record (:mod:`router_ml.decision_log`); ``prompt`` only when prompt logging is on."""
        out: dict[str, Any] = {"type": "decision", "time": utc_now(), "request_id": self.request_id,
                               "prompt_sha256": self.prompt_sha256}
        if prompt is not None:
            out["prompt"] = prompt
        out.update(self.to_dict())
        out["scores"] = self.scores
        return out


class UpstreamError(RouterMLError):
    """Every model of the fallback chain failed (HTTP 502 in the proxy); ``info.fallbacks`` lists the attempts."""

    def __init__(self, info: RouteInfo, message: str):
        self.info = info
        self.attempts = list(info.fallbacks)
        super().__init__(message)


class StreamInterrupted(RouterMLError):
    """A streamed answer broke after its first event (the model cannot change mid-answer)."""


class CircuitBreaker:
    """Consecutive-failure circuit breaker: ``failures`` in a row open it for ``reset_s`` seconds; then one
    probe is let through (half-open) - success closes it, failure opens it again."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self.threshold = failures
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self.opened = 0  # how many times it opened

    @property
    def state(self) -> str:
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until or self._probing else "half_open"

    def available(self) -> bool:
        """Would :meth:`allow` let a request through now (without taking the probe slot)?"""
        return self._open_until is None or (not self._probing and self._clock() >= self._open_until)

    def allow(self) -> bool:
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def retry_in(self) -> float:
        return 0.0 if self._open_until is None else max(0.0, self._open_until - self._clock())

    def success(self) -> None:
        self._failures = 0
        self._open_until = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            if self._open_until is None or self._probing:
                self.opened += 1
            self._open_until = self._clock() + self.reset_s
            self._probing = False

    def release(self) -> None:
        """Give back a probe slot that was not used."""
        self._probing = False


class _AttrList(list):
    def __getitem__(self, i):  # type: ignore[override]
        return _wrap(super().__getitem__(i))

    def __iter__(self):
        return (_wrap(v) for v in super().__iter__())


class _AttrDict(dict):
    """A JSON object with attribute access (``r.choices[0].message.content``), like the OpenAI SDK's models."""

    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self[name])
        except KeyError:
            raise AttributeError(name) from None


def _wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, _AttrDict):
        return _AttrDict(value)
    if isinstance(value, list) and not isinstance(value, _AttrList):
        return _AttrList(value)
    return value


class ChatCompletion(_AttrDict):
    """The provider's chat completion (a dict with attribute access) plus ``router_ml``: a :class:`RouteInfo`."""

    router_ml: RouteInfo


class _Failure(Exception):
    def __init__(self, kind: str, reason: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.kind, self.reason, self.status, self.retry_after = kind, reason, status, retry_after


def _retry_after(headers: httpx.Headers) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _knob(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RequestError(where, f"must be a number >= 0 (USD per unit of quality) or \"inf\", got {value!r}")\
                from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise RequestError(where, f"must be a number >= 0 (USD per unit of quality) or \"inf\", got {value!r}")
    return float(value)


def validate_body(body: Any) -> None:
    """Check the parts of a chat-completion body that router-ml reads; :class:`RequestError` names the field."""
    if not isinstance(body, dict):
        raise RequestError(None, f"the body must be a JSON object, got {type(body).__name__}")
    problem = message_problem(body.get("messages"))  # a parsed JSON body: a list of dicts when valid
    if problem is not None:
        raise RequestError(*problem)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model", f"must be a string, got {model!r}")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise RequestError("stream", f"must be true or false, got {body['stream']!r}")


def _usage(data: Mapping[str, Any]) -> tuple[int | None, int | None]:
    usage = data.get("usage")
    if not isinstance(usage, Mapping):
        return None, None
    pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
    ok = [isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (pt, ct)]
    return (pt if ok[0] else None), (ct if ok[1] else None)


def _chars(messages: Sequence[Mapping[str, Any]]) -> int:
    from router_ml.messages import content_text

    total = 0
    for m in messages:
        try:
            total += len(content_text(m.get("content")))
        except TypeError:
            pass
    return total


def _event_data(event: bytes) -> bytes | None:
    """The ``data`` of one server-sent event (lines joined by newlines); None for a comment-only event."""
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
    return b"\n".join(parts) if parts else None


async def _sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Complete events (each ending ``\\n\\n``) from a byte stream; a cut-off last event raises ``_Failure``."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                continue  # a \r\n may be split across chunks
            buf = buf.replace(b"\r\n", b"\n")
        while True:
            i = buf.find(b"\n\n")
            if i < 0:
                break
            event, buf = buf[:i + 2], buf[i + 2:]
            yield event
    if buf.strip():
        raise _Failure("interrupted", "the stream ended inside an event")


class _Stream:
    """An open upstream stream whose first event has arrived (internal to the client and the proxy)."""

    def __init__(self, owner: AsyncRoutedClient, info: RouteInfo, replica: Replica, response: httpx.Response,
                 events: AsyncIterator[bytes], first: bytes, injected_usage: bool, prompt: str | None,
                 input_chars: int, started: float):
        self._owner, self.info, self._replica = owner, info, replica
        self._response, self._events, self._first = response, events, first
        self._injected = injected_usage
        self._prompt, self._input_chars, self._started = prompt, input_chars, started
        self._closed = False
        self._out_chars = 0
        self._done = False

    def _inspect(self, event: bytes) -> bool:
        """Account one event; False when it is a usage-only chunk router-ml asked for and the client did not."""
        data = _event_data(event)
        if data is None:
            return True
        if data.strip() == b"[DONE]":
            self._done = True
            return True
        try:
            obj = json.loads(data)
        except ValueError:
            raise _Failure("malformed", "an event's data is not JSON") from None
        if not isinstance(obj, dict):
            raise _Failure("malformed", "an event's data is not a JSON object")
        if "error" in obj:
            message = obj["error"].get("message") if isinstance(obj["error"], dict) else obj["error"]
            raise _Failure("interrupted", f"the upstream sent an error event: {str(message)[:200]}")
        pt, ct = _usage(obj)
        if pt is not None or ct is not None:
            self.info.input_tokens, self.info.output_tokens = pt, ct
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    self._out_chars += len(delta["content"])
            if not choices and self._injected and (pt is not None or ct is not None):
                return False
        return True

    async def events(self) -> AsyncIterator[bytes]:
        """The events to pass on, as raw bytes, ending with an error event if the upstream breaks."""
        try:
            if self._inspect(self._first):
                yield self._first
            async for event in self._events:
                if self._inspect(event):
                    yield event
            if not self._done:
                raise _Failure("interrupted", "the upstream closed the stream before [DONE]")
            self.info.status = "ok"
        except (_Failure, httpx.HTTPError) as exc:
            failure = exc if isinstance(exc, _Failure) else self._owner._classify(exc, self._replica)
            self.info.status = "interrupted"
            self.info.error = self._owner.catalog.redact(
                f"{self._replica.label} broke off the answer: {failure.reason}")
            self.info.fallbacks.append(Attempt(self._replica.model, self._replica.label, "interrupted",
                                               failure.reason, None, time.perf_counter() - self._started))
            self._owner._breakers[self._replica.label].failure()
            error = {"error": {"message": self.info.error, "type": "upstream_error", "code": "stream_interrupted",
                               "request_id": self.info.request_id}}
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._events.aclose()  # type: ignore[attr-defined]
        finally:
            await self._response.aclose()
        if self.info.status == "pending":
            self.info.status = "cancelled"
            self.info.error = "the client stopped reading the stream"
        if self.info.status == "ok":
            self._owner._breakers[self._replica.label].success()
        self._owner._account(self.info, self._input_chars, self._out_chars)
        self._owner._finish(self.info, self._prompt, self._started)


class AsyncRoutedClient:
    """Routes, calls and accounts chat completions (see the module doc). ``decision_log`` is a
    :class:`DecisionLog` or a path; ``log_prompts`` adds the routed text to each record (needed to train
    on the log); ``on_complete`` is called with each finished :class:`RouteInfo`."""

    def __init__(self, router: Router, catalog: ProviderCatalog, *,
                 decision_log: DecisionLog | str | Path | None = None, log_prompts: bool = False,
                 willingness_to_pay: float | None = None,
                 on_complete: Callable[[RouteInfo], None] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None):
        missing = [m for m in router.models if m not in catalog]
        if missing:
            raise CatalogError(f"{catalog.source}: the router chooses between {list(router.models)} but the catalog "
                               f"has no entry for {missing}; add a [models.\"NAME\"] table for each")
        tokens = catalog.expected_output_tokens(router.models)
        self.routing_prices = "artifact"
        if tokens is not None:
            router = router.with_prices(catalog.prices(), tokens)
            self.routing_prices = "catalog"
        self.router = router
        self.catalog = catalog
        self.settings = catalog.settings
        self.willingness_to_pay = router.willingness_to_pay if willingness_to_pay is None else \
            _knob(willingness_to_pay, "willingness_to_pay")
        self._own_log = not isinstance(decision_log, DecisionLog) and decision_log is not None
        self.decision_log = DecisionLog(decision_log) if self._own_log else decision_log  # type: ignore[arg-type]
        self.log_prompts = log_prompts
        self.on_complete = on_complete
        self.log_errors = 0  # decision-log records that could not be written
        self._transport = transport
        self._http: dict[str, httpx.AsyncBaseTransport] = {}
        self._breakers = {r.label: CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_reset_s)
                          for m in catalog.values() for r in m.replicas}
        self._wrr = {name: [0.0] * len(m.replicas) for name, m in catalog.items()}
        self._headers = {r.label: self._upstream_headers(r) for m in catalog.values() for r in m.replicas}
        self._urls = {r.label: httpx.URL(r.url) for m in catalog.values() for r in m.replicas}  # parsed once
        self._origins = {label: f"{u.scheme}://{u.netloc.decode('ascii')}" for label, u in self._urls.items()}
        self.chat = _Chat(_AsyncCompletions(self))

    @classmethod
    def from_files(cls, router: str | Path, providers: str | Path, **kwargs: Any) -> AsyncRoutedClient:
        """Load a router artifact (one onnxruntime thread) and a provider catalog, then build the client."""
        return cls(Router.load(router, intra_op_threads=1), ProviderCatalog.load(providers), **kwargs)

    # --- plumbing ------------------------------------------------------------------------------

    @staticmethod
    def _upstream_headers(replica: Replica) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if replica.api_key is not None:
            headers["authorization"] = "Bearer " + replica.api_key.reveal()
        return headers

    def _pool(self, replica: Replica) -> httpx.AsyncBaseTransport:
        """The connection pool of the replica's origin: one httpx transport per scheme://host:port, shared.

        Requests go straight to the transport: the client layer (cookies, auth flows, redirects, event hooks)
        has nothing to do here and cost about 0.3 ms of CPU per call on a 2-core machine."""
        origin = self._origins[replica.label]
        pool = self._http.get(origin)
        if pool is None:
            pool = self._transport or httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=256), trust_env=False)
            self._http[origin] = pool
        return pool

    async def _send(self, replica: Replica, payload: bytes, timeout: float) -> httpx.Response:
        label = replica.label
        request = httpx.Request("POST", self._urls[label], content=payload, headers=self._headers[label],
                                extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout,
                                                        "pool": timeout}})
        try:
            response = await self._pool(replica).handle_async_request(request)
        except httpx.HTTPError as exc:
            raise self._classify(exc, replica) from None
        response.request = request
        return response

    def breaker(self, upstream: str) -> CircuitBreaker:
        """The circuit breaker of an upstream (``model#replica``)."""
        return self._breakers[upstream]

    def breakers(self) -> dict[str, CircuitBreaker]:
        return dict(self._breakers)

    async def aclose(self) -> None:
        for pool in set(self._http.values()):
            await pool.aclose()
        self._http.clear()
        if self._own_log and self.decision_log is not None:
            self.decision_log.close()

    async def __aenter__(self) -> AsyncRoutedClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # --- deciding ------------------------------------------------------------------------------

    def decide(self, body: dict[str, Any], headers: Mapping[str, str] | None = None,
               willingness_to_pay: Any = None) -> tuple[RouteInfo, str]:
        """Validate ``body``, apply pins, rules and the router: a fresh :class:`RouteInfo` and the routed text."""
        t0 = time.perf_counter()
        validate_body(body)
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        wtp = _knob(willingness_to_pay, "willingness_to_pay")
        if wtp is None:
            wtp = _knob(body.get("willingness_to_pay"), "willingness_to_pay")
        if wtp is None:
            wtp = _knob(headers.get(KNOB_HEADER), KNOB_HEADER)
        if wtp is None:
            wtp = self.willingness_to_pay
        text = routed_text(body["messages"])
        model = body.get("model") or self.settings.route_model
        scores = None
        rule = None
        if model in self.catalog:
            chosen, rule = model, "pinned"
        elif model != self.settings.route_model:
            raise RequestError("model", f"unknown model '{model}'; send \"{self.settings.route_model}\" to route, or "
                               f"one of {sorted(self.catalog)} to pin a model")
        else:
            chosen = None
            for r in self.catalog.rules:
                if r.matches(text, headers):
                    chosen, rule = r.model, r.name
                    break
            if chosen is None:
                decision = self.router.route(text, willingness_to_pay=wtp)
                chosen, scores = decision.model, dict(decision.scores)
        digest = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
        info = RouteInfo(request_id="rml-" + secrets.token_hex(12), chosen=chosen, rule=rule, willingness_to_pay=wtp,
                         scores=scores, prompt_sha256=digest, routing_ms=(time.perf_counter() - t0) * 1000,
                         stream=bool(body.get("stream")))
        return info, text

    # --- calling -------------------------------------------------------------------------------

    def _pick(self, model: str, avoid: set[str]) -> Replica | None:
        """Smooth weighted round robin over the model's replicas whose circuit lets a request through."""
        replicas = self.catalog[model].replicas
        if len(replicas) == 1:
            r = replicas[0]
            return r if self._breakers[r.label].allow() else None
        current = self._wrr[model]
        candidates = [i for i, r in enumerate(replicas) if self._breakers[r.label].available()]
        fresh = [i for i in candidates if replicas[i].label not in avoid]
        candidates = fresh or candidates
        if not candidates:
            return None
        total = sum(replicas[i].weight for i in candidates)
        for i in candidates:
            current[i] += replicas[i].weight
        best = max(candidates, key=lambda i: current[i])
        current[best] -= total
        replica = replicas[best]
        return replica if self._breakers[replica.label].allow() else None

    def _payload(self, body: Mapping[str, Any], replica: Replica, stream: bool) -> tuple[bytes, bool]:
        out = {k: v for k, v in body.items() if k not in ROUTER_FIELDS}
        out["model"] = replica.provider_model
        injected = False
        if stream and "stream_options" not in out:
            out["stream_options"] = {"include_usage": True}
            injected = True
        return json.dumps(out, ensure_ascii=False).encode("utf-8", errors="surrogatepass"), injected

    def _classify(self, exc: BaseException, replica: Replica) -> _Failure:
        if isinstance(exc, _Failure):
            return exc
        if isinstance(exc, httpx.TimeoutException):
            return _Failure("timeout", f"timed out ({type(exc).__name__}) after at most {replica.timeout_s:g} s")
        if isinstance(exc, httpx.ConnectError):
            return _Failure("connect", f"cannot connect to {replica.base_url}")
        return _Failure("dropped", self.catalog.redact(f"connection failed ({type(exc).__name__}: {str(exc)[:160]})"))

    def _http_failure(self, response: httpx.Response, body: bytes) -> _Failure:
        status = response.status_code
        snippet = self.catalog.redact(body[:200].decode("utf-8", errors="replace")).strip()
        reason = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        if status == 429:
            return _Failure("http_429", reason, status, _retry_after(response.headers))
        return _Failure("http_5xx" if status >= 500 else "http_4xx", reason, status)

    async def _call(self, replica: Replica, payload: bytes, timeout: float) -> dict[str, Any]:
        response = await self._send(replica, payload, timeout)
        try:
            body = await response.aread()
        except httpx.HTTPError as exc:
            raise self._classify(exc, replica) from None
        finally:
            await response.aclose()
        if not 200 <= response.status_code < 300:
            raise self._http_failure(response, body)
        try:
            data = json.loads(body)
        except ValueError:
            raise _Failure("malformed", "the response body is not JSON", response.status_code) from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
            raise _Failure("malformed", "the response has no 'choices'", response.status_code)
        return data

    async def _open(self, replica: Replica, payload: bytes, timeout: float) -> tuple[httpx.Response, Any, bytes]:
        response = await self._send(replica, payload, timeout)
        try:
            if not 200 <= response.status_code < 300:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > 4096:
                        break
                raise self._http_failure(response, body)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise _Failure("malformed", f"expected a text/event-stream, got "
                               f"'{response.headers.get('content-type', '')}'", response.status_code)
            events = _sse_events(response.aiter_bytes())
            while True:
                try:
                    first = await events.__anext__()
                except StopAsyncIteration:
                    raise _Failure("malformed", "the stream ended before its first event") from None
                if _event_data(first) is not None:
                    break
            data = _event_data(first)
            if data is not None and data.strip() != b"[DONE]":
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise _Failure("malformed", "the first event's data is not JSON") from None
                if not isinstance(obj, dict) or "error" in obj:
                    raise _Failure("malformed", "the first event is not a chat completion chunk")
            return response, events, first
        except BaseException as exc:
            await response.aclose()
            if isinstance(exc, httpx.HTTPError):
                raise self._classify(exc, replica) from None
            raise

    async def _dispatch(self, info: RouteInfo, body: dict[str, Any], started: float) -> Any:
        """Try the chain; returns the parsed completion, or ``(replica, response, events, first, injected)``
        for a stream. Raises :class:`UpstreamError` when every attempt failed."""
        s = self.settings
        deadline = started + s.request_timeout_s
        stream = info.stream
        for model in self.catalog.chain(info.chosen):
            tried: set[str] = set()
            for retry in range(s.max_retries + 1):
                replica = self._pick(model, tried)
                if replica is None:
                    if retry == 0:
                        wait = min(self._breakers[r.label].retry_in() for r in self.catalog[model].replicas)
                        info.fallbacks.append(Attempt(model, None, "circuit_open",
                                                      f"circuit open after repeated failures; probing again in "
                                                      f"{wait:.1f} s"))
                    break
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    self._breakers[replica.label].release()
                    return self._give_up(info, f"the request timeout ({s.request_timeout_s:g} s) ran out")
                tried.add(replica.label)
                payload, injected = self._payload(body, replica, stream)
                t0 = time.perf_counter()
                try:
                    if stream:
                        response, events, first = await self._open(replica, payload, min(replica.timeout_s, remaining))
                        result: Any = (replica, response, events, first, injected)
                    else:
                        result = await self._call(replica, payload, min(replica.timeout_s, remaining))
                except _Failure as failure:
                    elapsed = time.perf_counter() - t0
                    info.fallbacks.append(Attempt(model, replica.label, failure.kind, failure.reason, failure.status,
                                                  elapsed))
                    breaker = self._breakers[replica.label]
                    if failure.kind in _BREAKER_KINDS:
                        breaker.failure()
                    else:
                        breaker.release()  # a 4xx/429 says nothing about the upstream's health
                    if failure.kind == "http_4xx" or retry == s.max_retries:
                        break
                    if failure.kind == "http_429" and failure.retry_after is not None:
                        if failure.retry_after > s.max_retry_after_s:
                            break  # a long wait: fall back now
                        delay = failure.retry_after
                    else:
                        delay = min(s.max_backoff_s, s.backoff_s * 2 ** retry) * random.uniform(0.5, 1.5)
                    if time.perf_counter() + delay >= deadline:
                        break
                    await asyncio.sleep(delay)
                    continue
                except BaseException:
                    self._breakers[replica.label].release()
                    raise
                if not stream:
                    self._breakers[replica.label].success()
                info.model, info.provider_model, info.upstream = model, replica.provider_model, replica.label
                return result
        return self._give_up(info, "every model in the fallback chain failed")

    def _give_up(self, info: RouteInfo, why: str) -> Any:
        reasons = "; ".join(f"{a.upstream or a.model}: {a.reason}" for a in info.fallbacks) or "nothing was tried"
        info.status = "error"
        info.error = self.catalog.redact(f"{why} (chain {self.catalog.chain(info.chosen)}): {reasons}")
        raise UpstreamError(info, f"request {info.request_id}: {info.error}")

    def _account(self, info: RouteInfo, input_chars: int, output_chars: int) -> None:
        if info.model is None:
            return
        if info.input_tokens is None or info.output_tokens is None:
            info.usage_estimated = True  # the provider reported no usage: ceil(chars / 4)
            if info.input_tokens is None:
                info.input_tokens = (input_chars + 3) // 4
            if info.output_tokens is None:
                info.output_tokens = (output_chars + 3) // 4
        info.cost_usd = self.catalog[info.model].price.cost(info.input_tokens, info.output_tokens)

    def _finish(self, info: RouteInfo, prompt: str | None, started: float) -> None:
        info.latency_s = round(time.perf_counter() - started, 6)
        if self.decision_log is not None:
            try:
                self.decision_log.write(info.record(prompt if self.log_prompts else None))
            except OSError as exc:  # a full disk must not fail the answer; it is counted and logged, not hidden
                self.log_errors += 1
                _logger.error("router-ml: cannot write the decision log %s (%s); %d records lost so far",
                              self.decision_log.path, exc.strerror or exc, self.log_errors)
        if self.on_complete is not None:
            self.on_complete(info)

    async def complete(self, body: dict[str, Any], *, headers: Mapping[str, str] | None = None,
                       willingness_to_pay: Any = None) -> ChatCompletion | _Stream:
        """Route and call one chat completion (the proxy's entry point): a :class:`ChatCompletion`, or for
        ``stream: true`` an open stream whose ``events()`` yields raw server-sent events."""
        started = time.perf_counter()
        info, text = self.decide(body, headers, willingness_to_pay)
        try:
            result = await self._dispatch(info, body, started)
        except UpstreamError:
            self._finish(info, text, started)
            raise
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                info.status, info.error = "cancelled", "the caller cancelled the request"
            else:
                info.status, info.error = "error", f"internal error: {type(exc).__name__}"
            self._finish(info, text, started)
            raise
        if info.stream:
            replica, response, events, first, injected = result
            return _Stream(self, info, replica, response, events, first, injected, text, _chars(body["messages"]),
                           started)
        info.input_tokens, info.output_tokens = _usage(result)
        out_chars = 0
        for choice in result["choices"]:
            message = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                out_chars += len(message["content"])
        info.status = "ok"
        self._account(info, _chars(body["messages"]), out_chars)
        self._finish(info, text, started)
        completion = ChatCompletion(result)
        completion.router_ml = info
        return completion


class AsyncChatStream:
    """Chunks of a streamed completion (dicts with attribute access); ``router_ml`` is complete once it ends."""

    def __init__(self, stream: _Stream):
        self._stream = stream
        self._events = stream.events()
        self.router_ml = stream.info

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> _AttrDict:
        while True:
            event = await self._events.__anext__()
            data = _event_data(event)
            if data is None or data.strip() == b"[DONE]":
                continue
            obj = json.loads(data)
            if "error" in obj:
                await self.aclose()
                raise StreamInterrupted(self._stream.info.error or "the stream broke off")
            return _AttrDict(obj)

    async def aclose(self) -> None:
        await self._events.aclose()
        await self._stream.aclose()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class _AsyncCompletions:
    def __init__(self, client: AsyncRoutedClient):
        self._client = client

    async def create(self, *, messages: list[dict[str, Any]], model: str | None = None, stream: bool = False,
                     willingness_to_pay: float | None = None, extra_headers: Mapping[str, str] | None = None,
                     **params: Any) -> ChatCompletion | AsyncChatStream:
        """``client.chat.completions.create(model="router-ml", messages=[...], ...)``, as in the OpenAI SDK.
        Other keyword arguments go to the provider as they are; ``extra_headers`` feed the catalog's rules."""
        body = {"model": model or self._client.settings.route_model, "messages": messages, **params}
        if stream:
            body["stream"] = True
        result = await self._client.complete(body, headers=extra_headers, willingness_to_pay=willingness_to_pay)
        return AsyncChatStream(result) if isinstance(result, _Stream) else result


class _Chat:
    def __init__(self, completions: Any):
        self.completions = completions


class ChatStream:
    """A streamed completion for synchronous code (see :class:`AsyncChatStream`)."""

    def __init__(self, owner: RoutedClient, stream: AsyncChatStream):
        self._owner, self._stream = owner, stream
        self.router_ml = stream.router_ml

    def __iter__(self) -> Iterator[_AttrDict]:
        try:
            while True:
                try:
                    yield self._owner._run(self._stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.close()

    def close(self) -> None:
        self._owner._run(self._stream.aclose())

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _SyncCompletions:
    def __init__(self, owner: RoutedClient):
        self._owner = owner

    def create(self, **kwargs: Any) -> ChatCompletion | ChatStream:
        """See :meth:`AsyncRoutedClient.chat.completions.create`."""
        result = self._owner._run(self._owner._async.chat.completions.create(**kwargs))
        return ChatStream(self._owner, result) if isinstance(result, AsyncChatStream) else result


class RoutedClient:
    """The synchronous :class:`AsyncRoutedClient`: same arguments, same behaviour; runs on a private event-loop
    thread. Close it (or use ``with``) when done."""

    def __init__(self, router: Router, catalog: ProviderCatalog, **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="router-ml-client", daemon=True)
        self._thread.start()
        self._async = AsyncRoutedClient(router, catalog, **kwargs)
        self.chat = _Chat(_SyncCompletions(self))

    @classmethod
    def from_files(cls, router: str | Path, providers: str | Path, **kwargs: Any) -> RoutedClient:
        return cls(Router.load(router, intra_op_threads=1), ProviderCatalog.load(providers), **kwargs)

    @property
    def catalog(self) -> ProviderCatalog:
        return self._async.catalog

    def breaker(self, upstream: str) -> CircuitBreaker:
        return self._async.breaker(upstream)

    def _run(self, coro: Any) -> Any:
        if self._loop.is_closed():
            coro.close()
            raise RouterMLError("the RoutedClient is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> RoutedClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
