"""The proxy application of ``router-ml serve``: every endpoint as a handler from a parsed request to an answer.

:class:`ProxyApp` is what :mod:`router_ml.serve` runs (endpoints, errors and headers: see that module's
doc). ``router-ml serve`` feeds it from its own HTTP/1.1 protocol (:mod:`router_ml._serve_http`), so no
framework object is built per request; it is also a plain ASGI application for any ASGI server.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import os
import urllib.parse
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from router_ml import _json
from router_ml._serve_http import Reply, Request, Stream
from router_ml._stderr import say
from router_ml.client import AsyncRoutedClient, RequestError, RouteInfo, UpstreamError, UpstreamStream
from router_ml.decision_log import FeedbackError, feedback_from
from router_ml.errors import RouterMLError
from router_ml.serve_metrics import Metrics
from router_ml.serve_server import Lifecycle
from router_ml.variants import VariantClient

__all__ = ["ProxyApp", "create_app", "reload_variants"]


async def reload_variants(client: Any) -> list[dict[str, Any]]:
    """Hot-swap the variants of a :class:`~router_ml.variants.VariantClient` and say so on stderr."""
    if not isinstance(client, VariantClient):
        raise RouterMLError("this server has no router variants to reload (it was built on a plain client)")
    variants = await client.reload()
    shown = ", ".join(f"{v['name']}={v['artifact']} ({v['share']:.0%})" for v in variants)
    say(f"reloaded the router variants (pid {os.getpid()}): {shown}")
    return variants


#: the decision log's ``error`` of a request cancelled while the server was shutting down
SHUTDOWN_CANCEL = ("cancelled while the server was shutting down (its --shutdown-timeout passed or a second signal "
                   "stopped it, or the caller left)")

_JSON = b"application/json"


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
           **extra: Any) -> Reply:
    """An OpenAI-style error answer."""
    return Reply(status, _json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code,
                                                **extra}}))


def _ok(obj: Any, status: int = 200) -> Reply:
    return Reply(status, _json.dumps(obj))


@functools.lru_cache(maxsize=1024)
def header_value(text: str) -> str:
    """``text`` as an HTTP header value: as it is when it is printable ASCII without ``%``, else its UTF-8
    percent-encoded (``urllib.parse.unquote`` gives it back either way). A model named ``模型-中文`` once reached
    clients as ``??-??`` (header bytes are Latin-1), and a control character must never end the header."""
    if text.isascii() and text.isprintable() and "%" not in text:
        return text
    return urllib.parse.quote(text, safe="".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%"))

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
        # a request cancelled once the server stops (after any drain) is the server's doing (its
        # --shutdown-timeout passed, or a second signal) or a caller that left meanwhile - not, as the client
        # alone would log it, the caller's
        client.cancel_reason = lambda: SHUTDOWN_CANCEL if lifecycle.stopping else None
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
                                                  ("x-router-ml-model", header_value(info.model or "")),
                                                  ("cache-control", "no-cache")))
        info = result.router_ml
        result["router_ml"] = info.to_dict()  # the completion is this request's own: no copy
        return Reply(200, _json.dumps(result), _JSON, (("x-router-ml-request-id", info.request_id),
                                                    ("x-router-ml-model", header_value(info.model or ""))))

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
        failed = self.client.write_log(record)  # counted in router_ml_decision_log_errors_total
        if failed is not None:
            return _error(503, f"the rating was not recorded: the server cannot write its decision log "
                          f"({failed.strerror or failed}); send it again later", "server_error",
                          code="decision_log_unavailable")
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
                try:
                    message = await receive()
                except asyncio.CancelledError:  # a forced exit (a second SIGINT): no shutdown message will come,
                    return  # and uvicorn would print the cancellation as a lifespan error with its traceback
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
