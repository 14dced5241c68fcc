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

The hot path (CPU per request): uvicorn keeps the server around the requests (sockets, signals, the lifespan,
the graceful shutdown) but each connection is the proxy's own HTTP/1.1 protocol (:mod:`router_ml._serve_http`:
httptools' parser straight into :class:`ProxyApp`'s handlers, one write per answer), upstream calls go
through the proxy's own keep-alive client (:mod:`router_ml._http1`, ``upstream="http1"``; the library
default stays httpx), bodies and log lines are parsed and written by orjson (:mod:`router_ml._json`) and
the metrics' label children are looked up once. Every behaviour above is the same as on the general stack.

uvicorn, httptools, orjson and prometheus_client are imported only when serving (``pip install
"router-ml[serve]"``).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from router_ml import _json
from router_ml._serve_http import Reply, Request, Stream
from router_ml.client import AsyncRoutedClient, RequestError, RouteInfo, UpstreamError, UpstreamStream
from router_ml.decision_log import DecisionLog, FeedbackError, feedback_from, worker_log_path
from router_ml.errors import RouterMLError
from router_ml.exploration import Exploration
from router_ml.optional import require
from router_ml.providers import ProviderCatalog, is_loopback
from router_ml.serve_metrics import MULTIPROC_ENV, Metrics
from router_ml.serve_server import Lifecycle, make_server
from router_ml.variants import VariantClient, VariantSource

__all__ = ["MULTIPROC_ENV", "Lifecycle", "Metrics", "ProxyApp", "Worker", "bind", "create_app", "make_server",
           "run_server"]


async def reload_variants(client: Any) -> list[dict[str, Any]]:
    """Hot-swap the variants of a :class:`~router_ml.variants.VariantClient` and say so on stderr."""
    if not isinstance(client, VariantClient):
        raise RouterMLError("this server has no router variants to reload (it was built on a plain client)")
    variants = await client.reload()
    shown = ", ".join(f"{v['name']}={v['artifact']} ({v['share']:.0%})" for v in variants)
    print(f"router-ml: reloaded the router variants (pid {os.getpid()}): {shown}", file=sys.stderr, flush=True)
    return variants


_JSON = b"application/json"


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
           **extra: Any) -> Reply:
    """An OpenAI-style error answer."""
    return Reply(status, _json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code,
                                                **extra}}))


def _ok(obj: Any, status: int = 200) -> Reply:
    return Reply(status, _json.dumps(obj))


class ProxyApp:
    """The proxy: every endpoint of the module doc as a handler from a parsed :class:`Request` to a
    :class:`Reply` or :class:`Stream` (:meth:`handle`). ``router-ml serve`` feeds it from its own HTTP/1.1
    protocol (:mod:`router_ml._serve_http`); it is also a plain ASGI application (``__call__``: HTTP and
    lifespan), so any ASGI server can run it. See :func:`create_app` for the options."""

    def __init__(self, client: AsyncRoutedClient, *, api_key: str | None, max_body_bytes: int, metrics: Metrics,
                 admin_key: str | None, lifecycle: Lifecycle, on_reload: Callable[[], None] | None):
        self.client, self.metrics, self.lifecycle, self.on_reload = client, metrics, lifecycle, on_reload
        self.max_body_bytes = max_body_bytes
        self._expected = ("Bearer " + api_key).encode() if api_key else None
        self._admin_expected = ("Bearer " + admin_key).encode() if admin_key else None
        self.state = SimpleNamespace(metrics=metrics, client=client, lifecycle=lifecycle)
        self._routes: dict[tuple[str, str], Callable[[Request], Awaitable[Reply | Stream]]] = {
            ("POST", "/v1/chat/completions"): self.chat_completions, ("POST", "/v1/feedback"): self.feedback,
            ("GET", "/v1/models"): self.models, ("GET", "/health"): self.health, ("GET", "/ready"): self.ready,
            ("GET", "/metrics"): self.prometheus, ("POST", "/admin/reload"): self.admin_reload}
        self._paths = {path for _, path in self._routes}

    # --- dispatch --------------------------------------------------------------------------------

    def handle(self, request: Request) -> Awaitable[Reply | Stream]:
        """The answer to one request (a coroutine): its endpoint's, or a 404/405."""
        route = self._routes.get((request.method, request.path))
        if route is not None:
            return route(request)
        return self._not_routed(request)

    async def _not_routed(self, request: Request) -> Reply:
        if request.path in self._paths:
            allowed = ", ".join(m for m, p in self._routes if p == request.path)
            reply = _error(405, f"{request.method} is not allowed on {request.path}; use {allowed}",
                           "invalid_request_error", code="method_not_allowed")
            reply.headers = (("allow", allowed),)
            return reply
        return _error(404, f"no endpoint {request.path}; see /v1/chat/completions, /v1/models, /health",
                      "invalid_request_error", code="not_found")

    def _denied(self, request: Request) -> Reply | None:
        if self._expected is None:
            return None
        if hmac.compare_digest(request.headers.get("authorization", "").encode(), self._expected):
            return None
        self.metrics.count("unauthorized")
        return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the server "
                      "was started with", "authentication_error", code="invalid_api_key")

    def _too_large(self) -> Reply:
        self.metrics.count("too_large")
        return _error(413, f"the request body is larger than {self.max_body_bytes} bytes (the server's "
                      f"--max-body-bytes)", "invalid_request_error", code="request_too_large")

    @staticmethod
    def _json_body(request: Request) -> Any:
        try:
            return _json.loads(request.body)
        except ValueError as exc:
            raise RequestError(None, f"the body is not valid JSON ({exc}); send a JSON object") from None

    # --- endpoints -------------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Reply | Stream:
        denied = self._denied(request)
        if denied is not None:
            return denied
        if request.too_large:
            return self._too_large()
        try:
            result = await self.client.complete(self._json_body(request), headers=request.headers)
        except RequestError as exc:
            self.metrics.count("bad_request")
            return _error(400, str(exc), "invalid_request_error", param=exc.field)
        except UpstreamError as exc:
            return _error(502, str(exc), "upstream_error", code="all_providers_failed",
                          request_id=exc.info.request_id, attempts=[a.to_dict() for a in exc.attempts])
        if isinstance(result, UpstreamStream):
            info = result.info
            events = result.events()

            async def close() -> None:  # also closes (and logs) a stream never iterated: the client left first
                await events.aclose()
                await result.aclose()

            return Stream(events, close, headers=(("x-router-ml-request-id", info.request_id),
                                                  ("x-router-ml-model", info.model or ""),
                                                  ("cache-control", "no-cache")))
        info = result.router_ml
        result["router_ml"] = info.to_dict()  # the completion is this request's own: no copy
        return Reply(200, _json.dumps(result), _JSON, (("x-router-ml-request-id", info.request_id),
                                                    ("x-router-ml-model", info.model or "")))

    async def feedback(self, request: Request) -> Reply:
        denied = self._denied(request)
        if denied is not None:
            return denied
        log = self.client.decision_log
        if log is None:
            return _error(409, "this server keeps no decision log, so feedback has nowhere to go; restart it with "
                          "--decision-log FILE", "invalid_request_error", code="no_decision_log")
        if request.too_large:
            return self._too_large()
        try:
            body = self._json_body(request)
            if not isinstance(body, dict):
                raise RequestError(None, "the body must be a JSON object {\"request_id\", \"quality\" | \"thumbs\"}")
            record = feedback_from(body)
        except (RequestError, FeedbackError) as exc:
            return _error(400, str(exc), "invalid_request_error", param=exc.field)
        log.write(record)
        return _ok({"request_id": record["request_id"], "quality": record["quality"], "recorded": True})

    async def models(self, request: Request) -> Reply:
        denied = self._denied(request)
        if denied is not None:
            return denied
        names = [self.client.settings.route_model, *self.client.catalog]
        return _ok({"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "router-ml"}
                                               for n in names]})

    async def health(self, request: Request) -> Reply:
        client = self.client
        split = getattr(client, "split", None)
        return _ok({"status": "ok", "pid": os.getpid(), "router_models": list(client.router.models),
                    "variants": split.to_list() if split is not None else None,
                    "catalog_models": list(client.catalog), "routing_prices": client.routing_prices,
                    "upstreams": {k: b.state for k, b in sorted(client.breakers().items())},
                    "decision_log": str(client.decision_log.path) if client.decision_log else None})

    async def ready(self, request: Request) -> Reply:
        reason = self.lifecycle.reason()
        return _ok({"ready": reason is None, "reason": reason}, 200 if reason is None else 503)

    async def admin_reload(self, request: Request) -> Reply:
        if self._admin_expected is None:
            return _error(403, "the admin endpoint is off: start the server with --admin-key-env NAME (an "
                          "environment variable holding the admin key), or send SIGHUP to reload", "permission_error",
                          code="admin_disabled")
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), self._admin_expected):
            return _error(401, "missing or wrong admin key: send 'Authorization: Bearer <admin key>'",
                          "authentication_error", code="invalid_admin_key")
        try:
            variants = await reload_variants(self.client)
        except RouterMLError as exc:
            return _error(500, f"reload failed, the current variants keep serving: {exc}", "server_error",
                          code="reload_failed")
        if self.on_reload is not None:
            self.on_reload()
        return _ok({"reloaded": True, "pid": os.getpid(), "variants": variants,
                    "other_workers": "reloading" if self.on_reload is not None else None})

    async def prometheus(self, request: Request) -> Reply:
        denied = self._denied(request)
        if denied is not None:
            return denied
        return Reply(200, self.metrics.render(), self.metrics.content_type.encode("latin-1"))

    # --- ASGI ------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """ASGI: the lifespan (ready at startup; at shutdown not ready, the upstream pools closed) and HTTP."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.lifecycle.ready = True
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.lifecycle.ready = False
                    await self.client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body, too_large, more = bytearray(), False, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if not too_large:
                body += message.get("body", b"")
                too_large = len(body) > self.max_body_bytes
            more = message.get("more_body", False)
        headers = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        reply = await self.handle(Request(scope["method"], scope["path"], headers, b"" if too_large else bytes(body),
                                          too_large))
        head = [(b"content-type", reply.content_type)]
        head += [(k.encode("latin-1"), v.encode("latin-1", errors="replace")) for k, v in reply.headers]
        if isinstance(reply, Stream):
            await send({"type": "http.response.start", "status": 200, "headers": head})
            try:
                async for event in reply.events:
                    await send({"type": "http.response.body", "body": event, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await reply.aclose()
        else:
            await send({"type": "http.response.start", "status": reply.status, "headers": head})
            await send({"type": "http.response.body", "body": reply.body})


def create_app(client: AsyncRoutedClient, *, api_key: str | None = None, max_body_bytes: int = 1 << 20,
               metrics: Metrics | None = None, admin_key: str | None = None, lifecycle: Lifecycle | None = None,
               on_reload: Callable[[], None] | None = None) -> ProxyApp:
    """The proxy application (:class:`ProxyApp`). ``api_key``: clients must send ``Authorization: Bearer
    <api_key>``; ``admin_key``: what ``POST /admin/reload`` needs (the endpoint is off without one);
    ``lifecycle``: what ``/ready`` reports (ready from startup when not given); ``on_reload``: called after
    an admin reload succeeded (a worker tells its supervisor, which reloads the other workers)."""
    metrics = metrics or Metrics()
    metrics.attach(client)
    previous_hook = client.on_complete

    def on_complete(info: RouteInfo) -> None:
        metrics.observe(info)
        if previous_hook is not None:
            previous_hook(info)

    client.on_complete = on_complete
    return ProxyApp(client, api_key=api_key, max_body_bytes=max_body_bytes, metrics=metrics, admin_key=admin_key,
                    lifecycle=lifecycle or Lifecycle(), on_reload=on_reload)


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
                         willingness_to_pay=willingness_to_pay, decision_log=decision_log, log_prompts=log_prompts,
                         upstream="http1")


def run_server(*, router: str | None = None, providers: str, variants: VariantSource | None = None,
               host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, admin_key: str | None = None,
               decision_log: str | None = None, log_prompts: bool = False, log_max_bytes: int = 64 << 20,
               log_fsync: bool = False, max_body_bytes: int = 1 << 20, willingness_to_pay: float | None = None,
               exploration: Exploration | None = None, drain_s: float = 0.0, shutdown_timeout_s: float = 30.0,
               worker: Worker | None = None) -> None:
    """Load, bind and serve until SIGTERM/SIGINT (what ``router-ml serve`` runs, and each of its workers).

    ``router`` (one artifact, the variant ``default``) or ``variants``; ``worker``: run as one worker of a
    supervisor - serve its inherited socket, write the slot's own decision-log file, report readiness."""
    for module in ("uvicorn", "httptools", "prometheus_client"):
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
