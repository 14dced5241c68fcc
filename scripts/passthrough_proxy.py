"""A bare pass-through proxy: the floor that ``router-ml serve``'s CPU per request is measured against.

``scripts/load_test.py --reference passthrough`` runs it in front of the same fake upstream as the
proxy, at the same offered load. It is today's stack with nothing on top: starlette + uvicorn (uvloop,
httptools) + an httpx ``AsyncClient``, forwarding the request body to the upstream and the answer back
(streamed when the upstream streams) - no routing, catalog, retries, breaker, metrics or log. It stays
this code whatever router-ml's own proxy moves to, so the ratio of the two keeps meaning "what routing
costs over the hop itself"; it imports nothing from router_ml for the same reason.

    python scripts/passthrough_proxy.py --upstream http://127.0.0.1:8001/v1 --port 0
    # stderr: "passthrough: serving http://127.0.0.1:PORT/v1 -> http://127.0.0.1:8001/v1"
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

TIMEOUT_S = 10.0  # the load test's request timeout: a request the upstream never answers ends as a 504


def create_app(upstream: str) -> Starlette:
    """``POST /v1/<path>`` forwarded to ``<upstream>/<path>`` (``upstream`` ends in ``/v1``)."""
    holder: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        # one pooled client for the server's life, as any proxy on this stack would hold
        async with httpx.AsyncClient(timeout=TIMEOUT_S, trust_env=False,
                                     limits=httpx.Limits(max_connections=1000, max_keepalive_connections=256)) as c:
            holder["client"] = c
            yield

    async def forward(request: Request) -> Response:
        client = holder["client"]
        outgoing = client.build_request("POST", f"{upstream.rstrip('/')}/{request.path_params['path']}",
                                        content=await request.body(),
                                        headers={"content-type": request.headers.get("content-type",
                                                                                     "application/json")})
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.TimeoutException:
            return Response(b'{"error": {"message": "upstream timed out"}}', 504, media_type="application/json")
        except httpx.HTTPError as exc:
            return Response(b'{"error": {"message": "upstream unreachable: %s"}}' % type(exc).__name__.encode(),
                            502, media_type="application/json")
        ctype = answer.headers.get("content-type", "application/json")
        if ctype.startswith("text/event-stream"):
            return StreamingResponse(answer.aiter_raw(), answer.status_code, media_type=ctype,
                                     background=BackgroundTask(answer.aclose))
        try:
            body = await answer.aread()
        finally:
            await answer.aclose()
        return Response(body, answer.status_code, media_type=ctype)

    return Starlette(routes=[Route("/v1/{path:path}", forward, methods=["POST"])], lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--upstream", required=True, help="the upstream's base URL, ending in /v1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    args = parser.parse_args(argv)
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it an answer
    # written in two parts waits for the client's delayed ACK (~40 ms) - a cost of the socket, not the stack
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    print(f"passthrough: serving http://{args.host}:{sock.getsockname()[1]}/v1 -> {args.upstream}",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(create_app(args.upstream), loop="uvloop", http="httptools", log_level="warning",
                            access_log=False, lifespan="on")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


if __name__ == "__main__":
    main()
