"""Seconds and memory per stage of a training run: where time and memory go at volume."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import time
from pathlib import Path

__all__ = ["Stages", "return_free_memory", "rss_mb"]

log = logging.getLogger("router_ml.train")


def rss_mb(field: str) -> float | None:
    """This process's ``VmRSS`` (now) or ``VmHWM`` (peak) in MiB from /proc; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def return_free_memory() -> None:
    """Hand memory that was freed but kept for reuse back to the system: Arrow's allocator pool
    (pyarrow, where loaded) and glibc's heap (``malloc_trim``; elsewhere nothing). A load of 10M records
    frees gigabytes of small parse-time allocations that the heap would otherwise keep resident
    through training; at each stage's end this costs milliseconds."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass


class Stages:
    """Seconds and memory of each stage of a run (the summary's ``stages``): where time and memory
    go at volume. ``rss_mb`` is the resident set when the stage ended (after :func:`return_free_memory`),
    ``peak_rss_mb`` the peak so far."""

    def __init__(self) -> None:
        self.report: dict[str, dict[str, float | None]] = {}
        self._last = time.perf_counter()

    def done(self, name: str) -> None:
        return_free_memory()
        now = time.perf_counter()
        self.report[name] = {"seconds": round(now - self._last, 2), "rss_mb": rss_mb("VmRSS"),
                             "peak_rss_mb": rss_mb("VmHWM")}
        log.info("%s: %.1fs, rss %s MiB", name, now - self._last, self.report[name]["rss_mb"])
        self._last = now
