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

starlette and uvicorn are imported only here (``pip install "router-ml[serve]"``).
"""

from __future__ import annotations

import gc
import hmac
import json
import math
import socket
import sys
import threading
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from router_ml._optional import require
from router_ml.client import AsyncRoutedClient, RequestError, RouteInfo, UpstreamError, _Stream
from router_ml.decision_log import DecisionLog, FeedbackError, feedback_record
from router_ml.errors import RouterMLError
from router_ml.providers import is_loopback

__all__ = ["Metrics", "create_app", "run_server"]

ROUTING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += count
            le = "+Inf" if math.isinf(bound) else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {running}')
        out += [f"{name}_sum {self.sum!r}", f"{name}_count {running}"]
        return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and histograms of the proxy, rendered in the Prometheus text format (no key, no URL)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = defaultdict(int)  # status -> count
        self.decisions: dict[tuple[str, str], int] = defaultdict(int)  # (model, by) -> count
        self.answers: dict[str, int] = defaultdict(int)
        self.fallbacks: dict[tuple[str, str], int] = defaultdict(int)  # (upstream, kind) -> count
        self.cost: dict[str, float] = defaultdict(float)
        self.tokens: dict[tuple[str, str], int] = defaultdict(int)
        self.routing = _Histogram(ROUTING_BUCKETS)
        self.latency = _Histogram(REQUEST_BUCKETS)

    def count(self, status: str) -> None:
        with self._lock:
            self.requests[status] += 1

    def observe(self, info: RouteInfo) -> None:
        with self._lock:
            self.requests[info.status] += 1
            self.decisions[(info.chosen, "router" if info.rule is None else "rule")] += 1
            for attempt in info.fallbacks:
                self.fallbacks[(attempt.upstream or attempt.model, attempt.kind)] += 1
            if info.model is not None:
                self.answers[info.model] += 1
                if info.cost_usd is not None:
                    self.cost[info.model] += info.cost_usd
                self.tokens[(info.model, "input")] += info.input_tokens or 0
                self.tokens[(info.model, "output")] += info.output_tokens or 0
            self.routing.observe(info.routing_ms / 1000)
            if info.latency_s is not None:
                self.latency.observe(info.latency_s)

    def render(self, client: AsyncRoutedClient) -> str:
        with self._lock:
            lines = [
                "# HELP router_ml_requests_total Chat completion requests by final status.",
                "# TYPE router_ml_requests_total counter",
                *(f'router_ml_requests_total{{status="{_label(s)}"}} {n}' for s, n in sorted(self.requests.items())),
                "# HELP router_ml_decisions_total Routing decisions by chosen model and by what chose it.",
                "# TYPE router_ml_decisions_total counter",
                *(f'router_ml_decisions_total{{model="{_label(m)}",by="{b}"}} {n}'
                  for (m, b), n in sorted(self.decisions.items())),
                "# HELP router_ml_answers_total Answers by the model that gave them.",
                "# TYPE router_ml_answers_total counter",
                *(f'router_ml_answers_total{{model="{_label(m)}"}} {n}' for m, n in sorted(self.answers.items())),
                "# HELP router_ml_fallbacks_total Failed upstream attempts (each led to a retry or a fallback).",
                "# TYPE router_ml_fallbacks_total counter",
                *(f'router_ml_fallbacks_total{{upstream="{_label(u)}",kind="{k}"}} {n}'
                  for (u, k), n in sorted(self.fallbacks.items())),
                "# HELP router_ml_cost_usd_total Cost of answered requests in USD.",
                "# TYPE router_ml_cost_usd_total counter",
                *(f'router_ml_cost_usd_total{{model="{_label(m)}"}} {c!r}' for m, c in sorted(self.cost.items())),
                "# HELP router_ml_tokens_total Tokens of answered requests.",
                "# TYPE router_ml_tokens_total counter",
                *(f'router_ml_tokens_total{{model="{_label(m)}",direction="{d}"}} {n}'
                  for (m, d), n in sorted(self.tokens.items())),
                "# HELP router_ml_routing_latency_seconds Time to decide (validation, rules, router).",
                "# TYPE router_ml_routing_latency_seconds histogram",
                *self.routing.lines("router_ml_routing_latency_seconds"),
                "# HELP router_ml_request_latency_seconds Time from request to answer (streams: to the last event).",
                "# TYPE router_ml_request_latency_seconds histogram",
                *self.latency.lines("router_ml_request_latency_seconds"),
            ]
        lines += ["# HELP router_ml_decision_log_errors_total Decision-log records that could not be written.",
                  "# TYPE router_ml_decision_log_errors_total counter",
                  f"router_ml_decision_log_errors_total {client.log_errors}"]
        lines += ["# HELP router_ml_circuit_open Whether an upstream's circuit breaker is open (1) or not (0).",
                  "# TYPE router_ml_circuit_open gauge"]
        for label, breaker in sorted(client.breakers().items()):
            lines.append(f'router_ml_circuit_open{{upstream="{_label(label)}"}} {int(breaker.state == "open")}')
        return "\n".join(lines) + "\n"


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
        if isinstance(result, _Stream):
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
            unknown = set(body) - {"request_id", "quality", "thumbs", "comment"}
            if unknown:
                raise RequestError(sorted(unknown)[0], "unknown field; send request_id and quality or thumbs "
                                   "(and an optional comment)")
            record = feedback_record(body.get("request_id"), quality=body.get("quality"), thumbs=body.get("thumbs"),
                                     comment=body.get("comment"))
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
        return Response(metrics.render(client), media_type="text/plain; version=0.0.4; charset=utf-8")

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
               willingness_to_pay: float | None = None) -> None:
    """Load, bind and serve until interrupted (what ``router-ml serve`` runs)."""
    require("starlette", extra="serve", purpose="router-ml serve")
    require("uvicorn", extra="serve", purpose="router-ml serve")
    if not is_loopback(host) and not api_key:
        raise RouterMLError(f"--host {host} is not a loopback address, so clients must authenticate: export a "
                            f"secret (e.g. ROUTER_ML_API_KEY) and pass --api-key-env ROUTER_ML_API_KEY")
    log = DecisionLog(decision_log, max_bytes=log_max_bytes, fsync=log_fsync) if decision_log else None
    try:
        client = AsyncRoutedClient.from_files(router, providers, decision_log=log, log_prompts=log_prompts,
                                              willingness_to_pay=willingness_to_pay)
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
              f"{log.path if log else 'off'}{', with prompts' if log and log_prompts else ''})",
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
