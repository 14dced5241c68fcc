"""The proxy's upstream HTTP/1.1 client: asyncio protocols, httptools' parser, keep-alive pools.

``router-ml serve`` spends most of its CPU on the two HTTP hops, and httpx (with httpcore and anyio
under it) is a general client: per call it builds a Request, negotiates the pool through several
layers, writes the head and the body in two system calls and yields to the loop at each step.
This client does only what the proxy's upstream calls need - ``POST`` a JSON body to a known URL
and read the answer whole or as it streams - in one write and one future per wait, and costs about
a fifth of httpx's CPU per call. :class:`~router_ml.client.AsyncRoutedClient` uses it when built with
``upstream="http1"`` (the proxy does); the library default stays httpx.

Semantics kept from the httpx transport it replaces: one pool per ``scheme://host:port`` with at
most ``max_connections`` open and ``max_keepalive`` idle connections (a request waits for a free
connection up to its timeout); every wait - connect, response head, each body chunk - is bounded
by the attempt's ``timeout``; TLS verified against certifi's CA bundle, as httpx does; failures are
raised as the httpx exceptions they correspond to (``ConnectError``, ``ConnectTimeout``,
``ReadTimeout``, ``PoolTimeout``, ``RemoteProtocolError``, ``ReadError``), so the client's failure
classes, retries, breakers and stream handling are the same whichever transport ran. A request on a
reused idle connection that the server had already closed is retried once on a new connection (unless
built with ``retry_closed=False``, as a load generator counting unanswered requests is: a server that
closes without a byte of answer may also have read the request).

httptools comes with the ``serve`` extra (uvicorn's parser).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Awaitable
from typing import Any
from urllib.parse import urlsplit

import httptools
import httpx

__all__ = ["Http1Upstream", "Pool", "Response"]


class _Conn(asyncio.Protocol):
    """One upstream connection; it parses one response at a time."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.headers: dict[str, str] = {}
        self.chunks: collections.deque[bytes] = collections.deque()
        self.head_done = False
        self.complete = False
        self.keep_alive = True
        self.got_bytes = False
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = self.deadline = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response ({exc})"))
            self.transport.close()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pool._forget(self)
        if self.head_done and not self.complete and exc is None and "content-length" not in self.headers \
                and "chunked" not in self.headers.get("transfer-encoding", ""):
            self.complete, self.keep_alive = True, False  # a body delimited by the end of the connection
            self._wake()
        elif not self.complete:
            if not self.got_bytes:
                self._fail(httpx.RemoteProtocolError("Server disconnected without sending a response."))
            else:
                self._fail(httpx.ReadError(f"the connection broke off ({exc or 'closed by the server'})"))

    # --- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    # --- waiting ---------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_exception(error)

    def wait(self, timeout: float) -> asyncio.Future[None]:
        """A future that is done when the parser reports progress (head, a body chunk, the end), or fails
        after ``timeout`` s without any (a plain future, not a coroutine: one frame less per wait).

        One timer per connection, moved on only when it fires before the current deadline: not one armed
        and cancelled per wait."""
        loop = self.loop
        waiter = loop.create_future()
        if self.error is not None:
            waiter.set_exception(self.error)
            return waiter
        self.deadline = deadline = loop.time() + timeout
        if self.timer is None or self.timer_at > deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer, self.timer_at = loop.call_at(deadline, self._check), deadline
        self.waiter = waiter
        return waiter

    def _check(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.loop.time() < self.deadline:
            self.timer, self.timer_at = self.loop.call_at(self.deadline, self._check), self.deadline
        else:
            self.waiter = None
            waiter.set_exception(httpx.ReadTimeout("timed out waiting for the upstream's answer"))

    def reset(self) -> None:
        self.headers = {}
        self.chunks.clear()
        self.head_done = self.complete = self.got_bytes = False


class Response:
    """An upstream answer: ``status_code``, ``headers`` (lower-case names), and the body read whole
    (:meth:`aread`) or chunk by chunk (:meth:`aiter_bytes`). :meth:`aclose` hands a fully read
    keep-alive connection back to its pool and closes any other."""

    def __init__(self, conn: _Conn, status: int, timeout: float):
        self._conn, self.status_code, self.headers, self._timeout = conn, status, conn.headers, timeout
        self._closed = False

    async def aread(self) -> bytes:
        conn = self._conn
        while not conn.complete:
            await conn.wait(self._timeout)
        chunks = conn.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return body

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            while conn.chunks:
                yield conn.chunks.popleft()
            if conn.complete:
                return
            await conn.wait(self._timeout)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        conn.pool._release(conn, reuse=conn.complete and conn.keep_alive and not conn.closed and not conn.chunks)


class Pool:
    """Keep-alive connections to one origin (``scheme://host:port``)."""

    def __init__(self, scheme: str, host: str, port: int, *, max_connections: int, max_keepalive: int,
                 retry_closed: bool = True):
        self.loop = asyncio.get_running_loop()
        self.retry_closed = retry_closed
        self.host, self.port = host, port
        self.ssl: ssl.SSLContext | None = None
        if scheme == "https":
            import certifi  # httpx's own dependency: the CA bundle httpx verifies against

            self.ssl = ssl.create_default_context(cafile=certifi.where())
        self.max_connections, self.max_keepalive = max_connections, max_keepalive
        self._idle: list[_Conn] = []
        self._open = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()

    async def _connect(self, timeout: float) -> _Conn:
        try:
            async with asyncio.timeout(timeout):
                _, conn = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port, ssl=self.ssl)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {self.host}:{self.port} ({exc.strerror or exc})") from None
        return conn

    def _idle_conn(self) -> _Conn | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _acquire(self, timeout: float) -> tuple[_Conn, bool]:
        """A connection, and whether it was reused; waits up to ``timeout`` s when ``max_connections`` are busy."""
        conn = self._idle_conn()
        if conn is not None:
            return conn, True
        if self._open >= self.max_connections:
            waiter = self.loop.create_future()
            self._queue.append(waiter)
            timer = self.loop.call_later(timeout, _pool_expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
            return await self._acquire(timeout)
        self._open += 1
        try:
            return await self._connect(timeout), False
        except BaseException:
            self._open -= 1
            self._next()
            raise

    def _next(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: _Conn, *, reuse: bool) -> None:
        if reuse and len(self._idle) < self.max_keepalive:
            conn.reset()
            self._idle.append(conn)
        else:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
            self._forget(conn)
        self._next()

    def _forget(self, conn: _Conn) -> None:
        if conn.pool is self:  # counted once: a closed connection leaves the pool for good
            conn.pool = _GONE  # type: ignore[assignment]
            self._open -= 1
            if conn in self._idle:
                self._idle.remove(conn)
            self._next()

    async def request(self, head: bytes, body: bytes, timeout: float) -> Response:
        """Send one request (``head`` ends with the blank line) and wait for the response head."""
        for attempt in (0, 1):
            conn, reused = self._idle_conn(), True
            if conn is None:
                conn, reused = await self._acquire(timeout)
            try:
                transport = conn.transport
                assert transport is not None
                if len(body) < 65536:
                    transport.write(head + body)
                else:
                    transport.writelines((head, body))
                while not conn.head_done:
                    await conn.wait(timeout)
            except httpx.RemoteProtocolError:
                self._release(conn, reuse=False)
                if reused and attempt == 0 and not conn.got_bytes and self.retry_closed:
                    continue  # the server had closed this idle connection: once more on a new one
                raise
            except BaseException:
                self._release(conn, reuse=False)
                raise
            return Response(conn, conn.parser.get_status_code(), timeout)
        raise AssertionError("unreachable")

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()


class _Gone:
    """The pool of a connection that has left its pool (closed): forgetting it again does nothing."""

    def _forget(self, conn: _Conn) -> None:
        pass

    def _release(self, conn: _Conn, *, reuse: bool) -> None:
        if conn.transport is not None:
            conn.transport.close()


_GONE: Any = _Gone()


def _pool_expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.PoolTimeout("timed out waiting for a free upstream connection"))


class Http1Upstream:
    """What :class:`~router_ml.client.AsyncRoutedClient` calls upstreams through with ``upstream="http1"``:
    one :class:`Pool` per origin, the request head of each replica built once."""

    def __init__(self, *, max_connections: int = 1000, max_keepalive: int = 256, retry_closed: bool = True):
        self._limits = (max_connections, max_keepalive)
        self._retry_closed = retry_closed
        self._pools: dict[tuple[str, str, int], Pool] = {}
        self._heads: dict[str, tuple[Pool | None, tuple[str, str, int], bytes]] = {}

    def _head(self, label: str, url: str, headers: dict[str, str]) -> tuple[tuple[str, str, int], bytes]:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"host: {parts.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return (scheme, host, port), ("\r\n".join(lines) + "\r\ncontent-length: ").encode("latin-1")

    def send(self, label: str, url: str, headers: dict[str, str], payload: bytes,
             timeout: float) -> Awaitable[Response]:
        """POST ``payload`` to the replica ``label`` (at ``url``, with ``headers``): awaits the response head."""
        entry = self._heads.get(label)
        if entry is None:
            origin, head = self._head(label, url, headers)
            entry = self._heads[label] = (None, origin, head)
        pool, origin, head = entry
        if pool is None:
            pool = self._pools.get(origin)
            if pool is None:
                pool = self._pools[origin] = Pool(*origin, max_connections=self._limits[0],
                                                  max_keepalive=self._limits[1], retry_closed=self._retry_closed)
            self._heads[label] = (pool, origin, head)
        return pool.request(head + str(len(payload)).encode() + b"\r\n\r\n", payload, timeout)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self._heads.clear()
