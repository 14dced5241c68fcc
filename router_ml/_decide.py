"""The decide step: from a chat-completion body to a chosen model, with no HTTP involved.

Validation, the knob (call argument > body field > header > default), pins, the catalog's static
rules and then the learned router (which may explore, :mod:`router_ml.exploration`; pins and rules never
do and have propensity 1.0). :class:`~router_ml.client.AsyncRoutedClient` runs it before every
call (``client.decide``) and so does the proxy through it; it is a plain function so it can be tested
and timed on its own.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from typing import Any

from router_ml._ids import request_id
from router_ml._numbers import is_number
from router_ml._records import RequestError, RouteInfo
from router_ml.messages import message_problem, routed_text
from router_ml.providers import ProviderCatalog
from router_ml.router import Router

__all__ = ["KNOB_HEADER", "ROUTER_FIELDS", "decide", "parse_knob", "validate_body"]

#: body fields that steer router-ml and are removed before the request goes upstream
ROUTER_FIELDS = ("willingness_to_pay",)
#: request header that sets the knob (USD per unit of quality; "inf" = best predicted quality)
KNOB_HEADER = "x-router-ml-willingness-to-pay"


def parse_knob(value: Any, where: str) -> float | None:
    """A willingness to pay (USD per unit of quality, ``"inf"`` allowed) or None; :class:`RequestError` names
    ``where`` it came from otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RequestError(where, f"must be a number >= 0 (USD per unit of quality) or \"inf\", got {value!r}")\
                from None
    if not is_number(value) or not value >= 0:
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
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):  # null is allowed, as by OpenAI: not streaming
        raise RequestError("stream", f"must be true or false, got {stream!r}")


def decide(body: dict[str, Any], *, router: Router, catalog: ProviderCatalog, default_knob: float | None,
           headers: Mapping[str, str] | None = None, willingness_to_pay: Any = None) -> tuple[RouteInfo, str]:
    """Validate ``body``, apply pins, rules and the router: a fresh :class:`RouteInfo` and the routed text.

    >>> info, text = decide({"messages": [{"role": "user", "content": "Hi"}]}, router=router,  # doctest: +SKIP
    ...                     catalog=catalog, default_knob=None)
    >>> info.chosen, info.rule                                                                   # doctest: +SKIP
    ('tiny-1b', None)
    """
    t0 = time.perf_counter()
    validate_body(body)
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    wtp = parse_knob(willingness_to_pay, "willingness_to_pay")
    if wtp is None:
        wtp = parse_knob(body.get("willingness_to_pay"), "willingness_to_pay")
    if wtp is None:
        wtp = parse_knob(headers.get(KNOB_HEADER), KNOB_HEADER)
    if wtp is None:
        wtp = default_knob
    text = routed_text(body["messages"])
    route_model = catalog.settings.route_model
    model = body.get("model") or route_model
    scores = costs = None
    rule = None
    propensity, explored, knob = 1.0, False, router.willingness_to_pay if wtp is None else wtp
    if model in catalog:
        chosen, rule = model, "pinned"
    elif model != route_model:
        raise RequestError("model", f"unknown model '{model}'; send \"{route_model}\" to route, or "
                           f"one of {sorted(catalog)} to pin a model")
    else:
        chosen = None
        for r in catalog.rules:
            if r.matches(text, headers):
                chosen, rule = r.model, r.name
                break
        if chosen is None:
            decision = router.route(text, willingness_to_pay=wtp)
            chosen, scores, costs = decision.model, dict(decision.scores), decision.costs  # a fresh dict per route()
            propensity, explored, knob = decision.propensity, decision.explored, decision.willingness_to_pay
    digest = hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
    return RouteInfo(request_id=request_id(), chosen=chosen, rule=rule, willingness_to_pay=wtp,
                     scores=scores, prompt_sha256=digest, routing_ms=(time.perf_counter() - t0) * 1000,
                     stream=bool(body.get("stream")), propensity=propensity, explored=explored,
                     policy=router.policy_record(knob), costs=costs), text
