"""The proxy's HTTP/1.1 server protocol: httptools' parser straight into the proxy's handlers, no ASGI.

uvicorn's own protocols turn each request into an ASGI scope, a task running the application with
``receive``/``send`` message dicts, and write the answer's head and body in two system calls; for the
proxy's small JSON answers that framework work cost more CPU than routing. This protocol parses a
request into a :class:`Request` (method, path, lower-case headers, the body up to the server's limit),
awaits the application's :meth:`handle`, and writes the answer in one call - or, for a
:class:`Stream`, each server-sent event as one HTTP chunk as it arrives.

It runs under uvicorn's :class:`uvicorn.Server` (``Config(http=...)``, :func:`router_ml.serve_server.make_server`),
which keeps everything around the requests: sockets, signals, the ASGI lifespan, the graceful shutdown
(:meth:`HttpProtocol.shutdown`: an idle connection closes, a busy one closes after its answer; the server
waits for the request tasks it registered in ``server_state.tasks``). What a connection does: keep-alive
(closed after ``timeout_keep_alive`` idle seconds), ``Expect: 100-continue``, pipelined requests answered
in order, a body over the limit counted while it arrives and dropped (the application answers 413), a
client that hangs up mid-stream cancels its stream (the upstream is closed and the request logged), a
malformed request gets a 400 and the connection closes.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from router_ml.optional import require

__all__ = ["HttpProtocol", "Reply", "Request", "Stream", "status_line"]

_logger = logging.getLogger("router_ml")


def _httptools() -> Any:
    """httptools (the ``serve`` extra), imported when the first connection comes, not with this module."""
    return require("httptools", extra="serve", purpose="router-ml serve")


def status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS = {code: status_line(code) for code in range(100, 600)}
#: seconds an idle connection stays open once the server shuts down (see :meth:`HttpProtocol.shutdown`)
SHUTDOWN_GRACE_S = 0.5
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class Request:
    """One parsed request. ``headers``: lower-case names, the first value of a repeated one; ``body`` is
    empty and ``too_large`` true when it was longer than the server's limit."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    too_large: bool


@dataclass(slots=True)
class Reply:
    """A whole answer: status, body, its content type and extra ``(name, value)`` headers."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Stream:
    """A streamed 200 answer: ``events`` written as they come (one chunk each); ``aclose`` runs after the last
    one, or when the client hung up first."""

    events: AsyncIterator[bytes]
    aclose: Callable[[], Awaitable[None]]
    content_type: bytes = b"text/event-stream"
    headers: tuple[tuple[str, str], ...] = ()


class App(Protocol):
    max_body_bytes: int

    async def handle(self, request: Request) -> Reply | Stream: ...


def _head(status: int, content_type: bytes, headers: tuple[tuple[str, str], ...], keep_alive: bool,
          length: int | None) -> bytearray:
    out = bytearray(_STATUS.get(status) or status_line(status))
    out += b"content-type: " + content_type + b"\r\n"
    out += b"transfer-encoding: chunked\r\n" if length is None else b"content-length: %d\r\n" % length
    for name, value in headers:
        out += f"{name}: {value}\r\n".encode("latin-1", errors="replace")
    if not keep_alive:
        out += b"connection: close\r\n"
    out += b"\r\n"
    return out


class HttpProtocol(asyncio.Protocol):
    """One client connection (see the module doc). uvicorn builds it with ``config``, ``server_state`` and
    ``app_state``; ``app`` comes first (``functools.partial(HttpProtocol, app)``)."""

    def __init__(self, app: App, config: Any, server_state: Any, app_state: Any = None,
                 _loop: asyncio.AbstractEventLoop | None = None):
        self.app = app
        self.loop = _loop or asyncio.get_event_loop()
        self.connections, self.tasks = server_state.connections, server_state.tasks
        self.keep_alive_s = config.timeout_keep_alive
        self.max_body = app.max_body_bytes
        self.parser = _httptools().HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.pending: collections.deque[tuple[Request, bool]] = collections.deque()
        self.busy = False
        self.closing = False  # answer what is in hand, then close
        self.lost = False
        self.stream_task: asyncio.Task[None] | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.receiving = False  # a request has begun and is not complete yet
        self.writable: asyncio.Future[None] | None = None
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._too_large = False

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.stream_task is not None:
            self.stream_task.cancel()  # the client left mid-stream: close the upstream, log the request
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except _httptools().HttpParserUpgrade:
            self._refuse(b"upgrades (WebSocket) are not supported")
        except _httptools().HttpParserError as exc:
            self._refuse(f"malformed HTTP request ({exc})".encode())

    def pause_writing(self) -> None:
        if self.writable is None or self.writable.done():
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: a connection with a request in hand closes after its answer; an idle
        one after :data:`SHUTDOWN_GRACE_S`, so that a request already on its way (sent before the client could
        know, or accepted but not yet read) is still answered - with ``connection: close``."""
        self.closing = True
        if not self.busy and not self.receiving:
            if self.idle_timer is not None:
                self.idle_timer.cancel()
            self.idle_timer = self.loop.call_later(SHUTDOWN_GRACE_S, self._idle)

    # --- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.receiving = True
        self._url = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        # decoded in one go, the first of a repeated header kept (as Starlette's ``headers.get`` did)
        self._headers = {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in reversed(self._raw)}
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            self._too_large = True
        if self._headers.get("expect", "").lower() == "100-continue":
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._too_large:
            return
        self._body += body
        if len(self._body) > self.max_body:
            self._too_large = True
            self._body = bytearray()

    def on_message_complete(self) -> None:
        self.receiving = False
        path = self._url.partition(b"?")[0].decode("latin-1")
        request = Request(self.parser.get_method().decode("ascii"), path, self._headers,
                          bytes(self._body), self._too_large)
        keep_alive = self.parser.should_keep_alive()
        if self.busy:
            self.pending.append((request, keep_alive))
            if len(self.pending) > 16:
                self.transport.pause_reading()  # a client pipelining far ahead waits
        else:
            self._start(request, keep_alive)

    # --- answering -------------------------------------------------------------------------------

    def _start(self, request: Request, keep_alive: bool) -> None:
        self.busy = True
        task = self.loop.create_task(self._answer(request, keep_alive))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, request: Request, keep_alive: bool) -> None:
        try:
            reply = await self.app.handle(request)
        except Exception:
            _logger.exception("router-ml: internal error answering %s %s", request.method, request.path)
            reply = Reply(500, b'{"error": {"message": "internal server error", "type": "server_error", '
                               b'"param": null, "code": null}}')
        keep_alive = keep_alive and not self.closing
        if isinstance(reply, Stream):
            await self._stream(reply, keep_alive)
        elif not self.lost:
            self.transport.write(_head(reply.status, reply.content_type, reply.headers, keep_alive,
                                       len(reply.body)) + reply.body)
        self.busy = False
        if self.lost:
            return
        if not keep_alive or self.closing:
            self.transport.close()
        elif self.pending:
            if len(self.pending) == 17:
                self.transport.resume_reading()
            self._start(*self.pending.popleft())
        else:
            self._arm_idle()

    async def _stream(self, stream: Stream, keep_alive: bool) -> None:
        self.stream_task = asyncio.current_task()
        try:
            if self.lost:
                return
            self.transport.write(_head(200, stream.content_type, stream.headers, keep_alive, None))
            async for event in stream.events:
                if self.lost:
                    break
                self.transport.write(b"%x\r\n%b\r\n" % (len(event), event))
                if self.writable is not None and not self.writable.done():
                    await self.writable
            else:
                if not self.lost:
                    self.transport.write(b"0\r\n\r\n")
        except asyncio.CancelledError:
            if not self.lost:
                raise  # the server's shutdown timeout ran out, not a client that left
        finally:
            self.stream_task = None
            await stream.aclose()

    def _arm_idle(self) -> None:
        """The connection is idle from now: closed ``keep_alive_s`` later unless a request comes. One timer
        per connection, moved on only when it fires - not one armed and cancelled per request."""
        self.idle_since = now = self.loop.time()
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_at(now + self.keep_alive_s, self._idle)

    def _idle(self) -> None:
        self.idle_timer = None
        if self.busy or self.receiving or self.lost:
            return  # a request is in hand: its answer arms the timer again (or closes, when shutting down)
        due = self.idle_since + self.keep_alive_s
        if self.loop.time() < due and not self.closing:
            self.idle_timer = self.loop.call_at(due, self._idle)
        else:
            self.transport.close()

    def _refuse(self, message: bytes) -> None:
        body = b'{"error": {"message": "%b", "type": "invalid_request_error", "param": null, "code": null}}' % (
            message.replace(b"\\", b"\\\\").replace(b'"', b'\\"'))
        self.transport.write(_head(400, b"application/json", (), False, len(body)) + body)
        self.transport.close()
