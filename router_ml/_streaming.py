"""Server-sent event streams from an upstream: parsing, the first-event check, and :class:`UpstreamStream`.

A stream is only handed on once its first event has arrived and parsed (:func:`first_event`): until
then a failure can still fall back to another model. After that the answer is committed to one
upstream, and :class:`UpstreamStream` passes events through one by one, accounting usage, and ends a
stream that breaks with an explicit error event rather than a silent cut.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from router_ml import _json
from router_ml._records import Attempt, Failure, RouteInfo, usage_of
from router_ml._resilience import CircuitBreaker, classify
from router_ml.providers import Replica

__all__ = ["UpstreamStream", "event_data", "first_event", "sse_events"]


def event_data(event: bytes) -> bytes | None:
    """The ``data`` of one server-sent event (lines joined by newlines); None for a comment-only event."""
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            parts.append(line[5:].lstrip(b" ") if line[5:6] == b" " else line[5:])
    return b"\n".join(parts) if parts else None


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Complete events (each ending ``\\n\\n``) from a byte stream; a cut-off last event raises :class:`Failure`."""
    buf = b""
    async for chunk in chunks:
        buf += chunk
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                continue  # a \r\n may be split across chunks
            buf = buf.replace(b"\r\n", b"\n")
        while True:
            i = buf.find(b"\n\n")
            if i < 0:
                break
            event, buf = buf[:i + 2], buf[i + 2:]
            yield event
    if buf.strip():
        raise Failure("interrupted", "the stream ended inside an event")


async def first_event(response: Any) -> tuple[AsyncIterator[bytes], bytes]:
    """Check a 2xx streaming response and read up to its first data event: ``(the rest, the first)``.

    Raises :class:`Failure` (``malformed``) for a non-SSE body, a stream that ends before any data, or a
    first event that is not a chat completion chunk - failures that may still fall back."""
    if not response.headers.get("content-type", "").startswith("text/event-stream"):
        raise Failure("malformed", f"expected a text/event-stream, got '{response.headers.get('content-type', '')}'",
                      response.status_code)
    events = sse_events(response.aiter_bytes())
    while True:
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            raise Failure("malformed", "the stream ended before its first event") from None
        if event_data(first) is not None:
            break
    data = event_data(first)
    if data is not None and data.strip() != b"[DONE]":
        try:
            obj = _json.loads(data)
        except ValueError:
            raise Failure("malformed", "the first event's data is not JSON") from None
        if not isinstance(obj, dict) or "error" in obj:
            raise Failure("malformed", "the first event is not a chat completion chunk")
    return events, first


class UpstreamStream:
    """An open upstream stream whose first event has arrived: what the client returns for ``stream: true``.

    :meth:`events` yields the raw server-sent events to pass on (the proxy writes them as they are);
    :meth:`aclose` closes the upstream response and finishes ``info`` (status, tokens, cost) through
    ``on_close(info, output_chars, text)`` - it runs once, whether the stream ended, broke or was abandoned;
    ``text`` is the first choice's answer as streamed so far when ``keep_text`` (the decision log keeps
    it with ``--log-prompts``), else None. ``injected_usage``: router-ml asked for the usage chunk, so it
    is accounted but not passed on.
    """

    def __init__(self, info: RouteInfo, replica: Replica, response: Any, events: AsyncIterator[bytes],
                 first: bytes, *, injected_usage: bool, breaker: CircuitBreaker, redact: Callable[[str], str],
                 on_close: Callable[[RouteInfo, int, str | None], None], started: float, keep_text: bool = False,
                 cancel_reason: Callable[[], str | None] | None = None):
        self.info = info
        self._cancel_reason = cancel_reason
        self._replica, self._response, self._events, self._first = replica, response, events, first
        self._injected = injected_usage
        self._breaker, self._redact, self._on_close, self._started = breaker, redact, on_close, started
        self._closed = False
        self._out_chars = 0
        self._text: list[str] | None = [] if keep_text else None
        self._done = False

    def _inspect(self, event: bytes) -> bool:
        """Account one event; False when it is a usage-only chunk router-ml asked for and the client did not."""
        data = event_data(event)
        if data is None:
            return True
        if data.strip() == b"[DONE]":
            self._done = True
            return True
        try:
            obj = _json.loads(data)
        except ValueError:
            raise Failure("malformed", "an event's data is not JSON") from None
        if not isinstance(obj, dict):
            raise Failure("malformed", "an event's data is not a JSON object")
        if "error" in obj:
            message = obj["error"].get("message") if isinstance(obj["error"], dict) else obj["error"]
            raise Failure("interrupted", f"the upstream sent an error event: {str(message)[:200]}")
        pt, ct = usage_of(obj)
        if pt is not None or ct is not None:
            self.info.input_tokens, self.info.output_tokens = pt, ct
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                    self._out_chars += len(delta["content"])
                    if self._text is not None and choice.get("index", 0) == 0:
                        self._text.append(delta["content"])
            if not choices and self._injected and (pt is not None or ct is not None):
                return False
        return True

    async def events(self) -> AsyncIterator[bytes]:
        """The events to pass on, as raw bytes, ending with an error event if the upstream breaks."""
        try:
            if self._inspect(self._first):
                yield self._first
            async for event in self._events:
                if self._inspect(event):
                    yield event
            if not self._done:
                raise Failure("interrupted", "the upstream closed the stream before [DONE]")
            self.info.status = "ok"
        except (Failure, httpx.HTTPError) as exc:
            failure = classify(exc, self._replica, self._redact)
            self.info.status = "interrupted"
            self.info.error = self._redact(f"{self._replica.label} broke off the answer: {failure.reason}")
            self.info.fallbacks.append(Attempt(self._replica.model, self._replica.label, "interrupted",
                                               failure.reason, None, time.perf_counter() - self._started))
            self._breaker.failure()
            error = {"error": {"message": self.info.error, "type": "upstream_error", "code": "stream_interrupted",
                               "request_id": self.info.request_id}}
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._events.aclose()  # type: ignore[attr-defined]
        finally:
            await self._response.aclose()
        if self.info.status == "pending":
            self.info.status = "cancelled"
            reason = self._cancel_reason() if self._cancel_reason is not None else None
            self.info.error = reason or "the client stopped reading the stream"
        if self.info.status == "ok":
            self._breaker.success()
        self._on_close(self.info, self._out_chars, None if self._text is None else "".join(self._text))

    def __repr__(self) -> str:
        return f"UpstreamStream({self.info.request_id}, {self._replica.label}, {self.info.status})"
