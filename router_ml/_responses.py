"""OpenAI-shaped answers: the provider's JSON with attribute access, as the OpenAI SDK's models have it.

``r.choices[0].message.content`` works on a :class:`ChatCompletion` and on each chunk of a
:class:`ChatStream` / :class:`AsyncChatStream` without depending on the SDK; the router's own account
of the request rides along as ``router_ml`` (a :class:`~router_ml.client.RouteInfo`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

from router_ml import _json
from router_ml._records import Failure, RouteInfo, StreamInterrupted
from router_ml._streaming import UpstreamStream, event_data

__all__ = ["AsyncChatStream", "AttrDict", "ChatCompletion", "ChatStream", "output_chars", "parse_completion"]


class _AttrList(list):
    def __getitem__(self, i):  # type: ignore[override]
        return _wrap(super().__getitem__(i))

    def __iter__(self):
        return (_wrap(v) for v in super().__iter__())


class AttrDict(dict):
    """A JSON object with attribute access (``r.choices[0].message.content``), like the OpenAI SDK's models."""

    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self[name])
        except KeyError:
            raise AttributeError(name) from None


def _wrap(value: Any) -> Any:
    if isinstance(value, dict) and not isinstance(value, AttrDict):
        return AttrDict(value)
    if isinstance(value, list) and not isinstance(value, _AttrList):
        return _AttrList(value)
    return value


class ChatCompletion(AttrDict):
    """The provider's chat completion (a dict with attribute access) plus ``router_ml``: a :class:`RouteInfo`."""

    router_ml: RouteInfo


def parse_completion(body: bytes, status: int) -> dict[str, Any]:
    """A 2xx completion body as a dict; :class:`Failure` (``malformed``, so it falls back) unless it is a JSON
    object with a non-empty ``choices`` list."""
    try:
        data = _json.loads(body)
    except ValueError:
        raise Failure("malformed", "the response body is not JSON", status) from None
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        raise Failure("malformed", "the response has no 'choices'", status)
    return data


def output_chars(data: dict[str, Any]) -> int:
    """Characters of a completion's message contents: the basis of a token estimate when usage is missing."""
    total = 0
    for choice in data["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            total += len(message["content"])
    return total


def answer_text(data: dict[str, Any]) -> str | None:
    """The first choice's message content: the answer the decision log keeps with ``--log-prompts``."""
    choices = data.get("choices")
    message = choices[0].get("message") if isinstance(choices, list) and choices and isinstance(choices[0], dict) \
        else None
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, str) else None


class AsyncChatStream:
    """Chunks of a streamed completion (dicts with attribute access); ``router_ml`` is complete once it ends."""

    def __init__(self, stream: UpstreamStream):
        self._stream = stream
        self._events: AsyncIterator[bytes] = stream.events()
        self.router_ml = stream.info

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> AttrDict:
        while True:
            event = await self._events.__anext__()
            data = event_data(event)
            if data is None or data.strip() == b"[DONE]":
                continue
            obj = json.loads(data)
            if "error" in obj:
                await self.aclose()
                raise StreamInterrupted(self._stream.info.error or "the stream broke off")
            return AttrDict(obj)

    async def aclose(self) -> None:
        await self._events.aclose()  # type: ignore[attr-defined]
        await self._stream.aclose()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class ChatStream:
    """A streamed completion for synchronous code (see :class:`AsyncChatStream`); ``run`` executes a coroutine
    on the event loop that owns the stream and returns its result."""

    def __init__(self, run: Callable[[Coroutine[Any, Any, Any]], Any], stream: AsyncChatStream):
        self._run, self._stream = run, stream
        self.router_ml = stream.router_ml

    def __iter__(self) -> Iterator[AttrDict]:
        try:
            while True:
                try:
                    yield self._run(self._stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.close()

    def close(self) -> None:
        self._run(self._stream.aclose())

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
