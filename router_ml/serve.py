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
502 when every model of the fallback chain failed (the message lists each attempt's reason), 503 for a
rating the decision log cannot take (a full disk: not recorded, counted as a decision-log error).

Graceful shutdown: SIGTERM (or SIGINT) turns ``/ready`` to 503 at once, keeps serving for ``drain_s``
seconds (``--drain-seconds``: time for a load balancer to see it and stop sending), then stops
accepting connections and waits up to ``shutdown_timeout_s`` for every request in flight - streams
included - to be answered and logged (each record is written whole when its request ends, so the log
needs no flush), closes the upstream pools and the log and exits 0. Several workers:
:mod:`router_ml.workers`.

The hot path (CPU per request): uvicorn keeps the server around the requests (sockets, signals, the
lifespan, the graceful shutdown) but each connection is the proxy's own HTTP/1.1 protocol
(:mod:`router_ml._serve_http`: httptools' parser straight into the handlers of
:class:`~router_ml.serve_app.ProxyApp`, one write per answer), upstream calls go through the proxy's own
keep-alive client (:mod:`router_ml._http1`, ``upstream="http1"``; the library default stays httpx), bodies
and log lines are parsed and written by orjson (:mod:`router_ml._json`) and the metrics' label children
are looked up once. Every behaviour above is the same as on the general stack.

uvicorn, httptools, orjson and prometheus_client are imported only when serving (``pip install
"router-ml[serve]"``).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

from router_ml._stderr import say
from router_ml.decision_log import DecisionLog, worker_log_path
from router_ml.errors import RouterMLError
from router_ml.exploration import Exploration
from router_ml.optional import require
from router_ml.providers import ProviderCatalog, is_loopback
from router_ml.serve_app import ProxyApp, create_app, reload_variants
from router_ml.serve_metrics import MULTIPROC_ENV, Metrics
from router_ml.serve_server import Lifecycle, make_server
from router_ml.variants import VariantClient, VariantSource

__all__ = ["MULTIPROC_ENV", "Lifecycle", "Metrics", "ProxyApp", "Worker", "bind", "create_app", "make_server",
           "run_server"]


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
                 willingness_to_pay: float | None, exploration: Exploration | None, cascade: str | None = None,
                 scorer: str | None = None) -> VariantClient:
    """The serving client: every variant loaded and verified on this CPU (an int8 artifact whose routes drift
    here is refused before any request is served), and the cascade policy with its scorer when given (the
    scorer verified too)."""
    loaded = None
    if cascade is not None:
        from router_ml.cascade import Cascade

        if scorer is None:
            raise RouterMLError("a cascade policy needs the answer scorer it was fitted with (--scorer DIR)")
        loaded = Cascade.load(cascade, scorer, intra_op_threads=1, verify=True)
    return VariantClient(variants, ProviderCatalog.load(providers), exploration=exploration,
                         willingness_to_pay=willingness_to_pay, decision_log=decision_log, log_prompts=log_prompts,
                         upstream="http1", cascade=loaded)


def run_server(*, router: str | None = None, providers: str, variants: VariantSource | None = None,
               host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, admin_key: str | None = None,
               decision_log: str | None = None, log_prompts: bool = False, log_max_bytes: int = 64 << 20,
               log_fsync: bool = False, max_body_bytes: int = 1 << 20, willingness_to_pay: float | None = None,
               exploration: Exploration | None = None, drain_s: float = 0.0, shutdown_timeout_s: float = 30.0,
               cascade: str | None = None, scorer: str | None = None, worker: Worker | None = None) -> None:
    """Load, bind and serve until SIGTERM/SIGINT (what ``router-ml serve`` runs, and each of its workers).

    ``router`` (one artifact, the variant ``default``) or ``variants``; ``worker``: run as one worker of a
    supervisor - serve its inherited socket, write the slot's own decision-log file, report readiness."""
    for module in ("uvicorn", "httptools", "prometheus_client"):
        require(module, extra="serve", purpose="router-ml serve")
    check_open_bind(host, api_key)
    if decision_log is not None and not str(decision_log).strip():  # None keeps no log; "" is a mistake
        raise RouterMLError("decision_log is an empty path (an unset variable?); give a file path, or None to keep "
                            "no decision log")
    if variants is None:
        if router is None:
            raise RouterMLError("give a router artifact (--artifact) or router variants (--variant / --variants)")
        from router_ml.variants import VariantSpec

        variants = VariantSource([VariantSpec("default", str(router), 1.0)])
    # a reload asked for while loading: the files are read now (or the workers' record, read again after the load)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    path = None if not decision_log else worker_log_path(decision_log, worker.slot if worker else 0)
    log = DecisionLog(path, max_bytes=log_max_bytes, fsync=log_fsync) if path else None
    sock = None
    try:
        client = build_client(providers=providers, variants=variants, decision_log=log, log_prompts=log_prompts,
                              willingness_to_pay=willingness_to_pay, exploration=exploration, cascade=cascade,
                              scorer=scorer)
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
                  f"{exploration.to_dict() if exploration else 'off'}, cascade "
                  f"{f'{cascade} with scorer {scorer}' if cascade else 'off'})")
        if worker is None:
            say(banner)
        if log is not None and log.repaired_bytes:
            say(f"moved a truncated last line ({log.repaired_bytes} bytes) of {log.path} to {log.path}.partial")

        def hangup() -> None:
            async def reload() -> None:
                try:
                    await reload_variants(client)
                except RouterMLError as exc:
                    say(f"error: reload failed, the current variants keep serving: {exc}")
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
