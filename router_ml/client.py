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

:class:`AsyncRoutedClient` is the implementation (one pooled httpx transport per upstream host, or with
``upstream="http1"`` the proxy's own HTTP/1.1 client, :mod:`router_ml._http1`, which needs the ``serve``
extra; use it from one event loop). :class:`RoutedClient` is the same client for synchronous code:
it runs an :class:`AsyncRoutedClient` on a private event-loop thread. API keys are read once from
the environment variables the catalog names and never appear in errors, records or reprs.

This module is the public face; the parts live in private modules, one concern each:
``_records`` (RouteInfo, Attempt, the errors), ``_decide`` (the HTTP-free decide step),
``_resilience`` (failure classes, backoff, circuit breakers, weighted replica picks),
``_streaming`` (server-sent events, :class:`UpstreamStream`) and ``_responses`` (the OpenAI-shaped
wrappers). Everything documented is importable from here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import httpx

from router_ml import _json
from router_ml._cascading import run_cascade
from router_ml._decide import KNOB_HEADER, ROUTER_FIELDS, decide, parse_knob, validate_body
from router_ml._records import (
    BREAKER_KINDS,
    Attempt,
    Failure,
    RequestError,
    RouteInfo,
    StreamInterrupted,
    UpstreamError,
    request_chars,
    usage_of,
)
from router_ml._resilience import CircuitBreaker, ReplicaPicker, backoff_delay, classify, http_failure
from router_ml._responses import (
    AsyncChatStream,
    ChatCompletion,
    ChatStream,
    answer_text,
    output_chars,
    parse_completion,
)
from router_ml._streaming import UpstreamStream, first_event
from router_ml.cascade import Cascade
from router_ml.decision_log import DecisionLog
from router_ml.errors import CatalogError, RouterMLError
from router_ml.exploration import Exploration
from router_ml.providers import ProviderCatalog, Replica
from router_ml.router import Router

__all__ = ["AsyncChatStream", "AsyncRoutedClient", "Attempt", "ChatCompletion", "ChatStream", "CircuitBreaker",
           "KNOB_HEADER", "ROUTER_FIELDS", "RequestError", "RouteInfo", "RoutedClient", "StreamInterrupted",
           "UpstreamError", "UpstreamStream", "prepare_router", "validate_body"]

_logger = logging.getLogger("router_ml")


def prepare_router(router: Router, catalog: ProviderCatalog,
                   exploration: Exploration | None = None) -> tuple[Router, str]:
    """``router`` made ready to serve ``catalog``: its models checked against the catalog, its routing prices
    taken from the catalog when the catalog gives every model's expected output tokens, ``exploration``
    applied. Returns the router and where its routing prices come from (``"catalog"`` or ``"artifact"``)."""
    missing = [m for m in router.models if m not in catalog]
    if missing:
        raise CatalogError(f"{catalog.source}: the router chooses between {list(router.models)} but the catalog "
                           f"has no entry for {missing}; add a [models.\"NAME\"] table for each")
    tokens = catalog.expected_output_tokens(router.models)
    source = "artifact"
    if tokens is not None:
        router = router.with_prices(catalog.prices(), tokens)
        source = "catalog"
    if exploration is not None:
        try:
            router = router.with_exploration(exploration)
        except ValueError as exc:  # an excluded model the router does not know (a flag, a config or code named it)
            raise RouterMLError(str(exc)) from None
    return router, source


class HttpxUpstream:
    """Upstream calls through httpx (the library default): one pooled transport per scheme://host:port.

    Requests go straight to the transport: the client layer (cookies, auth flows, redirects, event hooks)
    has nothing to do here and cost about 0.3 ms of CPU per call on a 2-core machine. ``transport``: one
    httpx transport for every origin instead (tests, custom networking)."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None):
        self._transport = transport
        self._pools: dict[str, httpx.AsyncBaseTransport] = {}
        self._urls: dict[str, tuple[httpx.URL, str]] = {}

    async def send(self, label: str, url: str, headers: dict[str, str], payload: bytes,
                   timeout: float) -> httpx.Response:
        parsed = self._urls.get(label)
        if parsed is None:
            u = httpx.URL(url)  # parsed once per upstream
            parsed = self._urls[label] = (u, f"{u.scheme}://{u.netloc.decode('ascii')}")
        pool = self._pools.get(parsed[1])
        if pool is None:
            pool = self._pools[parsed[1]] = self._transport or httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=256), trust_env=False)
        request = httpx.Request("POST", parsed[0], content=payload, headers=headers,
                                extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout,
                                                        "pool": timeout}})
        response = await pool.handle_async_request(request)
        response.request = request
        return response

    async def aclose(self) -> None:
        for pool in set(self._pools.values()):
            await pool.aclose()
        self._pools.clear()


class AsyncRoutedClient:
    """Routes, calls and accounts chat completions (see the module doc). ``decision_log`` is a
    :class:`DecisionLog` or a path; ``log_prompts`` adds the routed text and the answer's text to
    each record (needed to train a router, and an answer scorer, on the log); ``on_complete`` is called
    with each finished :class:`RouteInfo`; ``clock`` (seconds,
    ``time.monotonic`` by default) drives the circuit breakers, so tests can step past a cooldown;
    ``upstream``: how upstreams are called - ``"httpx"`` (the default; ``transport`` replaces its pooled
    transports) or ``"http1"``, the lighter client ``router-ml serve`` uses (:mod:`router_ml._http1`);
    ``exploration`` makes the router explore (:meth:`Router.with_exploration`; rules and pins never do);
    ``cascade`` (a :class:`router_ml.cascade.Cascade`) answers the requests the router decides by a cascade
    - cheap model first, its answer scored, escalation when the score is low (:mod:`router_ml._cascading`)."""

    def __init__(self, router: Router, catalog: ProviderCatalog, *,
                 decision_log: DecisionLog | str | Path | None = None, log_prompts: bool = False,
                 willingness_to_pay: float | None = None,
                 on_complete: Callable[[RouteInfo], None] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, upstream: str = "httpx",
                 clock: Callable[[], float] = time.monotonic, exploration: Exploration | None = None,
                 cascade: Cascade | None = None):
        _check_arguments(router=router, catalog=catalog, on_complete=on_complete, transport=transport, clock=clock,
                         cascade=cascade)
        router, self.routing_prices = prepare_router(router, catalog, exploration)
        self.router = router
        self.cascade = cascade
        if cascade is not None:
            self._check_cascade(cascade, exploration, [("the router", router)])
        self.catalog = catalog
        self.settings = catalog.settings
        self.willingness_to_pay = router.willingness_to_pay if willingness_to_pay is None else \
            parse_knob(willingness_to_pay, "willingness_to_pay")
        self._own_log = not isinstance(decision_log, DecisionLog) and decision_log is not None
        self.decision_log = None  # opened last: a client that fails to build holds no log (nor its lock)
        self.log_prompts = log_prompts
        self.on_complete = on_complete
        self.log_errors = 0  # decision-log records that could not be written
        self._loop: asyncio.AbstractEventLoop | None = None  # the event loop its first call ran in
        #: why a request cancelled now was cancelled, when its owner knows better than "the caller" (the
        #: proxy, shutting down); None or a call returning None: the caller
        self.cancel_reason: Callable[[], str | None] | None = None
        if upstream == "http1":
            if transport is not None:
                raise RouterMLError("transport= is an httpx transport: give it with upstream='httpx' only")
            from router_ml._http1 import Http1Upstream  # httptools: the serve extra

            self._upstream: Any = Http1Upstream(max_connections=1000, max_keepalive=256)
        elif upstream == "httpx":
            self._upstream = HttpxUpstream(transport)
        else:
            raise RouterMLError(f"upstream must be 'httpx' or 'http1', got {upstream!r}")
        replicas = {name: m.replicas for name, m in catalog.items()}
        self._breakers = {r.label: CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_reset_s,
                                                  clock) for rs in replicas.values() for r in rs}
        self._picker = ReplicaPicker(replicas, self._breakers)
        self._headers = {r.label: self._upstream_headers(r) for rs in replicas.values() for r in rs}
        self.chat = _Chat(_AsyncCompletions(self))
        self.decision_log = DecisionLog(decision_log) if self._own_log else decision_log  # type: ignore[arg-type]

    @classmethod
    def from_files(cls, router: str | Path, providers: str | Path, *, verify: bool = False,
                   **kwargs: Any) -> AsyncRoutedClient:
        """Load a router artifact (one onnxruntime thread; ``verify`` re-scores its stored parity sample on
        this CPU, see :meth:`Router.load`) and a provider catalog, then build the client."""
        return cls(Router.load(router, intra_op_threads=1, verify=verify), ProviderCatalog.load(providers), **kwargs)

    # --- plumbing ------------------------------------------------------------------------------

    @staticmethod
    def _upstream_headers(replica: Replica) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
        if replica.api_key is not None:
            headers["authorization"] = "Bearer " + replica.api_key.reveal()
        return headers

    async def _send(self, replica: Replica, payload: bytes, timeout: float) -> Any:
        """POST ``payload`` to the replica; the response with its head read (``status_code``, ``headers``,
        ``aread()``, ``aiter_bytes()``, ``aclose()``), or the :class:`Failure` a transport error means."""
        try:
            return await self._upstream.send(replica.label, replica.url, self._headers[replica.label], payload,
                                             timeout)
        except httpx.HTTPError as exc:
            raise classify(exc, replica, self.catalog.redact) from None

    @staticmethod
    def _check_cascade(cascade: Cascade, exploration: Exploration | None, routers: list[tuple[str, Router]]) -> None:
        """Refuse a cascade that cannot serve: with exploration, or with no router it was fitted on."""
        if exploration is not None:
            # an escalation is chosen after seeing an answer, so its outcome is no draw of a routing policy
            # with a known propensity; exploring the first model would mix two logging policies in one record
            raise RouterMLError("a cascade and exploration cannot run together: the cascade's escalations have no "
                                "propensity for off-policy learning; serve the cascade, or explore without it")
        if not any(cascade.fits(router) for _, router in routers):
            where, router = routers[0]
            cascade.check_router(router, where=where)  # raises, naming what differs

    def _cascade_for(self, info: RouteInfo) -> Cascade | None:
        """The cascade that answers this request, or None (noting why in ``info.cascade``)."""
        cascade = self.cascade
        if cascade is None or info.rule is not None:  # pinned and rule-routed requests are never cascaded
            return None
        if info.stream:
            info.cascade = {"skipped": "stream"}
            return None
        sha = cascade.policy.router_sha256
        if tuple(info.scores or ()) != cascade.policy.models or (
                sha and (info.policy or {}).get("artifact_sha256") != sha):
            info.cascade = {"skipped": "router"}  # a router variant the policy was not fitted on
            return None
        return cascade

    def breaker(self, upstream: str) -> CircuitBreaker:
        """The circuit breaker of an upstream (``model#replica``)."""
        return self._breakers[upstream]

    def breakers(self) -> dict[str, CircuitBreaker]:
        return dict(self._breakers)

    async def aclose(self) -> None:
        await self._upstream.aclose()
        if self._own_log and self.decision_log is not None:
            self.decision_log.close()

    async def __aenter__(self) -> AsyncRoutedClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # --- deciding ------------------------------------------------------------------------------

    def decide(self, body: dict[str, Any], headers: Mapping[str, str] | None = None,
               willingness_to_pay: Any = None) -> tuple[RouteInfo, str]:
        """Validate ``body``, apply pins, rules and the router: a fresh :class:`RouteInfo` and the routed text
        (:func:`router_ml._decide.decide` with this client's router, catalog and default knob)."""
        return decide(body, router=self.router, catalog=self.catalog, default_knob=self.willingness_to_pay,
                      headers=headers, willingness_to_pay=willingness_to_pay)

    # --- calling -------------------------------------------------------------------------------

    @staticmethod
    def _payload(body: Mapping[str, Any], replica: Replica, stream: bool) -> tuple[bytes, bool]:
        out = {k: v for k, v in body.items() if k not in ROUTER_FIELDS}
        if "stream" in out and out["stream"] is None:  # null: not streaming, which a provider may not accept
            del out["stream"]
        out["model"] = replica.provider_model
        injected = False
        if stream and "stream_options" not in out:
            out["stream_options"] = {"include_usage": True}
            injected = True
        return _json.dumps(out, errors="surrogatepass"), injected

    async def _call(self, replica: Replica, payload: bytes, timeout: float) -> dict[str, Any]:
        response = await self._send(replica, payload, timeout)
        try:
            body = await response.aread()
        except httpx.HTTPError as exc:
            raise classify(exc, replica, self.catalog.redact) from None
        finally:
            await response.aclose()
        if not 200 <= response.status_code < 300:
            raise http_failure(response, body, self.catalog.redact)
        return parse_completion(body, response.status_code)

    async def _open(self, replica: Replica, payload: bytes, timeout: float) -> tuple[httpx.Response, Any, bytes]:
        response = await self._send(replica, payload, timeout)
        try:
            if not 200 <= response.status_code < 300:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > 4096:
                        break
                raise http_failure(response, body, self.catalog.redact)
            events, first = await first_event(response)
            return response, events, first
        except BaseException as exc:
            await response.aclose()
            if isinstance(exc, httpx.HTTPError):
                raise classify(exc, replica, self.catalog.redact) from None
            raise

    async def _dispatch(self, info: RouteInfo, body: dict[str, Any], started: float,
                        chain: tuple[str, ...] | None = None) -> Any:
        """Try ``chain`` (the catalog's fallback chain of ``info.chosen`` by default); returns the parsed
        completion, or ``(replica, response, events, first, injected)`` for a stream. Raises
        :class:`UpstreamError` when every attempt failed."""
        s = self.settings
        deadline = started + s.request_timeout_s
        stream = info.stream
        for model in chain or self.catalog.chain(info.chosen):
            tried: set[str] = set()
            for retry in range(s.max_retries + 1):
                replica = self._picker.pick(model, tried)
                if replica is None:
                    if retry == 0:
                        info.fallbacks.append(Attempt(model, None, "circuit_open",
                                                      f"circuit open after repeated failures; probing again in "
                                                      f"{self._picker.retry_in(model):.1f} s"))
                    break
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    self._breakers[replica.label].release()
                    return self._give_up(info, f"the request timeout ({s.request_timeout_s:g} s) ran out", chain)
                tried.add(replica.label)
                payload, injected = self._payload(body, replica, stream)
                t0 = time.perf_counter()
                try:
                    if stream:
                        response, events, first = await self._open(replica, payload, min(replica.timeout_s, remaining))
                        result: Any = (replica, response, events, first, injected)
                    else:
                        result = await self._call(replica, payload, min(replica.timeout_s, remaining))
                except Failure as failure:
                    elapsed = time.perf_counter() - t0
                    info.fallbacks.append(Attempt(model, replica.label, failure.kind, failure.reason, failure.status,
                                                  elapsed))
                    breaker = self._breakers[replica.label]
                    if failure.kind in BREAKER_KINDS:
                        breaker.failure()
                    else:
                        breaker.release()  # a 4xx/429 says nothing about the upstream's health
                    if failure.kind == "http_4xx" or retry == s.max_retries:
                        break
                    delay = backoff_delay(failure, retry, s)
                    if delay is None or time.perf_counter() + delay >= deadline:
                        break  # a long Retry-After, or no time left: fall back now
                    await asyncio.sleep(delay)
                    continue
                except BaseException:
                    self._breakers[replica.label].release()
                    raise
                if not stream:
                    self._breakers[replica.label].success()
                info.model, info.provider_model, info.upstream = model, replica.provider_model, replica.label
                return result
        return self._give_up(info, "every model in the fallback chain failed", chain)

    def _give_up(self, info: RouteInfo, why: str, chain: tuple[str, ...] | None = None) -> Any:
        reasons = "; ".join(f"{a.upstream or a.model}: {a.reason}" for a in info.fallbacks) or "nothing was tried"
        info.status = "error"
        info.error = self.catalog.redact(f"{why} (chain {chain or self.catalog.chain(info.chosen)}): {reasons}")
        raise UpstreamError(info, f"request {info.request_id}: {info.error}")

    def priced(self, model: str, input_tokens: int | None, output_tokens: int | None, input_chars: int,
               output_chars: int) -> tuple[int, int, bool, float]:
        """``(input tokens, output tokens, estimated, USD)`` of one answer of ``model``: the provider's usage,
        or ceil(chars / 4) where it reported none (``estimated``)."""
        estimated = input_tokens is None or output_tokens is None
        if input_tokens is None:
            input_tokens = (input_chars + 3) // 4
        if output_tokens is None:
            output_tokens = (output_chars + 3) // 4
        return input_tokens, output_tokens, estimated, self.catalog[model].price.cost(input_tokens, output_tokens)

    def _account(self, info: RouteInfo, input_chars: int, output_chars: int) -> None:
        if info.model is None:
            return
        info.input_tokens, info.output_tokens, estimated, info.cost_usd = self.priced(
            info.model, info.input_tokens, info.output_tokens, input_chars, output_chars)
        info.usage_estimated = info.usage_estimated or estimated

    def write_log(self, record: Mapping[str, Any]) -> OSError | None:
        """Append ``record`` to the decision log (there must be one). A write that fails (a full disk) is
        counted in ``log_errors`` (``router_ml_decision_log_errors_total``) and logged, not hidden, and its
        error returned: the caller decides what it costs (an answer is still returned, a rating refused)."""
        assert self.decision_log is not None
        try:
            self.decision_log.write(record)
        except OSError as exc:
            self.log_errors += 1
            _logger.error("router-ml: cannot write the decision log %s (%s); %d records lost so far",
                          self.decision_log.path, exc.strerror or exc, self.log_errors)
            return exc
        return None

    def _finish(self, info: RouteInfo, prompt: str | None, started: float, response: str | None = None) -> None:
        info.latency_s = round(time.perf_counter() - started, 6)
        if self.decision_log is not None:  # a full disk must not fail the answer (write_log counts it)
            self.write_log(info.record(prompt, response) if self.log_prompts else info.record(None))
        if self.on_complete is not None:
            self.on_complete(info)

    async def complete(self, body: dict[str, Any], *, headers: Mapping[str, str] | None = None,
                       willingness_to_pay: Any = None) -> ChatCompletion | UpstreamStream:
        """Route and call one chat completion (the proxy's entry point): a :class:`ChatCompletion`, or for
        ``stream: true`` an :class:`UpstreamStream` whose ``events()`` yields raw server-sent events."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None:  # httpx's pooled connections belong to the loop that opened them
                raise RouterMLError("this AsyncRoutedClient was first used in another event loop (an earlier "
                                    "asyncio.run, or another thread's loop), which holds its connections; build one "
                                    "client per event loop, or use RoutedClient, which runs its own")
            self._loop = loop
        started = time.perf_counter()
        info, text = self.decide(body, headers, willingness_to_pay)
        input_chars = request_chars(body["messages"])
        cascade = self._cascade_for(info)
        try:
            if cascade is not None:
                result = await run_cascade(self, cascade, info, body, text, started, input_chars)
            else:
                result = await self._dispatch(info, body, started)
        except UpstreamError:
            self._finish(info, text, started)
            raise
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                reason = self.cancel_reason() if self.cancel_reason is not None else None
                info.status, info.error = "cancelled", reason or "the caller cancelled the request"
            else:
                info.status, info.error = "error", f"internal error: {type(exc).__name__}"
            self._finish(info, text, started)
            raise
        if info.stream:
            replica, response, events, first, injected = result

            def on_close(info: RouteInfo, out_chars: int, answer: str | None) -> None:
                self._account(info, input_chars, out_chars)
                self._finish(info, text, started, answer)

            return UpstreamStream(info, replica, response, events, first, injected_usage=injected,
                                  breaker=self._breakers[replica.label], redact=self.catalog.redact,
                                  on_close=on_close, started=started, keep_text=self.log_prompts,
                                  cancel_reason=self.cancel_reason)
        if cascade is None:  # a cascade accounted for each of its calls
            info.input_tokens, info.output_tokens = usage_of(result)
            info.status = "ok"
            self._account(info, input_chars, output_chars(result))
        self._finish(info, text, started, answer_text(result) if self.log_prompts else None)
        completion = ChatCompletion(result)
        completion.router_ml = info
        return completion


class _AsyncCompletions:
    def __init__(self, client: AsyncRoutedClient):
        self._client = client

    async def create(self, *, messages: list[dict[str, Any]], model: str | None = None, stream: bool = False,
                     willingness_to_pay: float | None = None, extra_headers: Mapping[str, str] | None = None,
                     **params: Any) -> ChatCompletion | AsyncChatStream:
        """``client.chat.completions.create(model="router-ml", messages=[...], ...)``, as in the OpenAI SDK.
        Other keyword arguments go to the provider as they are; ``extra_headers`` feed the catalog's rules."""
        body = {"model": model or self._client.settings.route_model, "messages": messages, **params}
        if stream is not None and stream is not False:
            body["stream"] = stream  # anything but true is refused by the decide step, as the proxy refuses it
        if extra_headers is not None and (not isinstance(extra_headers, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in extra_headers.items())):
            raise TypeError(f"extra_headers must be a mapping of header names to strings (what the catalog's rules "
                            f"match), e.g. {{\"x-tier\": \"premium\"}}, got {extra_headers!r}")
        result = await self._client.complete(body, headers=extra_headers, willingness_to_pay=willingness_to_pay)
        return AsyncChatStream(result) if isinstance(result, UpstreamStream) else result


class _Chat:
    def __init__(self, completions: Any):
        self.completions = completions


class _SyncCompletions:
    def __init__(self, owner: RoutedClient):
        self._owner = owner

    def create(self, **kwargs: Any) -> ChatCompletion | ChatStream:
        """See :meth:`AsyncRoutedClient.chat.completions.create`."""
        result = self._owner._run(self._owner._async.chat.completions.create(**kwargs))
        return ChatStream(self._owner._run, result) if isinstance(result, AsyncChatStream) else result


def _check_arguments(*, router: Any, catalog: Any, on_complete: Any, transport: Any, clock: Any,
                     cascade: Any) -> None:
    """The client's arguments by type, before anything starts: a path in a router's place, a price catalog in
    the provider catalog's, or an ``on_complete`` that is not callable (found once only after a paid call)
    are a :class:`TypeError` saying what to give."""
    if not isinstance(router, Router):
        hint = " (a path: use .from_files(artifact, providers), or Router.load(path))" \
            if isinstance(router, str | Path) else " (Router.load(path))"
        raise TypeError(f"router must be a router_ml.Router{hint}, not {type(router).__name__}")
    if not isinstance(catalog, ProviderCatalog):
        hint = " (a path: use .from_files(artifact, providers), or ProviderCatalog.load(path))" \
            if isinstance(catalog, str | Path) else " (ProviderCatalog.load(path): a price catalog says what " \
            "models cost, a provider catalog where to call them)"
        raise TypeError(f"catalog must be a router_ml.ProviderCatalog{hint}, not {type(catalog).__name__}")
    for name, value in (("on_complete", on_complete), ("clock", clock)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable, not {type(value).__name__}")
    if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
        raise TypeError(f"transport must be an httpx.AsyncBaseTransport, not {type(transport).__name__}")
    if cascade is not None and not isinstance(cascade, Cascade):
        raise TypeError(f"cascade must be a router_ml.cascade.Cascade, not {type(cascade).__name__}")


class RoutedClient:
    """The synchronous :class:`AsyncRoutedClient`: same arguments, same behaviour; runs on a private event-loop
    thread. Close it (or use ``with``) when done."""

    def __init__(self, router: Router, catalog: ProviderCatalog, **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        try:
            self._async = AsyncRoutedClient(router, catalog, **kwargs)
        except BaseException:
            self._loop.close()  # its thread is started only once the client is built: nothing left running
            raise
        self._thread = threading.Thread(target=self._loop.run_forever, name="router-ml-client", daemon=True)
        self._thread.start()
        self.chat = _Chat(_SyncCompletions(self))

    @classmethod
    def from_files(cls, router: str | Path, providers: str | Path, *, verify: bool = False,
                   **kwargs: Any) -> RoutedClient:
        return cls(Router.load(router, intra_op_threads=1, verify=verify), ProviderCatalog.load(providers), **kwargs)

    @property
    def catalog(self) -> ProviderCatalog:
        return self._async.catalog

    def breaker(self, upstream: str) -> CircuitBreaker:
        return self._async.breaker(upstream)

    def decide(self, body: dict[str, Any], headers: Mapping[str, str] | None = None,
               willingness_to_pay: Any = None) -> tuple[RouteInfo, str]:
        """The decide step alone (:meth:`AsyncRoutedClient.decide`: validation, pins, rules, the router; no
        HTTP): a fresh :class:`RouteInfo` and the routed text."""
        return self._async.decide(body, headers=headers, willingness_to_pay=willingness_to_pay)

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
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
