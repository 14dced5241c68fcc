"""A fake OpenAI-compatible upstream with scripted faults, for the tests and ``scripts/load_test.py``.

It is a real HTTP/1.1 server on 127.0.0.1 (asyncio streams, keep-alive) so that faults a real
provider shows can be produced exactly: a 5xx, a 429 with ``Retry-After``, a hang, a 200 with a
body that is not JSON, a connection closed before the answer, a stream cut off after N events.

Behaviours (``upstream.script`` is consumed one per request, then ``upstream.mode`` applies):
``ok``; ``500`` (any status code; 4xx too); ``429:SECONDS`` (Retry-After); ``timeout:SECONDS``
(answer after a wait); ``garbage`` (200, not JSON); ``no_choices`` (200, JSON without choices);
``drop`` (close without answering); ``drop_stream:N`` (stream N events, then cut the connection);
``stream_garbage`` (a stream whose first event is not JSON); ``echo_key_401`` (a 401 whose message
quotes the Authorization header it got - as some providers do).

Run it alone: ``python -m tests.fake_upstream --port 0 --delay-ms 20`` prints ``{"port": N}``; SIGUSR1
switches it to answering 500 to everything, SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import sys
import threading
import time
from typing import Any

USAGE = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}


def completion(model: str, text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": dict(USAGE)}


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


class FakeUpstream:
    """Start with :meth:`start` (a background thread) or ``await serve()``; ``base_url`` ends in ``/v1``."""

    def __init__(self, *, port: int = 0, delay_s: float = 0.0, mode: str = "ok", record: bool = True):
        self.port = port
        self.delay_s = delay_s
        self.mode = mode
        self.script: collections.deque[str] = collections.deque()
        self.requests: list[dict[str, Any]] = []
        self.record = record
        self.gate: threading.Event | None = None  # streams pause after the first content event until it is set
        self.reply: Any = None  # (model, request body) -> answer text, instead of "<model> says: <prompt>"
        self.served = 0
        self.events_sent = 0  # stream events written, all streams together
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- running -------------------------------------------------------------------------------

    async def serve(self, on_ready: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, "127.0.0.1", self.port, backlog=2048)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        if on_ready is not None:
            on_ready(self.port)
        async with server:
            await self._stop.wait()
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
        await asyncio.sleep(0)

    _writers: set[asyncio.StreamWriter]

    def start(self) -> FakeUpstream:
        self._writers = set()
        self._thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True, name="fake-upstream")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- HTTP ----------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                if not await self._respond(method, path, headers, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _head(status: int, headers: dict[str, str]) -> bytes:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Status")
        out = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        return out.encode("latin-1")

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json",
                    extra: dict[str, str] | None = None) -> None:
        writer.write(self._head(status, {"content-type": ctype, "content-length": str(len(body)), **(extra or {})})
                     + body)
        await writer.drain()

    async def _respond(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                       writer: asyncio.StreamWriter) -> bool:
        self.served += 1
        if method != "POST" or not path.endswith("/chat/completions"):
            await self._send(writer, 404, b'{"error": {"message": "not found"}}')
            return True
        body = json.loads(raw)
        if self.record:
            self.requests.append({"path": path, "headers": headers, "body": body, "time": time.monotonic()})
        behaviour = self.script.popleft() if self.script else self.mode
        kind, _, arg = behaviour.partition(":")
        model = body.get("model", "?")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if kind == "timeout":
            await asyncio.sleep(float(arg))
            kind = "ok"
        if kind.isdigit() and kind != "429":
            await self._send(writer, int(kind), json.dumps({"error": {"message": f"fake failure {kind}",
                                                                       "type": "server_error"}}).encode())
            return True
        if kind == "429":
            await self._send(writer, 429, b'{"error": {"message": "rate limited"}}',
                             extra={"retry-after": arg or "1"})
            return True
        if kind == "echo_key_401":
            message = f"Incorrect API key provided: {headers.get('authorization', '')}"
            await self._send(writer, 401, json.dumps({"error": {"message": message}}).encode())
            return True
        if kind == "garbage":
            await self._send(writer, 200, b"<html>upstream proxy error</html>", ctype="text/html")
            return True
        if kind == "no_choices":
            await self._send(writer, 200, b'{"id": "x", "object": "chat.completion"}')
            return True
        if kind == "drop":
            writer.transport.abort()
            return False
        if body.get("stream"):
            return await self._stream(writer, body, model, kind, arg)
        text = self.reply(model, body) if self.reply is not None else f"{model} says: {_last_user(body)[:40]}"
        await self._send(writer, 200, json.dumps(completion(model, text)).encode())
        return True

    async def _stream(self, writer: asyncio.StreamWriter, body: dict[str, Any], model: str, kind: str,
                      arg: str) -> bool:
        writer.write(self._head(200, {"content-type": "text/event-stream", "transfer-encoding": "chunked",
                                      "cache-control": "no-cache"}))

        async def event(data: bytes) -> None:
            payload = b"data: " + data + b"\n\n"
            writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            await writer.drain()

        if kind == "stream_garbage":
            await event(b"{not json")
            writer.write(b"0\r\n\r\n")
            return True
        events = [chunk(model, {"role": "assistant", "content": ""}), chunk(model, {"content": "Hello"}),
                  chunk(model, {"content": " from"}), chunk(model, {"content": f" {model}"}),
                  chunk(model, {}, "stop")]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk(model, {}), "choices": [], "usage": dict(USAGE)})
        cut = int(arg) if kind == "drop_stream" else None
        for i, obj in enumerate(events):
            if cut is not None and i == cut:
                writer.transport.abort()
                return False
            self.events_sent += 1  # counted before the write: a client may read it before the write returns
            await event(json.dumps(obj).encode())
            if i == 1 and self.gate is not None:
                deadline = time.monotonic() + 10
                while not self.gate.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
        await event(b"[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def _last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--mode", default="ok")
    args = parser.parse_args(argv)
    upstream = FakeUpstream(port=args.port, delay_s=args.delay_ms / 1000, mode=args.mode, record=False)
    upstream._writers = set()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(upstream.serve(lambda port: print(json.dumps({"port": port}), flush=True)))
        loop.add_signal_handler(signal.SIGTERM, lambda: upstream._stop.set() if upstream._stop else None)
        loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(upstream, "mode", "500"))  # fail from now on
        await task

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
