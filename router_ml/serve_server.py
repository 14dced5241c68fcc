"""The uvicorn server under ``router-ml serve``: readiness, a drain before the graceful shutdown, and a
main loop that sleeps while nothing happens.

uvicorn's own main loop wakes every 0.1 s to look at ``should_exit``: an idle ``router-ml serve`` used
2.0 ms of CPU per second here, paid by every worker whatever its traffic (a twentieth of the proxy's
CPU at 25 requests/s). This one sleeps until ``should_exit`` is set (a signal, or code setting it from
any thread), a drain ends, or a second has passed (uvicorn's once-a-second bookkeeping in ``on_tick``):
0.37 ms per second idle.

uvicorn is imported only when a server is made (``pip install "router-ml[serve]"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import time
from collections.abc import Callable
from typing import Any

from router_ml._serve_http import HttpProtocol
from router_ml.optional import require

__all__ = ["Lifecycle", "make_server"]

#: the longest the server's main loop sleeps with nothing to do (it wakes at once for an exit or a drain)
TICK_S = 1.0


class Lifecycle:
    """Where one server process stands: ``ready`` once it serves, ``draining`` from the first SIGTERM on,
    ``stopping`` once the drain is over and the server waits for (then cancels) the requests in flight."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.stopping = False

    def reason(self) -> str | None:
        """Why the server is not ready, or None when it is."""
        if self.draining:
            return "draining: the server is shutting down and finishes the requests it has"
        return None if self.ready else "starting"


def make_server(app: Any, *, log_level: str = "warning", drain_s: float = 0.0, shutdown_timeout_s: float = 30.0,
                on_started: Callable[[], None] | None = None, on_hangup: Callable[[], None] | None = None) -> Any:
    """A uvicorn server for ``app`` that drains on SIGTERM/SIGINT (see the module doc): ``app.state.lifecycle``
    turns not ready, ``drain_s`` seconds pass, then uvicorn's own graceful shutdown (``shutdown_timeout_s``)
    runs. ``on_started`` runs once it listens; ``on_hangup`` on each SIGHUP (main thread only)."""
    uvicorn = require("uvicorn", extra="serve", purpose="router-ml serve")
    # the proxy's own HTTP/1.1 protocol (router_ml._serve_http) for an app that has one; uvicorn's otherwise
    http: Any = functools.partial(HttpProtocol, app) if hasattr(app, "handle") else "auto"
    config = uvicorn.Config(app, http=http, interface="asgi3", log_level=log_level, access_log=False,
                            server_header=False, date_header=False, proxy_headers=False, lifespan="on",
                            timeout_graceful_shutdown=shutdown_timeout_s, timeout_keep_alive=30)
    lifecycle = getattr(getattr(app, "state", None), "lifecycle", None) or Lifecycle()
    return _server_class(uvicorn.Server)(config, lifecycle=lifecycle, drain_s=drain_s, on_started=on_started,
                                         on_hangup=on_hangup)


@functools.cache
def _server_class(base: type) -> type:
    """uvicorn's Server with a drain before the shutdown (a function, so uvicorn loads only when serving)."""

    class DrainingServer(base):  # type: ignore[misc, valid-type]
        def __init__(self, config: Any, *, lifecycle: Lifecycle, drain_s: float,
                     on_started: Callable[[], None] | None, on_hangup: Callable[[], None] | None) -> None:
            self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None  # set by main_loop
            super().__init__(config)
            self.lifecycle, self.drain_s = lifecycle, drain_s
            self._on_started, self._on_hangup = on_started, on_hangup
            self._drain: tuple[float, int] | None = None  # (when to stop, the signal that asked)

        @property
        def should_exit(self) -> bool:
            return self.__dict__.get("_should_exit", False)

        @should_exit.setter
        def should_exit(self, value: bool) -> None:
            self._should_exit = value
            if value:
                self._wake_main_loop()

        def _wake_main_loop(self) -> None:
            """Wake :meth:`main_loop` (safe from a signal handler and from other threads)."""
            wake = self.__dict__.get("_wake")
            if wake is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed: nothing is waiting
                    wake[0].call_soon_threadsafe(wake[1].set)

        async def main_loop(self) -> None:
            """uvicorn's loop without its 0.1 s polling (module doc): ``on_tick`` decides when to stop,
            as in uvicorn, and runs on every wake-up with a counter that asks for its once-a-second work."""
            event = asyncio.Event()
            self._wake = (asyncio.get_running_loop(), event)
            counter = 0
            while not await self.on_tick(counter):
                counter = (counter + 10) % 864000
                sleep = TICK_S if self._drain is None else min(TICK_S, self._drain[0] - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, sleep)):
                        await event.wait()
                event.clear()  # a wake-up between the wait and here is not lost: on_tick reads the flags next

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self._drain is None and not self.should_exit and self.drain_s > 0:
                self.lifecycle.draining = True
                self._drain = (time.monotonic() + self.drain_s, sig)
                self._wake_main_loop()  # to sleep until the drain's end, not a whole tick
                return
            self.lifecycle.draining = self.lifecycle.stopping = True
            super().handle_exit(sig, frame)

        async def on_tick(self, counter: int) -> bool:
            if self._drain is not None and not self.should_exit and time.monotonic() >= self._drain[0]:
                self.lifecycle.stopping = True
                super().handle_exit(self._drain[1], None)
            return await super().on_tick(counter)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if not self.started:
                return
            if self._on_hangup is not None:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_hangup)
            if self._on_started is not None:
                self._on_started()

    return DrainingServer
