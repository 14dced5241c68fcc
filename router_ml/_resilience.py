"""Surviving a failing upstream: classifying failures, backoff, circuit breakers and weighted replica picks.

Everything here is synchronous and free of I/O so that it can be tested, and reasoned about, without a
network; :class:`CircuitBreaker` takes its clock as an argument for the same reason.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from email.utils import parsedate_to_datetime

import httpx

from router_ml._records import Failure
from router_ml.providers import Replica, Settings

__all__ = ["CircuitBreaker", "ReplicaPicker", "backoff_delay", "classify", "http_failure", "retry_after"]


class CircuitBreaker:
    """Consecutive-failure circuit breaker: ``failures`` in a row open it for ``reset_s`` seconds; then one
    probe is let through (half-open) - success closes it, failure opens it again.

    ``clock`` returns seconds (``time.monotonic`` by default); tests pass a fake one to step through the
    states without waiting."""

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self.threshold = failures
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False
        self.opened = 0  # how many times it opened

    @property
    def state(self) -> str:
        if self._open_until is None:
            return "closed"
        return "open" if self._clock() < self._open_until or self._probing else "half_open"

    def available(self) -> bool:
        """Would :meth:`allow` let a request through now (without taking the probe slot)?"""
        return self._open_until is None or (not self._probing and self._clock() >= self._open_until)

    def allow(self) -> bool:
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def retry_in(self) -> float:
        return 0.0 if self._open_until is None else max(0.0, self._open_until - self._clock())

    def success(self) -> None:
        self._failures = 0
        self._open_until = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            if self._open_until is None or self._probing:
                self.opened += 1
            self._open_until = self._clock() + self.reset_s
            self._probing = False

    def release(self) -> None:
        """Give back a probe slot that was not used."""
        self._probing = False


class ReplicaPicker:
    """Smooth weighted round robin over each model's replicas, skipping those whose circuit is open.

    ``breakers`` maps each replica label (``model#i``) to its :class:`CircuitBreaker`; the picker takes
    the probe slot of a half-open breaker it returns, so the caller must report success, failure or
    release for every replica it gets."""

    def __init__(self, replicas: Mapping[str, Sequence[Replica]], breakers: Mapping[str, CircuitBreaker]):
        self._replicas = dict(replicas)
        self._breakers = breakers
        self._current = {name: [0.0] * len(rs) for name, rs in self._replicas.items()}

    def pick(self, model: str, avoid: set[str]) -> Replica | None:
        """The next replica of ``model`` to call, preferring ones not in ``avoid``; None when every circuit is open."""
        replicas = self._replicas[model]
        if len(replicas) == 1:
            r = replicas[0]
            return r if self._breakers[r.label].allow() else None
        current = self._current[model]
        candidates = [i for i, r in enumerate(replicas) if self._breakers[r.label].available()]
        fresh = [i for i in candidates if replicas[i].label not in avoid]
        candidates = fresh or candidates
        if not candidates:
            return None
        total = sum(replicas[i].weight for i in candidates)
        for i in candidates:
            current[i] += replicas[i].weight
        best = max(candidates, key=lambda i: current[i])
        current[best] -= total
        replica = replicas[best]
        return replica if self._breakers[replica.label].allow() else None

    def retry_in(self, model: str) -> float:
        """Seconds until the first of ``model``'s open circuits lets a probe through."""
        return min(self._breakers[r.label].retry_in() for r in self._replicas[model])


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds a 429 asks to wait: ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def backoff_delay(failure: Failure, retry: int, settings: Settings) -> float | None:
    """Seconds to wait before retry ``retry + 1`` after ``failure``; None to fall back now instead.

    A 429 waits its Retry-After when that is at most ``max_retry_after_s`` (longer: fall back);
    anything else waits ``backoff_s * 2**retry`` (at most ``max_backoff_s``) with +-50% jitter, so that
    many clients failing at once do not retry in lockstep."""
    if failure.kind == "http_429" and failure.retry_after is not None:
        return failure.retry_after if failure.retry_after <= settings.max_retry_after_s else None
    return min(settings.max_backoff_s, settings.backoff_s * 2 ** retry) * random.uniform(0.5, 1.5)


def classify(exc: BaseException, replica: Replica, redact: Callable[[str], str]) -> Failure:
    """The :class:`Failure` an httpx error means (a timeout, no connection, a dropped connection)."""
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return Failure("timeout", f"timed out ({type(exc).__name__}) after at most {replica.timeout_s:g} s")
    if isinstance(exc, httpx.ConnectError):
        return Failure("connect", f"cannot connect to {replica.base_url}")
    return Failure("dropped", redact(f"connection failed ({type(exc).__name__}: {str(exc)[:160]})"))


def http_failure(response: httpx.Response, body: bytes, redact: Callable[[str], str]) -> Failure:
    """The :class:`Failure` a non-2xx answer means; its body is quoted (redacted, 200 bytes at most)."""
    status = response.status_code
    snippet = redact(body[:200].decode("utf-8", errors="replace")).strip()
    reason = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if status == 429:
        return Failure("http_429", reason, status, retry_after(response.headers))
    return Failure("http_5xx" if status >= 500 else "http_4xx", reason, status)
