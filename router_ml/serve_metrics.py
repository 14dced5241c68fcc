"""The proxy's Prometheus metrics (``prometheus_client``), in one process or summed over ``--workers N``.

prometheus_client is imported only when a :class:`Metrics` is made (``pip install "router-ml[serve]"``).
"""

from __future__ import annotations

import os
from typing import Any

from router_ml.client import AsyncRoutedClient, RouteInfo
from router_ml.optional import require

__all__ = ["MULTIPROC_ENV", "Metrics"]

ROUTING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: prometheus_client's switch to multi-process mode: a directory the worker processes share
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The proxy's Prometheus metrics (``prometheus_client``; no key, no URL in any label).

    Each instance owns a :class:`prometheus_client.CollectorRegistry`, not the process-global default,
    so several apps in one process (the tests) count separately. Counters, the two latency histograms
    and the per-upstream circuit gauge keep the names the README lists (``router_ml_requests_total`` ...).

    Several worker processes (``router-ml serve --workers N``): prometheus_client writes every metric to
    files in ``$PROMETHEUS_MULTIPROC_DIR`` when that variable is set before ``prometheus_client`` is first
    imported (the supervisor sets it to a fresh temporary directory for its workers); :meth:`render` then
    exposes the sum over all workers - dead ones included, so counters never go back - through
    ``prometheus_client.multiprocess.MultiProcessCollector``, whichever worker answers the scrape.
    ``router_ml_decision_log_errors_total`` is a counter like the others. ``router_ml_circuit_open`` is a
    gauge in ``livemax`` mode: each worker has its own circuit breakers (a worker learns of a failing
    upstream from its own requests), and the gauge is 1 when the breaker is open in any live worker. A
    worker refreshes its circuit values after a request that saw a failure or while one is open, and at
    each scrape it answers.
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
        self.variants = prom.Counter("router_ml_variant_decisions", "Decisions by router variant (the serve "
                                     "config's traffic split).", ["variant"], registry=r)
        self.cascade = prom.Counter("router_ml_cascade_steps", "Cascade calls by model and verdict (accepted: its "
                                    "answer returned; escalated; failed: an escalation that failed) and routed "
                                    "requests served without the cascade (model \"\", verdict skipped_<why>).",
                                    ["model", "verdict"], registry=r)
        self.log_errors = prom.Counter("router_ml_decision_log_errors", "Decision-log records that could not be "
                                       "written.", registry=r)
        self.circuit = prom.Gauge("router_ml_circuit_open", "Whether an upstream's circuit breaker is open (1) or "
                                  "not (0); several workers: open in any.", ["upstream"], registry=r,
                                  multiprocess_mode="livemax")
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._outcomes: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._client: AsyncRoutedClient | None = None
        self._errors_seen = 0
        self._any_open = False
        self.content_type: str = prom.CONTENT_TYPE_LATEST
        if client is not None:
            self.attach(client)

    def attach(self, client: AsyncRoutedClient) -> None:
        """Follow the circuit states and decision-log errors of ``client``."""
        self._client = client
        self._errors_seen = client.log_errors
        self.refresh()

    def refresh(self) -> None:
        """Bring the values kept by the client (log errors, circuit states) into the metrics."""
        client = self._client
        if client is None:
            return
        errors = client.log_errors
        if errors > self._errors_seen:
            self.log_errors.inc(errors - self._errors_seen)
            self._errors_seen = errors
        any_open = False
        for label, breaker in client.breakers().items():
            is_open = breaker.state == "open"
            any_open = any_open or is_open
            self._child(self.circuit, label).set(int(is_open))
        self._any_open = any_open

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: prometheus_client's ``labels`` checks and locks on
        every call, which cost more CPU per request than everything else the metrics do."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def count(self, status: str) -> None:
        """Count a request that ended before routing (unauthorized, bad request, too large)."""
        self._child(self.requests, status).inc()

    def _outcome(self, status: str, chosen: str, by: str, variant: str | None, model: str | None) -> tuple:
        """The ``inc`` methods one kind of finished request counts with (see :meth:`observe`)."""
        child = self._child
        answered = model is not None
        return (child(self.requests, status).inc, child(self.decisions, chosen, by).inc,
                child(self.variants, variant).inc if variant is not None else None,
                child(self.answers, model).inc if answered else None,
                child(self.cost, model).inc if answered else None,
                child(self.tokens, model, "input").inc if answered else None,
                child(self.tokens, model, "output").inc if answered else None)

    def observe(self, info: RouteInfo) -> None:
        """Count one finished request (the client's ``on_complete`` hook). The counters a kind of request
        (status, chosen model, rule or router, variant, answering model) moves are looked up once per kind."""
        key = (info.status, info.chosen, "router" if info.rule is None else "rule", info.variant, info.model)
        incs = self._outcomes.get(key)
        if incs is None:
            incs = self._outcomes[key] = self._outcome(*key)
        requests, decisions, variant, answers, cost, tokens_in, tokens_out = incs
        requests()
        decisions()
        if variant is not None:
            variant()
        for attempt in info.fallbacks:
            self._child(self.fallbacks, attempt.upstream or attempt.model, attempt.kind).inc()
        per_call = info.cascade is not None and self._cascade(info.cascade)  # a cascade counted each call's cost
        if answers is not None:
            answers()
            if not per_call:
                if info.cost_usd is not None:
                    cost(info.cost_usd)
                tokens_in(info.input_tokens or 0)
                tokens_out(info.output_tokens or 0)
        self.routing.observe(info.routing_ms / 1000)
        if info.latency_s is not None:
            self.latency.observe(info.latency_s)
        client = self._client
        if client is not None and (info.fallbacks or self._any_open or client.log_errors != self._errors_seen):
            self.refresh()

    def _cascade(self, cascade: dict[str, Any]) -> bool:
        """Count a cascade's steps, with cost and tokens on the model of each call (the request's total is
        their sum); True when it ran, False when the request was routed without it."""
        child = self._child
        attempts = cascade.get("attempts")
        if attempts is None:
            child(self.cascade, "", f"skipped_{cascade.get('skipped')}").inc()
            return False
        for a in attempts:
            model = a["model"]
            if a["status"] != "ok":
                child(self.cascade, model, "failed").inc()
                continue
            child(self.cascade, model, "accepted" if a.get("accepted") else "escalated").inc()
            child(self.cost, model).inc(a["cost_usd"])
            child(self.tokens, model, "input").inc(a["input_tokens"])
            child(self.tokens, model, "output").inc(a["output_tokens"])
        return True

    def render(self) -> bytes:
        """The Prometheus text exposition: this registry, or every worker's files in multi-process mode."""
        self.refresh()
        prom = self._prom
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return prom.generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = prom.CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        return prom.generate_latest(registry)
