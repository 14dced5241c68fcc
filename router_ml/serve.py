"""``router-ml serve``: an OpenAI-compatible HTTP proxy in front of the routed client.

Endpoints:

- ``POST /v1/chat/completions`` - route, call, fall back (:mod:`router_ml.client`); ``stream: true``
  passes server-sent events through one by one. ``model`` is ``"router-ml"`` (the catalog's
  ``route_model``) to route or a catalog model to pin it. The knob comes from the body field
  ``willingness_to_pay``, the header ``x-router-ml-willingness-to-pay``, or the artifact's default.
  The answer is the provider's JSON plus a ``router_ml`` object (request id, model, fallbacks,
  tokens, cost, the router variant), and ``x-router-ml-request-id`` / ``x-router-ml-model`` headers.
- ``POST /v1/feedback`` - ``{"request_id": ..., "quality": 0..1}`` or ``{"request_id": ..., "thumbs": "up"}``.
- ``GET /v1/models``, ``GET /metrics`` (Prometheus text format; summed over workers, :mod:`router_ml.serve_metrics`).
- ``GET /health`` (no auth): liveness - the process answers - with the router variants and circuit states.
- ``GET /ready`` (no auth): readiness - 200 while the server takes traffic, 503 once it drains (SIGTERM).
- ``POST /admin/reload`` (``Authorization: Bearer <admin key>``, off without ``--admin-key-env``): hot-swap
  the router variants (:mod:`router_ml.variants`); SIGHUP does the same.

Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed
request (``param`` names the field), 401 without the client key, 413 for a body over the limit,
502 when every model of the fallback chain failed (the message lists each attempt's reason).

Graceful shutdown: SIGTERM (or SIGINT) turns ``/ready`` to 503 at once, keeps serving for ``drain_s``
seconds (``--drain-seconds``: time for a load balancer to see it and stop sending), then stops
accepting connections and waits up to ``shutdown_timeout_s`` for every request in flight - streams
included - to be answered and logged (each record is written whole when its request ends, so the log
needs no flush), closes the upstream pools and the log and exits 0. Several workers:
:mod:`router_ml.workers`.

starlette, uvicorn and prometheus_client are imported only here (``pip install "router-ml[serve]"``).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router_ml.client import AsyncRoutedClient, RequestError, RouteInfo, UpstreamError, UpstreamStream
from router_ml.decision_log import DecisionLog, FeedbackError, feedback_from, worker_log_path
from router_ml.errors import RouterMLError
from router_ml.exploration import Exploration
from router_ml.optional import require
from router_ml.providers import ProviderCatalog, is_loopback
from router_ml.serve_metrics import MULTIPROC_ENV, Metrics
from router_ml.serve_server import Lifecycle, make_server
from router_ml.variants import VariantClient, VariantSource

__all__ = ["MULTIPROC_ENV", "Lifecycle", "Metrics", "Worker", "bind", "create_app", "make_server", "run_server"]


async def reload_variants(client: Any) -> list[dict[str, Any]]:
    """Hot-swap the variants of a :class:`~router_ml.variants.VariantClient` and say so on stderr."""
    if not isinstance(client, VariantClient):
        raise RouterMLError("this server has no router variants to reload (it was built on a plain client)")
    variants = await client.reload()
    shown = ", ".join(f"{v['name']}={v['artifact']} ({v['share']:.0%})" for v in variants)
    print(f"router-ml: reloaded the router variants (pid {os.getpid()}): {shown}", file=sys.stderr, flush=True)
    return variants


def create_app(client: AsyncRoutedClient, *, api_key: str | None = None, max_body_bytes: int = 1 << 20,
               metrics: Metrics | None = None, admin_key: str | None = None, lifecycle: Lifecycle | None = None,
               on_reload: Callable[[], None] | None = None) -> Any:
    """The Starlette application. ``api_key``: clients must send ``Authorization: Bearer <api_key>``;
    ``admin_key``: what ``POST /admin/reload`` needs (the endpoint is off without one); ``lifecycle``: what
    ``/ready`` reports (ready from startup when not given); ``on_reload``: called after an admin reload
    succeeded (a worker tells its supervisor, which reloads the other workers)."""
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
    admin_expected = ("Bearer " + admin_key).encode() if admin_key else None
    route_model = client.settings.route_model
    lifecycle = lifecycle or Lifecycle()

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
        split = getattr(client, "split", None)
        return JSONResponse({"status": "ok", "pid": os.getpid(), "router_models": list(client.router.models),
                             "variants": split.to_list() if split is not None else None,
                             "catalog_models": list(client.catalog), "routing_prices": client.routing_prices,
                             "upstreams": {k: b.state for k, b in sorted(client.breakers().items())},
                             "decision_log": str(client.decision_log.path) if client.decision_log else None})

    async def ready(request: Request) -> Response:
        reason = lifecycle.reason()
        return JSONResponse({"ready": reason is None, "reason": reason}, status_code=200 if reason is None else 503)

    async def admin_reload(request: Request) -> Response:
        if admin_expected is None:
            return error(403, "the admin endpoint is off: start the server with --admin-key-env NAME (an environment "
                         "variable holding the admin key), or send SIGHUP to reload", "permission_error",
                         code="admin_disabled")
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), admin_expected):
            return error(401, "missing or wrong admin key: send 'Authorization: Bearer <admin key>'",
                         "authentication_error", code="invalid_admin_key")
        try:
            variants = await reload_variants(client)
        except RouterMLError as exc:
            return error(500, f"reload failed, the current variants keep serving: {exc}", "server_error",
                         code="reload_failed")
        if on_reload is not None:
            on_reload()
        return JSONResponse({"reloaded": True, "pid": os.getpid(), "variants": variants,
                             "other_workers": "reloading" if on_reload is not None else None})

    async def prometheus(request: Request) -> Response:
        denied = unauthorized(request)
        if denied is not None:
            return denied
        return Response(metrics.render(), headers={"content-type": metrics.content_type})

    @asynccontextmanager
    async def lifespan(app: Any):
        lifecycle.ready = True
        yield
        lifecycle.ready = False
        await client.aclose()

    app = Starlette(routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/admin/reload", admin_reload, methods=["POST"]),
    ], lifespan=lifespan)
    app.state.metrics = metrics
    app.state.client = client
    app.state.lifecycle = lifecycle
    return app


class _TooLarge(Exception):
    pass


def check_open_bind(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond the loopback interface without a client key."""
    if not is_loopback(host) and not api_key:
        raise RouterMLError(f"--host {host} is not a loopback address, so clients must authenticate: export a "
                            f"secret (e.g. ROUTER_ML_API_KEY) and pass --api-key-env ROUTER_ML_API_KEY")


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


@dataclass
class Worker:
    """One of ``router-ml serve --workers N``'s processes (:mod:`router_ml.workers`): its slot (which decision-log
    file it writes), the listening socket it shares, and how it tells the supervisor it is up."""

    slot: int
    sock: socket.socket
    ready: Callable[[str], None]


def build_client(*, providers: str, variants: VariantSource, decision_log: DecisionLog | None, log_prompts: bool,
                 willingness_to_pay: float | None, exploration: Exploration | None) -> VariantClient:
    """The serving client: every variant loaded and verified on this CPU (an int8 artifact whose routes drift
    here is refused before any request is served)."""
    return VariantClient(variants, ProviderCatalog.load(providers), exploration=exploration,
                         willingness_to_pay=willingness_to_pay, decision_log=decision_log, log_prompts=log_prompts)


def run_server(*, router: str | None = None, providers: str, variants: VariantSource | None = None,
               host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, admin_key: str | None = None,
               decision_log: str | None = None, log_prompts: bool = False, log_max_bytes: int = 64 << 20,
               log_fsync: bool = False, max_body_bytes: int = 1 << 20, willingness_to_pay: float | None = None,
               exploration: Exploration | None = None, drain_s: float = 0.0, shutdown_timeout_s: float = 30.0,
               worker: Worker | None = None) -> None:
    """Load, bind and serve until SIGTERM/SIGINT (what ``router-ml serve`` runs, and each of its workers).

    ``router`` (one artifact, the variant ``default``) or ``variants``; ``worker``: run as one worker of a
    supervisor - serve its inherited socket, write the slot's own decision-log file, report readiness."""
    for module in ("starlette", "uvicorn", "prometheus_client"):
        require(module, extra="serve", purpose="router-ml serve")
    check_open_bind(host, api_key)
    if variants is None:
        if router is None:
            raise RouterMLError("give a router artifact (--artifact) or router variants (--variant / --variants)")
        from router_ml.variants import VariantSpec

        variants = VariantSource([VariantSpec("default", str(router), 1.0)])
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload asked for while loading: the files are read now
    path = None if not decision_log else worker_log_path(decision_log, worker.slot if worker else 0)
    log = DecisionLog(path, max_bytes=log_max_bytes, fsync=log_fsync) if path else None
    sock = None
    try:
        client = build_client(providers=providers, variants=variants, decision_log=log, log_prompts=log_prompts,
                              willingness_to_pay=willingness_to_pay, exploration=exploration)
        on_reload = None if worker is None else functools.partial(os.kill, os.getppid(), signal.SIGHUP)
        app = create_app(client, api_key=api_key, admin_key=admin_key, max_body_bytes=max_body_bytes,
                         on_reload=on_reload)
        sock = worker.sock if worker is not None else bind(host, port)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        split = ", ".join(f"{v.name} {v.weight / client.split.total:.0%}" for v in client.split.variants)
        banner = (f"serving {len(client.router.models)}-model router on http://{shown}:{bound}/v1 (variants "
                  f"{split} from {variants.describe()}; catalog {providers}, routing prices from the "
                  f"{client.routing_prices}, decision log {log.path if log else 'off'}"
                  f"{', with prompts' if log and log_prompts else ''}, exploration "
                  f"{exploration.to_dict() if exploration else 'off'})")
        if worker is None:
            print(f"router-ml: {banner}", file=sys.stderr, flush=True)
        if log is not None and log.repaired_bytes:
            print(f"router-ml: moved a truncated last line ({log.repaired_bytes} bytes) of {log.path} to "
                  f"{log.path}.partial", file=sys.stderr, flush=True)

        def hangup() -> None:
            async def reload() -> None:
                try:
                    await reload_variants(client)
                except RouterMLError as exc:
                    print(f"router-ml: error: reload failed, the current variants keep serving: {exc}",
                          file=sys.stderr, flush=True)
            asyncio.ensure_future(reload())

        server = make_server(app, drain_s=drain_s, shutdown_timeout_s=shutdown_timeout_s, on_hangup=hangup,
                             on_started=None if worker is None else functools.partial(worker.ready, banner))
        # everything alive now (the router, onnxruntime, the libraries) lives as long as the server: keep it
        # out of the cyclic GC's scans, which otherwise pause request handling for milliseconds under load
        gc.collect()
        gc.freeze()
        # uvicorn re-raises the SIGTERM it drained on once it is done: ignored, the log closes and we exit 0
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.run(sockets=[sock])
    finally:
        if sock is not None:
            sock.close()
        if log is not None:
            log.close()
