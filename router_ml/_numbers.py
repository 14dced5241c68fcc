"""What counts as a number in a setting or an argument: Python's and numpy's ints and floats, not ``bool``
(``True`` is an int to Python, and a knob of ``True`` is a mistake, not 1.0)."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

__all__ = ["is_amount", "is_number", "is_whole"]


def is_number(value: Any) -> bool:
    """A real number: ``int``, ``float`` and numpy's ``float32``, ``int64``... (``bool`` left out)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def is_whole(value: Any) -> bool:
    """A whole number (``int``, numpy's ``int64``...), ``bool`` left out."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_amount(value: Any) -> bool:
    """A finite number >= 0: a price, a cost, a token count."""
    return is_number(value) and math.isfinite(value) and value >= 0
