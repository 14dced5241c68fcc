"""Seconds and memory per stage of a training run: where time and memory go at volume."""

from __future__ import annotations

import logging
import time
from pathlib import Path

__all__ = ["Stages", "rss_mb"]

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


class Stages:
    """Seconds and memory of each stage of a run (the summary's ``stages``): where time and memory
    go at volume. ``rss_mb`` is the resident set when the stage ended, ``peak_rss_mb`` the peak so far."""

    def __init__(self) -> None:
        self.report: dict[str, dict[str, float | None]] = {}
        self._last = time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.report[name] = {"seconds": round(now - self._last, 2), "rss_mb": rss_mb("VmRSS"),
                             "peak_rss_mb": rss_mb("VmHWM")}
        log.info("%s: %.1fs, rss %s MiB", name, now - self._last, self.report[name]["rss_mb"])
        self._last = now
