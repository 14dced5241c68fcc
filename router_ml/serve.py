"""``router-ml serve``: an OpenAI-compatible HTTP proxy in front of the routed client.

Endpoints:

- ``POST /v1/chat/completions`` - route, call, fall back (:mod:`router_ml.client`); ``stream: true``
  passes server-sent events through one by one. ``model`` is ``"router-ml"`` (the catalog's
  ``route_model``) to route or a catalog model to pin it. The knob comes from the body field
  ``willingness_to_pay``, the header ``x-router-ml-willingness-to-pay``, or the artifact's default.
  The answer is the provider's JSON plus a ``router_ml`` object (request id, model, fallbacks,
  tokens, cost), and ``x-router-ml-request-id`` / ``x-router-ml-model`` headers.
- ``POST /v1/feedback`` - ``{"request_id": ..., "quality": 0..1}`` or ``{"request_id": ..., "thumbs": "up"}``.
- ``GET /v1/models``, ``GET /health`` (no auth), ``GET /metrics`` (Prometheus text format).

Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed
request (``param`` names the field), 401 without the client key, 413 for a body over the limit,
502 when every model of the fallback chain failed (the message lists each attempt's reason).

starlette, uvicorn and prometheus_client are imported only here (``pip install "router-ml[serve]"``).
"""

from __future__ import annotations

import gc
import hmac
import json
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from router_ml.client import AsyncRoutedClient, RequestError, RouteInfo, UpstreamError, UpstreamStream
from router_ml.decision_log import DecisionLog, FeedbackError, feedback_from
from router_ml.errors import RouterMLError
from router_ml.exploration import Exploration
from router_ml.optional import require
from router_ml.providers import is_loopback

__all__ = ["MULTIPROC_ENV", "Metrics", "create_app", "run_server"]

ROUTING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: prometheus_client's switch to multi-process mode: a directory the worker processes share
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The proxy's Prometheus metrics (``prometheus_client``; no key, no URL in any label).

    Each instance owns a :class:`prometheus_client.CollectorRegistry`, not the process-global default,
    so several apps in one process (the tests) count separately. Counters, the two latency histograms
    and the per-upstream circuit gauge keep the names the README lists (``router_ml_requests_total`` ...).

    Several worker processes: prometheus_client writes every counter and histogram to files in
    ``$PROMETHEUS_MULTIPROC_DIR`` when that variable is set before ``prometheus_client`` is first imported;
    :meth:`render` then exposes the sum over all workers through
    ``prometheus_client.multiprocess.MultiProcessCollector`` instead of this registry. The two values read
    from the live client at scrape time (``router_ml_circuit_open``, ``router_ml_decision_log_errors_total``)
    are the answering worker's own in that mode; a multi-worker server must move them to gauges with a
    ``multiprocess_mode`` (the directory must be emptied before the workers start).
    """

    def __init__(self, client: AsyncRoutedClient | None = None) -> None:
        prom = require("prometheus_client", extra="serve", purpose="router-ml serve's /metrics")
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prom.Counter("router_ml_requests", "Chat completion requests by final status.",
                                     ["status"], registry=r)
        self.decisions = prom.Counter("router_ml_decisions", "Routing decisions by chosen model and by what chose "
                                      "it.", ["model", "by"], registry=r)
        self.answers = prom.Counter("router_ml_answers", "Answers by the model that gave them.", ["model"],
                                    registry=r)
        self.fallbacks = prom.Counter("router_ml_fallbacks", "Failed upstream attempts (each led to a retry or a "
                                      "fallback).", ["upstream", "kind"], registry=r)
        self.cost = prom.Counter("router_ml_cost_usd", "Cost of answered requests in USD.", ["model"], registry=r)
        self.tokens = prom.Counter("router_ml_tokens", "Tokens of answered requests.", ["model", "direction"],
                                   registry=r)
        self.routing = prom.Histogram("router_ml_routing_latency_seconds", "Time to decide (validation, rules, "
                                      "router).", buckets=ROUTING_BUCKETS, registry=r)
        self.latency = prom.Histogram("router_ml_request_latency_seconds", "Time from request to answer (streams: "
                                      "to the last event).", buckets=REQUEST_BUCKETS, registry=r)
        self._client = client
        self._live = _LiveCollector(self)
        r.register(self._live)
        self.content_type: str = prom.CONTENT_TYPE_LATEST

    def attach(self, client: AsyncRoutedClient) -> None:
        """Read the circuit states and decision-log errors of ``client`` at each scrape."""
        self._client = client

    def count(self, status: str) -> None:
        """Count a request that ended before routing (unauthorized, bad request, too large)."""
        self.requests.labels(status).inc()

    def observe(self, info: RouteInfo) -> None:
        """Count one finished request (the client's ``on_complete`` hook)."""
        self.requests.labels(info.status).inc()
        self.decisions.labels(info.chosen, "router" if info.rule is None else "rule").inc()
        for attempt in info.fallbacks:
            self.fallbacks.labels(attempt.upstream or attempt.model, attempt.kind).inc()
        if info.model is not None:
            self.answers.labels(info.model).inc()
            if info.cost_usd is not None:
                self.cost.labels(info.model).inc(info.cost_usd)
            self.tokens.labels(info.model, "input").inc(info.input_tokens or 0)
            self.tokens.labels(info.model, "output").inc(info.output_tokens or 0)
        self.routing.observe(info.routing_ms / 1000)
        if info.latency_s is not None:
            self.latency.observe(info.latency_s)

    def render(self) -> bytes:
        """The Prometheus text exposition: this registry, or every worker's files in multi-process mode."""
        prom = self._prom
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return prom.generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = prom.CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        registry.register(_LiveCollector(self))
        return prom.generate_latest(registry)


class _LiveCollector:
    """Values read from the client at scrape time rather than counted as they happen."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        client = self._metrics._client
        errors = CounterMetricFamily("router_ml_decision_log_errors", "Decision-log records that could not be "
                                     "written.")
        circuit = GaugeMetricFamily("router_ml_circuit_open", "Whether an upstream's circuit breaker is open (1) or "
                                    "not (0).", labels=["upstream"])
        if client is not None:
            errors.add_metric([], client.log_errors)
            for label, breaker in sorted(client.breakers().items()):
                circuit.add_metric([label], int(breaker.state == "open"))
        yield errors
        yield circuit


def create_app(client: AsyncRoutedClient, *, api_key: str | None = None, max_body_bytes: int = 1 << 20,
               metrics: Metrics | None = None) -> Any:
    """The Starlette application. ``api_key``: clients must send ``Authorization: Bearer <api_key>``."""
    require("starlette", extra="serve", purpose="router-ml serve")
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    metrics = metrics or Metrics()
    metrics.attach(client)
    previous_hook = client.on_complete

    def on_complete(info: RouteInfo) -> None:
        metrics.observe(info)
        if previous_hook is not None:
            previous_hook(info)

    client.on_complete = on_complete
    expected = ("Bearer " + api_key).encode() if api_key else None
    route_model = client.settings.route_model

    def error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
              **extra: Any) -> Response:
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code, **extra}},
                            status_code=status)

    def unauthorized(request: Request) -> Response | None:
        if expected is None:
            return None
        given = request.headers.get("authorization", "").encode()
        if hmac.compare_digest(given, expected):
            return None
        metrics.count("unauthorized")
        return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the server "
                     "was started with", "authentication_error", code="invalid_api_key")

    async def read_json(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise _TooLarge()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise _TooLarge()
        try:
            return json.loads(body)
        except ValueError as exc:
            raise RequestError(None, f"the body is not valid JSON ({exc}); send a JSON object") from None

    def too_large() -> Response:
        metrics.count("too_large")
        return error(413, f"the request body is larger than {max_body_bytes} bytes (the server's --max-body-bytes)",
                     "invalid_request_error", code="request_too_large")

    async def chat_completions(request: Request) -> Response:
        denied = unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = await read_json(request)
            result = await client.complete(body, headers=request.headers)
        except _TooLarge:
            return too_large()
        except RequestError as exc:
            metrics.count("bad_request")
            return error(400, str(exc), "invalid_request_error", param=exc.field)
        except UpstreamError as exc:
            return error(502, str(exc), "upstream_error", code="all_providers_failed",
                         request_id=exc.info.request_id, attempts=[a.to_dict() for a in exc.attempts])
        if isinstance(result, UpstreamStream):
            info = result.info
            # the background task closes (and logs) a stream that was never iterated, e.g. the client left first
            return StreamingResponse(result.events(), media_type="text/event-stream",
                                     headers={"x-router-ml-request-id": info.request_id,
                                              "x-router-ml-model": info.model or "", "cache-control": "no-cache"},
                                     background=BackgroundTask(result.aclose))
        info = result.router_ml
        out = dict(result)
        out["router_ml"] = info.to_dict()
        return Response(json.dumps(out, ensure_ascii=False).encode("utf-8", errors="backslashreplace"),
                        media_type="application/json",
                        headers={"x-router-ml-request-id": info.request_id, "x-router-ml-model": info.model or ""})

    async def feedback(request: Request) -> Response:
        denied = unauthorized(request)
        if denied is not None:
            return denied
        if client.decision_log is None:
            return error(409, "this server keeps no decision log, so feedback has nowhere to go; restart it with "
                         "--decision-log FILE", "invalid_request_error", code="no_decision_log")
        try:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise RequestError(None, "the body must be a JSON object {\"request_id\", \"quality\" | \"thumbs\"}")
            record = feedback_from(body)
        except _TooLarge:
            return too_large()
        except RequestError as exc:
            return error(400, str(exc), "invalid_request_error", param=exc.field)
        except FeedbackError as exc:
            return error(400, str(exc), "invalid_request_error", param=exc.field)
        client.decision_log.write(record)
        return JSONResponse({"request_id": record["request_id"], "quality": record["quality"], "recorded": True})

    async def models(request: Request) -> Response:
        denied = unauthorized(request)
        if denied is not None:
            return denied
        names = [route_model, *client.catalog]
        return JSONResponse({"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                                          "owned_by": "router-ml"} for n in names]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "router_models": list(client.router.models),
                             "catalog_models": list(client.catalog), "routing_prices": client.routing_prices,
                             "upstreams": {k: b.state for k, b in sorted(client.breakers().items())},
                             "decision_log": str(client.decision_log.path) if client.decision_log else None})

    async def prometheus(request: Request) -> Response:
        denied = unauthorized(request)
        if denied is not None:
            return denied
        return Response(metrics.render(), headers={"content-type": metrics.content_type})

    @asynccontextmanager
    async def lifespan(app: Any):
        yield
        await client.aclose()

    app = Starlette(routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ], lifespan=lifespan)
    app.state.metrics = metrics
    app.state.client = client
    return app


class _TooLarge(Exception):
    pass


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``port`` 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without
    # it a response written in two parts waits for the client's delayed ACK (~40 ms per request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RouterMLError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app: Any, *, log_level: str = "warning") -> Any:
    uvicorn = require("uvicorn", extra="serve", purpose="router-ml serve")
    config = uvicorn.Config(app, log_level=log_level, access_log=False, server_header=False, date_header=False,
                            lifespan="on", timeout_graceful_shutdown=5, timeout_keep_alive=30)
    return uvicorn.Server(config)


def run_server(*, router: str, providers: str, host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, decision_log: str | None = None, log_prompts: bool = False,
               log_max_bytes: int = 64 << 20, log_fsync: bool = False, max_body_bytes: int = 1 << 20,
               willingness_to_pay: float | None = None, exploration: Exploration | None = None) -> None:
    """Load, bind and serve until interrupted (what ``router-ml serve`` runs)."""
    require("starlette", extra="serve", purpose="router-ml serve")
    require("uvicorn", extra="serve", purpose="router-ml serve")
    require("prometheus_client", extra="serve", purpose="router-ml serve")
    if not is_loopback(host) and not api_key:
        raise RouterMLError(f"--host {host} is not a loopback address, so clients must authenticate: export a "
                            f"secret (e.g. ROUTER_ML_API_KEY) and pass --api-key-env ROUTER_ML_API_KEY")
    log = DecisionLog(decision_log, max_bytes=log_max_bytes, fsync=log_fsync) if decision_log else None
    try:
        # verify: an int8 artifact whose routes drift on this CPU is refused before serving any request
        client = AsyncRoutedClient.from_files(router, providers, verify=True, decision_log=log,
                                              log_prompts=log_prompts, willingness_to_pay=willingness_to_pay,
                                              exploration=exploration)
        app = create_app(client, api_key=api_key, max_body_bytes=max_body_bytes)
        sock = bind(host, port)
    except BaseException:
        if log is not None:
            log.close()
        raise
    try:
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"router-ml: serving {len(client.router.models)}-model router on http://{shown}:{bound}/v1 "
              f"(catalog {providers}, routing prices from the {client.routing_prices}, decision log "
              f"{log.path if log else 'off'}{', with prompts' if log and log_prompts else ''}, exploration "
              f"{exploration.to_dict() if exploration else 'off'})",
              file=sys.stderr, flush=True)
        if log is not None and log.repaired_bytes:
            print(f"router-ml: moved a truncated last line ({log.repaired_bytes} bytes) of {log.path} to "
                  f"{log.path}.partial", file=sys.stderr, flush=True)
        server = make_server(app)
        # everything alive now (the router, onnxruntime, the libraries) lives as long as the server: keep it
        # out of the cyclic GC's scans, which otherwise pause request handling for milliseconds under load
        gc.collect()
        gc.freeze()
        server.run(sockets=[sock])
    finally:
        sock.close()
        if log is not None:
            log.close()
