"""The routed client's cascade: call, score, escalate - one request, every attempt accounted and logged.

:class:`~router_ml.client.AsyncRoutedClient` runs :func:`run_cascade` instead of a single call when it
has a :class:`~router_ml.cascade.Cascade` and the router decides the request (pinned models and the
catalog's rules are never cascaded). The policy (:mod:`router_ml.cascade.runtime`) names the first
model; each answer is scored when the step's threshold needs it, and the policy either returns it or
names the model to escalate to. Failures:

- the **first** call goes through the catalog's fallback chain as any request does; when a fallback
  model answers instead of the cascade's first model, that answer is returned unscored - the plan was
  for another model, and a second stage on top of a failure would only add latency;
- an **escalation** calls only the model the policy named (its replicas, with retries), never a
  fallback chain (which could end at a cheaper model than the answer already in hand); when it fails,
  or the request's time runs out, the earlier answer is returned - the request never fails once one
  answer is in hand. The failed attempt is logged with its error;
- a scorer error (which a verified artifact should never raise) is logged and the answer returned.

Accounting: cost counts every call made - ``RouteInfo.cost_usd``, ``input_tokens`` and
``output_tokens`` are sums over the attempts, each attempt keeps its own (``info.cascade``), and the
answer returned is the one of ``info.cascade["answered"]``. The decision log writes every attempt with
its score, acceptance score, threshold and verdict, and with ``log_prompts`` its answer text: a
cascade that escalated logs two answers for one prompt, two outcomes once rated (feedback may name
the model it rates).

Streaming requests are routed without a cascade (``info.cascade = {"skipped": "stream"}``): judging an
answer needs all of it, so a streamed cascade would hold back every token of the cheap answer - the
whole point of streaming is the first token's latency - and then stream the escalated one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from router_ml._records import RouteInfo, UpstreamError, usage_of
from router_ml._responses import answer_text, output_chars
from router_ml.cascade import Cascade

if TYPE_CHECKING:
    from router_ml.client import AsyncRoutedClient

__all__ = ["run_cascade"]

_logger = logging.getLogger("router_ml")
_UNJUDGED = {"score": None, "accept": None, "threshold": None}


async def _score(cascade: Cascade, prompt: str, model: str, answer: str) -> float:
    scorer = cascade.scorer
    if scorer.kind == "static":  # ~0.2 ms: cheaper inline than a thread hop
        return scorer.score(prompt, model, answer)
    return await asyncio.to_thread(scorer.score, prompt, model, answer)  # an encoder: ms, off the event loop


async def run_cascade(client: AsyncRoutedClient, cascade: Cascade, info: RouteInfo, body: dict[str, Any],
                      prompt: str, started: float, input_chars: int) -> dict[str, Any]:
    """Run the cascade for one request (module doc); returns the completion to answer with and fills
    ``info`` (who answered, tokens and cost summed over the calls, ``info.cascade``). Raises
    :class:`UpstreamError` only when the first call's whole fallback chain failed."""
    knob = info.willingness_to_pay if info.willingness_to_pay is not None else client.router.willingness_to_pay
    run = cascade.start(info.scores or {}, info.costs or {}, knob)
    info.chosen = run.first
    attempts: list[dict[str, Any]] = []
    responses: list[str | None] = []
    completions: list[tuple[dict[str, Any], str | None, str | None, str | None]] = []
    answered = -1
    model: str | None = run.first
    while model is not None:
        t0 = time.perf_counter()
        failures = len(info.fallbacks)
        try:
            result = await client._dispatch(info, body, started, chain=None if not attempts else (model,))
        except UpstreamError:
            if not attempts:
                raise
            info.status, info.error = "pending", None  # the earlier answer stands
            why = "; ".join(f"{a.upstream or a.model}: {a.reason}" for a in info.fallbacks[failures:])
            attempts.append({"model": model, "upstream": None, "provider_model": None, "status": "error",
                             "error": client.catalog.redact(why or "the request timeout ran out"),
                             "input_tokens": None, "output_tokens": None, "cost_usd": None,
                             "latency_s": round(time.perf_counter() - t0, 6), **_UNJUDGED, "accepted": None})
            responses.append(None)
            break
        answer = answer_text(result)
        tokens_in, tokens_out, estimated, cost = client.priced(info.model, *usage_of(result), input_chars,  # type: ignore[arg-type]
                                                               output_chars(result))
        attempt = {"model": info.model, "upstream": info.upstream, "provider_model": info.provider_model,
                   "status": "ok", "input_tokens": tokens_in, "output_tokens": tokens_out,
                   "usage_estimated": estimated, "cost_usd": cost, "latency_s": round(time.perf_counter() - t0, 6)}
        attempts.append(attempt)
        responses.append(answer)
        completions.append((result, info.model, info.provider_model, info.upstream))
        answered = len(attempts) - 1
        if info.model != model:  # the first model failed and a fallback answered: return it as it is
            attempt.update(_UNJUDGED, accepted=True)
            break
        if run.add_answer(model, answer):
            t1 = time.perf_counter()
            try:
                run.set_score(await _score(cascade, prompt, model, answer))  # type: ignore[arg-type]
            except Exception as exc:  # a verified scorer should not fail; if it does, the answer in hand stands
                _logger.error("router-ml: the answer scorer failed on request %s (%s: %s); returning %s's answer",
                              info.request_id, type(exc).__name__, exc, model)
                attempt.update(_UNJUDGED, accepted=True, score_error=f"{type(exc).__name__}: {exc}")
                break
            attempt["score_ms"] = round((time.perf_counter() - t1) * 1000, 3)
        model = run.decide()
        attempt.update(run.steps()[-1])
    ok = [a for a in attempts if a["status"] == "ok"]
    result, info.model, info.provider_model, info.upstream = completions[-1]
    info.input_tokens = sum(a["input_tokens"] for a in ok)
    info.output_tokens = sum(a["output_tokens"] for a in ok)
    info.usage_estimated = any(a["usage_estimated"] for a in ok)
    info.cost_usd = sum(a["cost_usd"] for a in ok)
    info.status = "ok"
    info.cascade = {"policy": cascade.policy.name, "point": run.point_json(), "answered": answered,
                    "attempts": attempts}
    if client.log_prompts:
        info.cascade_responses = responses
    return result
