"""Progress bars on stderr for the long parts of a run: featurizing, training, scoring.

A fine-tuning run on a CPU can go quiet for twenty minutes; a bar per stage (tqdm: count, rate,
ETA; the training bar also epoch and loss) says that it is working and when it will be done. The
bars follow the habits of tqdm-based tools:

- they write to **stderr** only, so the JSON a command prints on stdout stays machine-readable;
- they show only when stderr is a terminal (tqdm's ``disable=None``), so logs and pipes stay clean;
- ``--quiet`` (or ``progress=False`` in the Python API) turns them off: :func:`progress_scope`
  carries that wish down to loops that take no ``progress`` argument (the training loop, scoring);
- the environment variable :data:`PROGRESS_ENV` overrides the terminal check: ``ROUTER_ML_PROGRESS=1``
  shows bars on a pipe or a log file (CI logs, ``nohup``), ``=0`` hides them even on a terminal.
  ``--quiet`` always wins.

tqdm is imported only when a bar is made: this module is imported by the CLI, which must stay light.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["PROGRESS_ENV", "bar", "bars_shown", "chunks", "progress_allowed", "progress_scope",
           "scoped_by_progress_flag"]

#: ``1`` forces the bars on when stderr is not a terminal, ``0`` forces them off; unset: a terminal decides
PROGRESS_ENV = "ROUTER_ML_PROGRESS"

_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("router_ml_progress", default=True)

F = TypeVar("F", bound=Callable[..., Any])


def progress_allowed() -> bool:
    """False inside a :func:`progress_scope` that turned progress off (``--quiet``)."""
    return _ALLOWED.get()


@contextlib.contextmanager
def progress_scope(enabled: bool) -> Iterator[None]:
    """Bars inside the block show only if ``enabled`` and every enclosing scope allows them: a
    quiet caller (``router-ml sweep --quiet``) silences everything it calls."""
    token = _ALLOWED.set(_ALLOWED.get() and bool(enabled))
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def scoped_by_progress_flag(func: F) -> F:
    """Run ``func`` inside ``progress_scope(progress)``, its own ``progress`` argument: the loops it
    calls (training, scoring) then follow the flag without each taking one."""
    signature = inspect.signature(func)
    default = signature.parameters["progress"].default

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        flag = signature.bind_partial(*args, **kwargs).arguments.get("progress", default)
        with progress_scope(bool(flag)):
            return func(*args, **kwargs)

    return run  # type: ignore[return-value]


def _disable(enabled: bool) -> bool | None:
    """tqdm's ``disable``: True (off), False (forced on) or None (on when stderr is a terminal)."""
    if not (enabled and progress_allowed()):
        return True
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on", "always"):
        return False
    if forced in ("0", "false", "no", "off", "never"):
        return True
    return None


def bars_shown() -> bool:
    """Whether a bar would show here now: what other libraries' bars (the ``datasets`` readers') follow."""
    disable = _disable(True)
    return not disable if disable is not None else sys.stderr.isatty()


def bar(*, total: int | None, desc: str, unit: str, enabled: bool = True, **options: Any) -> Any:
    """A tqdm bar on stderr, shown by the rules of this module (``enabled=False``: never)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=_disable(enabled), dynamic_ncols=True, **options)


def chunks(total: int, size: int, *, desc: str, unit: str, delay: float = 1.0) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges of ``size`` items over ``range(total)``, counted on a bar of
    ``total`` ``unit``s. ``delay``: the bar appears only once the loop has run that many seconds,
    so the many short calls (a few hundred prompts) stay silent."""
    size = max(1, int(size))
    with bar(total=total, desc=desc, unit=unit, delay=delay) as progress:
        for start in range(0, total, size):
            stop = min(total, start + size)
            yield start, stop
            progress.update(stop - start)
