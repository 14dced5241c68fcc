"""The proxy's own HTTP/1.1 code, on real sockets: the server protocol (router_ml._serve_http) as a client
on a raw socket sees it, and the upstream client (router_ml._http1) against the fake upstream - its pool,
its limits and a restarted upstream."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from router_ml import Router
from router_ml._http1 import Http1Upstream
from router_ml.client import AsyncRoutedClient, RoutedClient

from .fake_upstream import FakeUpstream
from .test_serving import MSG, Proxy, catalog


@pytest.fixture(scope="module")
def router(trained) -> Router:
    return Router.load(trained.artifact, intra_op_threads=1)


@pytest.fixture
def up():
    with FakeUpstream() as a:
        yield a


def _exchange(url: str, raw: bytes, *, answers: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``raw`` on one new connection and read ``answers`` responses (content-length framed)."""
    host, port = url.split("//", 1)[1].split(":")
    out = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        buf = b""
        for _ in range(answers):
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError(f"connection closed after {buf!r}")
                buf += chunk
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            while len(buf) < length:
                buf += sock.recv(65536)
            out.append((int(lines[0].split()[1]), headers, buf[:length]))
            buf = buf[length:]
    return out


def _post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "host: x", "content-type: application/json", f"content-length: {len(body)}",
            *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_the_server_answers_pipelined_requests_in_order_on_one_connection(router, up):
    bodies = [json.dumps({"model": m, "messages": MSG}).encode() for m in ("tiny-1b", "small-8b", "code-34b")]
    with Proxy(AsyncRoutedClient(router, catalog({"*": up.base_url}), upstream="http1")) as proxy:
        answers = _exchange(proxy.url, b"".join(_post("/v1/chat/completions", b) for b in bodies), answers=3)
    assert [s for s, _, _ in answers] == [200, 200, 200]
    assert [json.loads(b)["router_ml"]["model"] for _, _, b in answers] == ["tiny-1b", "small-8b", "code-34b"]
    assert [h["x-router-ml-model"] for _, h, _ in answers] == ["tiny-1b", "small-8b", "code-34b"]


def test_the_server_handles_expect_continue_unknown_paths_methods_and_garbage(router, up):
    body = json.dumps({"model": "tiny-1b", "messages": MSG}).encode()
    with Proxy(AsyncRoutedClient(router, catalog({"*": up.base_url}), upstream="http1")) as proxy:
        host, port = proxy.url.split("//", 1)[1].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # curl's way with big bodies
            head = _post("/v1/chat/completions", b"", "expect: 100-continue").replace(
                b"content-length: 0", f"content-length: {len(body)}".encode())
            sock.sendall(head)
            assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            sock.sendall(body)
            answer = b""
            while b'"router_ml"' not in answer:
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        (status, _, text), = _exchange(proxy.url, b"GET /v1/nothing HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status == 404 and json.loads(text)["error"]["code"] == "not_found"
        (status, headers, text), = _exchange(proxy.url, b"GET /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status == 405 and headers["allow"] == "POST" and "GET is not allowed" in json.loads(text)["error"][
            "message"]
        (status, headers, text), = _exchange(proxy.url, b"BLAH\x00 / HTTP/1.1\r\n\r\n")
        assert status == 400 and headers["connection"] == "close" and "malformed HTTP request" in text.decode()
        (status, headers, _), = _exchange(proxy.url, b"GET /health HTTP/1.0\r\n\r\n")
        assert status == 200 and headers["connection"] == "close"  # HTTP/1.0 without keep-alive: closed after


def test_the_upstream_pool_reuses_connections_and_reconnects_to_a_restarted_upstream(router, up):
    with RoutedClient(router, catalog({"*": up.base_url}), upstream="http1") as client:
        for _ in range(5):
            assert client.chat.completions.create(model="tiny-1b", messages=MSG).router_ml.status == "ok"
        (pool,) = client._async._upstream._pools.values()
        assert pool._open == 1 and len(pool._idle) == 1  # one keep-alive connection served all five
        up.stop()  # its connections are closed: the idle one is dead
        with FakeUpstream(port=up.port):
            r = client.chat.completions.create(model="tiny-1b", messages=MSG)
            assert r.router_ml.status == "ok" and r.router_ml.fallbacks == []
            assert pool._open == 1  # the dead one left the count; the new one is back in the pool


def test_a_full_pool_makes_requests_wait_then_time_out_as_timeouts(up):
    up.delay_s = 0.5

    async def main() -> list:
        client = Http1Upstream(max_connections=1)
        headers = {"content-type": "application/json"}
        body = json.dumps({"model": "tiny-1b", "messages": MSG}).encode()

        async def one(timeout: float) -> object:
            try:
                r = await client.send("tiny-1b#0", up.base_url + "/chat/completions", headers, body, timeout)
                data = await r.aread()
                await r.aclose()
                return r.status_code, json.loads(data)["model"]
            except httpx.HTTPError as exc:
                return type(exc).__name__

        first = asyncio.ensure_future(one(5.0))
        await asyncio.sleep(0.05)  # the first holds the only connection for 0.5 s
        out = await asyncio.gather(first, one(0.1), one(5.0))
        await client.aclose()
        return out

    first, starved, patient = asyncio.run(main())
    assert first == (200, "tiny-1b") and starved == "PoolTimeout" and patient == (200, "tiny-1b")


def test_a_reused_connection_closed_without_an_answer_is_retried_once_unless_told_not_to(up):
    """The server closes a kept-alive connection without a byte of answer: by default the request goes once more
    on a new connection (an idle connection the server had closed); ``retry_closed=False`` raises instead."""
    headers = {"content-type": "application/json"}
    body = json.dumps({"model": "tiny-1b", "messages": MSG}).encode()

    async def two(retry_closed: bool) -> list:
        client = Http1Upstream(retry_closed=retry_closed)
        out = []
        for _ in range(2):
            try:
                r = await client.send("tiny-1b#0", up.base_url + "/chat/completions", headers, body, 5.0)
                await r.aread()
                await r.aclose()
                out.append(r.status_code)
            except httpx.HTTPError as exc:
                out.append(type(exc).__name__)
            up.script.append("drop")  # the second request, on the first one's kept-alive connection
        await client.aclose()
        up.script.clear()
        return out

    assert asyncio.run(two(True)) == [200, 200] and up.served == 3  # dropped, then answered on a new connection
    assert asyncio.run(two(False)) == [200, "RemoteProtocolError"] and up.served == 5


def test_request_ids_are_unique_well_formed_and_differ_after_a_fork():
    import os
    import re

    from router_ml._ids import request_id

    ids = [request_id() for _ in range(2000)]  # several 4 KiB blocks of randomness
    assert len(set(ids)) == 2000 and all(re.fullmatch(r"rml-[0-9a-f]{24}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must not replay the parent's block
        os.write(write, request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100).decode() != request_id()


def test_a_model_name_beyond_ascii_reaches_the_client_whole_in_its_header(router, up):
    """x-router-ml-model was written as Latin-1 with replacement: a model named 模型-中文 reached clients as
    ``??-??`` - for a stream the only place that names the catalog model. Such names (and any with ``%`` or a
    control character) are percent-encoded UTF-8 now; a plain name is sent as it is."""
    import urllib.parse

    from router_ml.providers import ProviderCatalog

    from .test_serving import catalog_data

    data = catalog_data({"*": up.base_url})
    names = ["模型-中文", "rate 100%", "claude 3.5 sonnet"]
    for name in names:
        data["models"][name] = dict(data["models"]["tiny-1b"])
    client = AsyncRoutedClient(router, ProviderCatalog(data, source="test.toml", environ={}), upstream="http1")
    with Proxy(client) as proxy:
        for name in names:
            for stream in (False, True):
                r = httpx.post(f"{proxy.url}/v1/chat/completions", timeout=10,
                               json={"model": name, "messages": MSG, "stream": stream})
                assert r.status_code == 200, r.text
                raw = dict(r.headers.raw)[b"x-router-ml-model"]
                assert raw.isascii() and urllib.parse.unquote(raw.decode()) == name, (name, raw)
                assert (raw.decode() == name) == (name == "claude 3.5 sonnet")  # plain names as they are
                if not stream:
                    assert r.json()["router_ml"]["model"] == name
