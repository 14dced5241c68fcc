"""JSON for the request path: orjson when it is installed (the ``serve`` extra), the standard library otherwise.

orjson parses and writes the proxy's bodies, chunks and log lines about ten times faster than
:mod:`json`. What it refuses and :mod:`json` takes - ``NaN`` literals, integers past 64 bits, strings
with lone surrogates - falls back to :mod:`json`, so what parses and the error messages stay those of
:mod:`json`; both write ``NaN`` and infinities as ``null`` (JSON has no such
numbers). orjson is looked up on first use, not on import.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

__all__ = ["dumps", "finite", "loads"]

_orjson: Any = None  # the module, False when it is not installed, None before the first call


def _backend() -> Any:
    global _orjson
    if _orjson is None:
        try:
            import orjson
        except ImportError:
            orjson = False
        _orjson = orjson
    return _orjson


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; :class:`ValueError` (:mod:`json`'s, with its message) when it is not valid JSON, or nests
    deeper than the parser can follow."""
    fast = _orjson if _orjson is not None else _backend()
    if fast:
        try:
            return fast.loads(data)
        except fast.JSONDecodeError:
            pass
    try:
        return json.loads(data)
    except RecursionError:  # '[' * 200000: orjson stops at 1024 levels, json at the interpreter's stack
        raise ValueError("arrays and objects nest too deeply") from None


def dumps(obj: Any, *, errors: str = "backslashreplace", default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON, non-ASCII kept. A lone surrogate (only :mod:`json` writes one) is encoded with
    ``errors``: ``backslashreplace`` keeps it a JSON escape (answers, log lines), ``surrogatepass`` passes
    its bytes on as the client sent them (the body forwarded upstream). ``default``: what an object JSON has
    no type for is written as."""
    fast = _orjson if _orjson is not None else _backend()
    if fast:
        try:
            return fast.dumps(obj, default=default)
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate, an integer past 64 bits, ...
            pass
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=default, allow_nan=False)
    except ValueError:  # inf or NaN somewhere: null, as orjson writes them
        text = json.dumps(finite(obj), ensure_ascii=False, separators=(",", ":"), default=default)
    return text.encode("utf-8", errors=errors)


def finite(obj: Any) -> Any:
    """``obj`` with every inf and NaN float replaced by None (what strict JSON can hold)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj
